"""Analytic FLOPs and per-device memory of the programs `metajax.aot` compiles.

The FLOPs are what the programs compute, counted from the shapes: the compiler's `cost_analysis`
counts a loop body once, so it undercounts the layer scan and the decode loop. The memory estimate
is a model of where the bytes go (state, gathered weights, saved activations, the KV cache); it
ranks candidate meshes and remat policies cheaply, and the compiler confirms the one chosen.
"""

from __future__ import annotations

import dataclasses
import math

from metajax.models.attention import ATTENTION_BLOCK
from metajax.models.config import ModelConfig
from metajax.models.logprobs import VOCAB_CHUNK


@dataclasses.dataclass(frozen=True)
class Dims:
    """The shapes of one program.

    kind: "train" (a train step), "score" (a forward pass with no gradient), "score_shared" (chain
      scoring: each prompt once, then its continuations, `metajax.models.shared_prefix_logprobs`) or
      "generate".
    batch: rows (train, score) or prompts (generate, score_shared); seq: tokens per row (train, score)
    or prompt tokens (generate, score_shared); samples: continuations per prompt (generate,
    score_shared); new_tokens: the decode loop's cache length (generate), or the scored answer tokens
    per row or continuation (score, score_shared); continuation: tokens per continuation
    (score_shared). remat, grad_accum: train only. param_bytes, compute_bytes: 4 or 2.
    """

    kind: str
    batch: int
    seq: int
    samples: int = 1
    new_tokens: int = 0
    continuation: int = 0
    remat: str = "none"
    grad_accum: int = 1
    param_bytes: int = 4
    compute_bytes: int = 4


def layer_params(cfg: ModelConfig) -> int:
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return cfg.hidden_size * (2 * q + 2 * kv) + 3 * cfg.hidden_size * cfg.intermediate_size


def total_params(cfg: ModelConfig) -> int:
    heads = 1 if cfg.tie_word_embeddings else 2
    return cfg.num_layers * (layer_params(cfg) + 2 * cfg.hidden_size) + heads * cfg.vocab_size * cfg.hidden_size


def attention_pairs(cfg: ModelConfig, seq: int) -> int:
    """(query, key) pairs full-sequence attention computes over `seq` tokens: every pair for
    "reference" and "dot_product"; for "blockwise", each query block times its key prefix."""
    return seq * seq if cfg.attention != "blockwise" else causal_block_pairs(seq)


def causal_block_pairs(seq: int) -> int:
    """(query, key) pairs of causal attention taken in query blocks, each over the keys up to its end."""
    return sum((min(start + ATTENTION_BLOCK, seq) - start) * min(start + ATTENTION_BLOCK, seq)
               for start in range(0, seq, ATTENTION_BLOCK))


def flops(cfg: ModelConfig, dims: Dims) -> float:
    """Floating-point operations of one call, over all devices (2 per multiply-add)."""
    L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hq = cfg.num_heads * cfg.head_dim
    blocks = 2 * L * layer_params(cfg)

    def attention(rows, pairs):  # q.k and p.v over each (query, key) pair
        return 4 * L * rows * pairs * hq

    prompt_attention = attention(dims.batch, attention_pairs(cfg, dims.seq))
    if dims.kind == "generate":
        rows = dims.batch * dims.samples
        prefill = blocks * dims.batch * dims.seq + prompt_attention + 2 * D * V * dims.batch
        steps = dims.new_tokens
        decode = steps * ((blocks + 2 * D * V) * rows + attention(rows, dims.seq + dims.new_tokens))
        return float(prefill + decode)
    if dims.kind == "score_shared":  # the prompts, then each continuation over its prompt's keys and its own
        rows, length = dims.batch * dims.samples, dims.continuation
        prompts = blocks * dims.batch * dims.seq + prompt_attention
        continuations = blocks * rows * length + attention(rows, length * dims.seq + causal_block_pairs(length))
        return float(prompts + continuations + 2 * D * V * rows * dims.new_tokens)
    tokens = dims.batch * dims.seq
    forward_blocks = blocks * tokens + prompt_attention
    if dims.kind == "score":  # the head projects only the scored positions, when they are bounded
        return float(forward_blocks + 2 * D * V * (dims.batch * dims.new_tokens if dims.new_tokens else tokens))
    # Full remat recomputes a block up to what its backward reads: the output and down projections'
    # results feed only the residual stream, so those two matmuls are not run again.
    recompute_full = 2 * L * (layer_params(cfg) - hq * D - F * D) * tokens + prompt_attention
    recompute = {"none": 0.0, "save_dots": prompt_attention, "full": recompute_full}[dims.remat]
    if cfg.attention == "blockwise":  # each checkpointed block recomputes its score product backward
        recompute += prompt_attention / 2
    # Forward and backward (twice the forward) of blocks and head, plus what remat recomputes.
    return float(3 * (forward_blocks + 2 * D * V * tokens) + recompute)


