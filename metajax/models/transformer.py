"""The pure-functional Llama/Qwen decoder: weights declared once, one block for every mode.

`params` is a nested dict of arrays; layer weights are stacked on a leading `layers` axis and the
blocks run under `lax.scan`, so a 30-layer model compiles one block, not thirty. The one exception
is XLA:CPU's decode loop (`decode.cpu_decode_layout`), whose per-layer tuples `run_blocks` also takes.

Every mode runs `_block` through `run_blocks`, with its own attention:
  * `forward` / `hidden_states`: full causal attention over `tokens` (scoring, training, and the
    prompts of `decode.prefill`), with padding masks or packed segments;
  * `continuation_hidden`: continuations attending to a prefix computed once (RaM's scoring);
  * `decode.decode_step`: one new token per sample against the KV cache (sampling).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from metajax.models.attention import attention, prefix_attention
from metajax.models.config import ModelConfig, rope_inverse_frequencies
from metajax.models.sharding import LogicalAxes, constrain, named_sharding

Params = dict

# What each block keeps from its forward pass for the backward ("remat", activation checkpointing).
# "save_dots" keeps the outputs of the weight matmuls (q/k/v/o projections, gate/up/down) and
# recomputes attention and the elementwise ops: most of full remat's memory saving for about a third
# of its recompute. True and False mean "full" and "none".
REMAT_POLICIES = {
    "none": None,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_name(remat: str | bool) -> str:
    """The `REMAT_POLICIES` key `remat` names (a key, or a bool); a clear error for anything else."""
    name = ("full" if remat else "none") if isinstance(remat, bool) else remat
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r} is not a remat policy; use one of {sorted(REMAT_POLICIES)}")
    return name


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One weight: its shape, logical axes (for sharding) and initialiser."""

    shape: tuple[int, ...]
    logical_axes: LogicalAxes
    init: str = "normal"  # "normal" | "ones" | "zeros"


def param_specs(cfg: ModelConfig) -> Params:
    """The declaration of every weight, as a pytree shaped like `params`."""
    L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    Hq, Hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    layers = {
        "attn_norm": ParamSpec((L, D), ("layers", None), "ones"),
        "wq": ParamSpec((L, D, Hq, hd), ("layers", "embed", "q_heads", "head_dim")),
        "wk": ParamSpec((L, D, Hkv, hd), ("layers", "embed", "kv_heads", "head_dim")),
        "wv": ParamSpec((L, D, Hkv, hd), ("layers", "embed", "kv_heads", "head_dim")),
        "wo": ParamSpec((L, Hq, hd, D), ("layers", "q_heads", "head_dim", "embed")),
        "mlp_norm": ParamSpec((L, D), ("layers", None), "ones"),
        "w_gate": ParamSpec((L, D, F), ("layers", "embed", "mlp")),
        "w_up": ParamSpec((L, D, F), ("layers", "embed", "mlp")),
        "w_down": ParamSpec((L, F, D), ("layers", "mlp", "embed")),
    }
    if cfg.qkv_bias:
        layers["bq"] = ParamSpec((L, Hq, hd), ("layers", "q_heads", "head_dim"), "zeros")
        layers["bk"] = ParamSpec((L, Hkv, hd), ("layers", "kv_heads", "head_dim"), "zeros")
        layers["bv"] = ParamSpec((L, Hkv, hd), ("layers", "kv_heads", "head_dim"), "zeros")
    if cfg.qk_norm:
        layers["q_norm"] = ParamSpec((L, hd), ("layers", "head_dim"), "ones")
        layers["k_norm"] = ParamSpec((L, hd), ("layers", "head_dim"), "ones")
    specs = {
        "embed": ParamSpec((V, D), ("vocab", "embed")),
        "layers": layers,
        "final_norm": ParamSpec((D,), (None,), "ones"),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((D, V), ("embed", "vocab"))
    return specs


def is_param_spec(x) -> bool:
    return isinstance(x, ParamSpec)


def init_params(cfg: ModelConfig, rng: jax.Array, *, dtype=jnp.float32, std: float = 0.02,
                mesh=None) -> Params:
    """Random params (normal(0, std) matrices, unit norms, zero biases), built on their shardings
    when `mesh` is given."""
    return _init_params_jit(cfg, jnp.dtype(dtype), mesh)(rng, std)


def abstract_params(cfg: ModelConfig, *, dtype=jnp.float32, mesh=None) -> Params:
    """The params as `jax.ShapeDtypeStruct`s, carrying their shardings on `mesh` when given: what
    ahead-of-time compilation (`metajax.aot`) needs instead of real weights."""
    def abstract(spec: ParamSpec):
        sharding = None if mesh is None else named_sharding(mesh, spec.logical_axes, spec.shape)
        return jax.ShapeDtypeStruct(spec.shape, jnp.dtype(dtype), sharding=sharding)
    return jax.tree.map(abstract, param_specs(cfg), is_leaf=is_param_spec)


def cast_params(params: Params, dtype) -> Params:
    """`params` with every floating-point leaf in `dtype` (bf16 compute over fp32 master weights)."""
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


@functools.cache
def _init_params_jit(cfg: ModelConfig, dtype, mesh):
    """One compiled initialiser per (config, dtype, mesh)."""
    specs = param_specs(cfg)
    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_param_spec)
    out_shardings = None
    if mesh is not None:
        out_shardings = jax.tree.map(lambda s: named_sharding(mesh, s.logical_axes, s.shape), specs,
                                     is_leaf=is_param_spec)

    def build(rng, std):
        arrays = []
        for spec, key in zip(leaves, jax.random.split(rng, len(leaves))):
            if spec.init == "ones":
                arrays.append(jnp.ones(spec.shape, dtype))
            elif spec.init == "zeros":
                arrays.append(jnp.zeros(spec.shape, dtype))
            else:
                arrays.append((std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype))
        return jax.tree.unflatten(treedef, arrays)

    return jax.jit(build, out_shardings=out_shardings)


# ----------------------------------------------------------------------------------------------
# Full-sequence passes: scoring, training, prefill.


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, *, positions: jax.Array | None = None,
            attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
            remat: str = "none") -> jax.Array:
    """Next-token logits for every position.

    Args:
      tokens: int32[batch, seq].
      positions: int32[batch, seq] rotary positions; by default counted from each row's first real
        token (`attention_mask`) or from each packed segment's start (`segment_ids`).
      attention_mask: bool/int[batch, seq], 1 for real tokens, 0 for padding (left or right).
      segment_ids: int32[batch, seq] for packed sequences: tokens attend only within their segment.
      remat: a `REMAT_POLICIES` name: which of each block's activations the backward pass
        recomputes instead of keeping (saves memory in training).
    Returns:
      logits: float32[batch, seq, vocab].
    """
    hidden, _ = hidden_states(params, cfg, tokens, positions=positions, attention_mask=attention_mask,
                              segment_ids=segment_ids, remat=remat)
    return logits_from_hidden(params, cfg, hidden)


def hidden_states(params: Params, cfg: ModelConfig, tokens: jax.Array, *, positions=None,
                  attention_mask=None, segment_ids=None, remat: str = "none", return_kv: bool = False):
    """Final-norm hidden states float[batch, seq, hidden] and, with `return_kv`, each layer's keys
    and values: two arrays [layers, batch, seq, kv_heads, head_dim]."""
    batch, seq = tokens.shape
    index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    valid = jnp.ones((batch, seq), bool) if attention_mask is None else attention_mask.astype(bool)
    if positions is None:
        positions = _default_positions(index, valid, segment_ids)
    allowed = (index[:, None, :] <= index[:, :, None]) & valid[:, None, :]
    if segment_ids is not None:
        allowed &= segment_ids[:, None, :] == segment_ids[:, :, None]

    def attend(q, k, v):
        return attention(q, k, v, allowed, implementation=cfg.attention, causal=True), (k, v)

    x = constrain(params["embed"][tokens], ("batch", "seq", "act_embed"))
    x, kv = run_blocks(params, cfg, x, positions, attend, remat=remat)
    hidden = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return hidden, (kv if return_kv else None)