def memory_bytes(cfg: ModelConfig, dims: Dims, mesh_shape: dict[str, int]) -> float:
    """Estimated peak bytes per device."""
    L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    dp = mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1)
    tp, fsdp = mesh_shape.get("tensor", 1), mesh_shape.get("fsdp", 1)
    heads_tp = tp if cfg.num_heads % tp == 0 and cfg.num_kv_heads % tp == 0 else 1
    pb, cb = dims.param_bytes, dims.compute_bytes
    n = total_params(cfg)
    weights = n * pb / (fsdp * tp)
    # FSDP gathers one layer's weights (and the vocabulary matrix) at a time.
    gathered = 0 if fsdp == 1 else (layer_params(cfg) + V * D) * cb / tp
    kv_width = cfg.num_kv_heads * cfg.head_dim

    # Queries whose fp32 scores and probabilities are live at once: all of them, or one block.
    live_queries = ATTENTION_BLOCK if cfg.attention == "blockwise" else dims.seq

    def one_layer(rows, seq):  # a block's activations, its fp32 attention scores and their probabilities
        return (rows * seq * (9 * D + 3 * kv_width + 4 * F) * cb
                + rows * cfg.num_heads / heads_tp * min(seq, live_queries) * seq * (4 + cb))

    if dims.kind == "generate":
        rows = math.ceil(dims.batch / dp)
        cache = 2 * L * rows * (cfg.num_kv_heads / heads_tp) * (dims.seq + dims.samples * dims.new_tokens) \
            * cfg.head_dim * cb
        logits = 4 * rows * dims.samples * V * 4
        cast = 0 if pb == cb else n * cb / (fsdp * tp)  # the compute-dtype copy the sampler runs on
        return weights + cast + gathered + cache + logits + one_layer(rows, dims.seq)
    chunk = min(V, VOCAB_CHUNK)  # the loss projects onto one vocabulary chunk at a time, in fp32
    if dims.kind == "score_shared":
        prompts = max(1.0, dims.batch / dp)
        rows, length = prompts * dims.samples, dims.continuation
        # Every layer's prompt keys and values stay live for the continuations' pass.
        prompt_kv = 2 * L * prompts * (cfg.num_kv_heads / heads_tp) * dims.seq * cfg.head_dim * cb
        continuation_layer = (rows * length * (9 * D + 3 * kv_width + 4 * F) * cb + rows * cfg.num_heads / heads_tp
                              * min(length, ATTENTION_BLOCK) * (dims.seq + length) * (4 + cb))
        return (weights + gathered + prompt_kv + max(one_layer(prompts, dims.seq), continuation_layer)
                + rows * dims.new_tokens * chunk * 4 * 2)
    rows = max(1.0, dims.batch / dims.grad_accum / dp)
    tokens = rows * dims.seq
    if dims.kind == "score":  # only the answer positions (`dims.new_tokens` per row) reach the head
        return weights + gathered + rows * dims.new_tokens * chunk * 4 * 2 + tokens * D * cb + one_layer(rows, dims.seq)
    head = tokens * (chunk * 4 * 2 + D * 4 * 2)  # a chunk's fp32 logits and their gradient
    optimizer = 2 * n * pb / (fsdp * tp)  # AdamW's two moments, in the params' dtype
    grads = n * pb / (fsdp * tp) * (2 if dims.grad_accum > 1 else 1)
    cast = 0 if pb == cb else n * cb / (fsdp * tp)  # the compute-dtype copy of the params
    saved_per_layer = {
        "none": one_layer(rows, dims.seq),
        "save_dots": tokens * (4 * D + 2 * kv_width + 2 * F) * cb,
        "full": tokens * D * cb,
    }[dims.remat]
    recompute = 0 if dims.remat == "none" else one_layer(rows, dims.seq)
    return weights + optimizer + grads + cast + gathered + L * saved_per_layer + recompute + head