def logits_from_hidden(params: Params, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """float32[..., vocab] logits from final hidden states float[..., hidden]."""
    if "lm_head_t" in params:  # `decode.cpu_decode_layout`
        return _project(hidden, params, "lm_head", preferred_element_type=jnp.float32)
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("...d,dv->...v", hidden, head, preferred_element_type=jnp.float32)


def continuation_hidden(params: Params, cfg: ModelConfig, prefix: jax.Array, prefix_mask: jax.Array,
                        tokens: jax.Array, token_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Final-norm hidden states of C continuations of each of B prefixes, each prefix run once.

    RaM scores the K + 1 candidates of a question, and the direct answer, after the same few-shot
    prompt: its keys and values are computed here once, not once per candidate.

    Args:
      prefix: int32[B, P], left-padded; prefix_mask: bool[B, P], True on real tokens.
      tokens: int32[B, C, L], continuations right-padded; token_mask: bool[B, C, L].
    Returns:
      last: float[B, hidden], the state at each prefix's last token (it predicts every
        continuation's first token); hidden: float[B, C, L, hidden].
    """
    b, c, l = tokens.shape
    prefix_hidden, (k, v) = hidden_states(params, cfg, prefix, attention_mask=prefix_mask, return_kv=True)
    # [layers, B, P, kv_heads, hd] -> keys [.., kv_heads, hd, P], values [.., kv_heads, P, hd], as in `decode.prefill`.
    layer_caches = (k.transpose(0, 1, 3, 4, 2), v.transpose(0, 1, 3, 2, 4))
    index = jnp.arange(l)
    allowed_self = (index[None, :] <= index[:, None]) & token_mask.astype(bool)[:, :, None, :]
    # Positions go on from each prefix's real length, as in the unshared sequence.
    positions = jnp.sum(prefix_mask, axis=-1, dtype=jnp.int32)[:, None, None] + index
    positions = jnp.broadcast_to(positions, (b, c, l)).reshape(b * c, l)

    def attend(q, k, v, layer_cache):
        per_prefix = [x.reshape(b, c, l, *x.shape[2:]) for x in (q, k, v)]
        out = prefix_attention(*per_prefix, *layer_cache, prefix_mask.astype(bool), allowed_self)
        return out.reshape(b * c, l, *out.shape[3:]), None

    x = params["embed"][tokens.reshape(b * c, l)]
    x, _ = run_blocks(params, cfg, x, positions, attend, layer_caches=layer_caches)
    hidden = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return prefix_hidden[:, -1], hidden.reshape(b, c, l, -1)


# ----------------------------------------------------------------------------------------------
# The block and its pieces.


def run_blocks(params: Params, cfg: ModelConfig, x, positions, attend: Callable, *, layer_caches=None,
                remat: str = "none"):
    """Scans `_block` over the stacked layers (or loops over per-layer tuples, `decode.cpu_decode_layout`);
    returns the residual stream and the per-layer (k, v) that `attend` emits, stacked on a leading
    layers axis (or as per-layer tuples)."""
    sin, cos = _rope_tables(cfg, positions, x.dtype)

    def body(x, layer):
        layer_params, layer_cache = layer
        layer_attend = attend if layer_cache is None else (lambda q, k, v: attend(q, k, v, layer_cache))
        return _block(layer_params, cfg, x, sin, cos, layer_attend)

    name = remat_name(remat)
    if name != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[name])
    if isinstance(params["layers"], tuple):
        emitted = []
        for layer in zip(params["layers"], zip(*layer_caches)):
            x, out = body(x, layer)
            emitted.append(out)
        return x, tuple(zip(*emitted))
    return jax.lax.scan(body, x, (params["layers"], layer_caches))


def _block(lp: Params, cfg: ModelConfig, x, sin, cos, attend: Callable):
    """One pre-norm transformer block: x + attention(norm(x)), then + SwiGLU(norm(x))."""
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
    q, k, v = (_project(h, lp, name) for name in ("wq", "wk", "wv"))
    if cfg.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    if cfg.qk_norm:
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    q, k = _apply_rope(q, sin, cos), _apply_rope(k, sin, cos)
    out, kv = attend(q, k, v)
    x = x + _project(out, lp, "wo")
    x = constrain(x, ("batch", "seq", "act_embed"))
    h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps)
    gate, up = _project(h, lp, "w_gate"), _project(h, lp, "w_up")
    x = x + _project(jax.nn.silu(gate) * up, lp, "w_down")
    return constrain(x, ("batch", "seq", "act_embed")), kv


# How many leading (input) axes of each weight a projection contracts.
CONTRACTED_AXES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1, "lm_head": 1}


def _project(x: jax.Array, lp: Params, name: str, preferred_element_type=None) -> jax.Array:
    """x [..., in] times the weight `name` [in, out] (`in`: its first `CONTRACTED_AXES[name]` axes),
    or, after `decode.cpu_decode_layout`, times `name + "_t"`, the same weight stored output-major [out, in]."""
    contracted = CONTRACTED_AXES[name]
    if name in lp:
        # One row axis: a weight gradient contracting over (batch, seq) makes XLA:CPU transpose its operands
        # first (a quarter of a policy-gradient micro-batch's kernel time, README Performance).
        w = lp[name]
        rows = x.shape[:x.ndim - contracted]
        w_matrix = w.reshape(-1, *w.shape[contracted:])
        y = jnp.tensordot(x.reshape(-1, w_matrix.shape[0]), w_matrix, axes=1,
                          preferred_element_type=preferred_element_type)
        return y.reshape(*rows, *w.shape[contracted:])
    w_t = lp[name + "_t"]
    out_axes = w_t.ndim - contracted
    y = jnp.tensordot(w_t, x, axes=(list(range(out_axes, w_t.ndim)), list(range(x.ndim - contracted, x.ndim))),
                      preferred_element_type=preferred_element_type)
    # [out, rows] as the product's own layout: XLA would otherwise fold the transpose into it.
    y = jax.lax.optimization_barrier(y)
    return jnp.moveaxis(y, list(range(out_axes)), list(range(y.ndim - out_axes, y.ndim)))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis, statistics in float32 (as transformers computes them)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def _rope_tables(cfg: ModelConfig, positions: jax.Array, dtype):
    """sin, cos: [batch, seq, 1, head_dim] for rotate-half RoPE at integer `positions`."""
    inv_freq = jnp.asarray(rope_inverse_frequencies(cfg), jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[..., None, :]
    return jnp.sin(angles).astype(dtype), jnp.cos(angles).astype(dtype)


def _apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _default_positions(index, valid, segment_ids):
    """Rotary positions counted from each row's first real token, or from each segment's start."""
    if segment_ids is not None:
        starts = jnp.where(segment_ids != jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1], index, 0)
        starts = starts.at[:, 0].set(0)
        return index - jax.lax.cummax(starts, axis=1)
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
