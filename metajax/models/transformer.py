"""The pure-functional Llama/Qwen decoder: weights declared once, one block for every mode.

`params` is a nested dict of arrays; layer weights are stacked on a leading `layers` axis and the
blocks run under `lax.scan`, so a 30-layer model compiles one block, not thirty. The one exception
is XLA:CPU's decode loop (`cpu_decode_layout`).

Three entry points share `_block`:
  * `forward`: full causal attention over `tokens` (scoring, training), with padding masks or
    packed segments;
  * `prefill`: the same pass over left-padded prompts, returning the last position's logits and
    the prompts' keys and values;
  * `decode_step`: one new token for each of `n` samples per prompt, attending to the prompt's
    cache (stored once per prompt, shared by its samples) and to the samples' own generated cache.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from metajax.models.attention import attention, decode_attention, prefix_attention
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
    x, kv = _run_blocks(params, cfg, x, positions, attend, remat=remat)
    hidden = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return hidden, (kv if return_kv else None)


def logits_from_hidden(params: Params, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """float32[..., vocab] logits from final hidden states float[..., hidden]."""
    if "lm_head_t" in params:  # `cpu_decode_layout`
        return _project(hidden, params, "lm_head", preferred_element_type=jnp.float32)
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("...d,dv->...v", hidden, head, preferred_element_type=jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values for sampling `n` continuations of each of `batch` prompts.

    The prompt part is stored once per prompt and shared by its samples; the generated part has one
    slot per sample and step.

    Heads come before positions, and keys are stored transposed ([head_dim, positions]), so that
    both attention products of a decode step are plain batched matmuls over contiguous tiles: with
    positions first XLA transposed the whole cache every step, and contracting head_dim on the
    minor axis of both operands ran 4x slower on XLA:CPU.

    Attributes:
      prompt_k: [layers, batch, kv_heads, head_dim, prompt_len]; prompt_v: [layers, batch, kv_heads,
        prompt_len, head_dim].
      prompt_mask: bool[batch, prompt_len], False on (left) padding.
      k: [layers, batch, n, kv_heads, head_dim, max_new]; v: [layers, batch, n, kv_heads, max_new, head_dim].
      After `cpu_decode_layout`, prompt_k, prompt_v, k and v are tuples of per-layer arrays (the same
      shapes without the leading `layers` axis).
    """

    prompt_k: jax.Array
    prompt_v: jax.Array
    prompt_mask: jax.Array
    k: jax.Array
    v: jax.Array

    def constrained(self) -> KVCache:
        """The cache pinned to its logical axes (`KV_CACHE_AXES`): under `jax.set_mesh`, prompts over
        `data`/`fsdp` and KV heads over `tensor`, as the weights are declared."""
        def pin(x, axes):
            return tuple(constrain(layer, axes[1:]) for layer in x) if isinstance(x, tuple) else constrain(x, axes)

        return KVCache(**{name: pin(getattr(self, name), axes) for name, axes in KV_CACHE_AXES.items()})


KV_CACHE_AXES: dict[str, LogicalAxes] = {
    "prompt_k": ("layers", "batch", "kv_heads", "head_dim", "seq"),
    "prompt_v": ("layers", "batch", "kv_heads", "seq", "head_dim"),
    "prompt_mask": ("batch", "seq"),
    "k": ("layers", "batch", None, "kv_heads", "head_dim", "seq"),
    "v": ("layers", "batch", None, "kv_heads", "seq", "head_dim"),
}


def prefill(params: Params, cfg: ModelConfig, prompts: jax.Array, prompt_mask: jax.Array, *,
            num_samples: int, max_new_tokens: int, cache_dtype=None) -> tuple[jax.Array, KVCache]:
    """Runs left-padded prompts once and allocates the cache for `num_samples` continuations each.

    Args:
      prompts: int32[batch, prompt_len], left-padded.
      prompt_mask: bool[batch, prompt_len], True on real tokens.
    Returns:
      logits: float32[batch, vocab] at each prompt's last token.
      cache: a `KVCache` holding the prompts and an empty generated part.
    """
    hidden, (k, v) = hidden_states(params, cfg, prompts, attention_mask=prompt_mask, return_kv=True)
    logits = logits_from_hidden(params, cfg, hidden[:, -1])
    cache_dtype = cache_dtype or k.dtype
    gen_v_shape = (cfg.num_layers, prompts.shape[0], num_samples, cfg.num_kv_heads, max_new_tokens, cfg.head_dim)
    gen_k_shape = gen_v_shape[:-2] + (cfg.head_dim, max_new_tokens)
    # [layers, batch, seq, kv_heads, hd] -> keys [.., kv_heads, hd, seq], values [.., kv_heads, seq, hd]
    cache = KVCache(prompt_k=k.transpose(0, 1, 3, 4, 2).astype(cache_dtype),
                    prompt_v=v.transpose(0, 1, 3, 2, 4).astype(cache_dtype),
                    prompt_mask=prompt_mask.astype(bool),
                    k=jnp.zeros(gen_k_shape, cache_dtype), v=jnp.zeros(gen_v_shape, cache_dtype))
    return logits, cache.constrained()


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
    # [layers, B, P, kv_heads, hd] -> keys [.., kv_heads, hd, P], values [.., kv_heads, P, hd], as in `prefill`.
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
    x, _ = _run_blocks(params, cfg, x, positions, attend, layer_caches=layer_caches)
    hidden = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return prefix_hidden[:, -1], hidden.reshape(b, c, l, -1)


def cpu_decode_layout(params: Params, cache: KVCache) -> tuple[Params, KVCache]:
    """The weights and cache laid out for a decode loop on XLA:CPU, copied once before the loop.

    * Per-layer buffers: inside a `while_loop`, XLA:CPU copies each layer's slice of the stacked
      weights and prompt cache out before every use (a static slice is not hoisted out of the loop
      either), about the model's whole size per step. As tuples of per-layer arrays the loop reads
      each in place: on a SmolLM2-shaped model at batch 8 with 1024-token prompts a step took 149 ms
      against 242 ms.
    * Every weight stored output-major, [out, in] (`name + "_t"`; the vocabulary projection as
      `lm_head_t`, which for tied embeddings is `embed` itself), and multiplied as W x^T (`_project`).
      XLA:CPU runs few-row products faster that way round: greedy decoding of a 124.7M Llama at
      batch 16 (`benchmarks/sample.py`) took 4.70 against 5.40 s. Fusing the gate and up
      projections into one product, or splitting a product in two for the two cores, did not help.
    TPU and GPU read stacked slices in place: they keep `scan` and one compiled block (these copies
    would also double the weights' memory).
    """
    num_layers = cache.v.shape[0]

    def per_layer(x):
        return tuple(x[i] for i in range(num_layers))

    def output_major(layer: Params) -> Params:
        laid_out = {}
        for name, w in layer.items():
            if name in _CONTRACTED_AXES:
                n = _CONTRACTED_AXES[name]
                name, w = name + "_t", jnp.transpose(w, [*range(n, w.ndim), *range(n)])
            laid_out[name] = w
        return laid_out

    layers = tuple(output_major(jax.tree.map(lambda w, i=i: w[i], params["layers"])) for i in range(num_layers))
    head = params["lm_head"].T if "lm_head" in params else params["embed"]
    laid_out = {name: w for name, w in params.items() if name != "lm_head"}
    return ({**laid_out, "layers": layers, "lm_head_t": head},
            dataclasses.replace(cache, prompt_k=per_layer(cache.prompt_k), prompt_v=per_layer(cache.prompt_v),
                                k=per_layer(cache.k), v=per_layer(cache.v)))


def decode_step(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
                cache: KVCache, step: jax.Array) -> tuple[jax.Array, KVCache]:
    """Feeds one token per sample and writes its keys and values into generated slot `step`.
    `params` and `cache` are stacked on a layers axis, or per-layer tuples (`cpu_decode_layout`).

    Args:
      tokens: int32[batch, n], the token generated at `step` for each sample.
      positions: int32[batch, n], its rotary position.
      step: int32 scalar, how many generated tokens the cache already holds.
    Returns:
      logits: float32[batch, n, vocab] for the next token, and the updated cache.
    """
    unstacked = isinstance(cache.v, tuple)
    max_new = cache.v[0].shape[-2]  # layer 0's [batch, n, kv_heads, max_new, head_dim], either layout
    earlier = jnp.arange(max_new) < step  # generated slots this token may attend to

    def attend(q, k, v, layer_cache):
        prompt_k, prompt_v, gen_k, gen_v = layer_cache
        out = decode_attention(q, k, v, prompt_k, prompt_v, cache.prompt_mask, gen_k, gen_v, earlier)
        if not unstacked:
            return out, (k, v)
        # The key and value written into the cache are made to depend on this attention's output
        # (x + 0 * y, which XLA does not fold for floats; per row, so a non-finite row spoils only
        # itself), which orders the in-place write after the attention's read of the cache.
        # Unordered, XLA:CPU copied each layer's cache twice a step to keep the read from racing the
        # write (one step of a 124.7M Llama at batch 16, jitted alone: 34 against 48 ms).
        after = 0.0 * out[:, :, :1, :1]
        return out, (k + after.astype(k.dtype), v + after.astype(v.dtype))

    x = params["embed"][tokens]
    layer_caches = (cache.prompt_k, cache.prompt_v, cache.k, cache.v)
    x, (k_new, v_new) = _run_blocks(params, cfg, x, positions, attend, layer_caches=layer_caches)
    logits = logits_from_hidden(params, cfg, rms_norm(x, params["final_norm"], cfg.rms_norm_eps))

    def write(cache_k, cache_v, k_new, v_new):  # k_new: [..., batch, n, kv_heads, head_dim] -> slot `step`
        return (jax.lax.dynamic_update_slice_in_dim(cache_k, k_new[..., None].astype(cache_k.dtype), step, axis=-1),
                jax.lax.dynamic_update_slice_in_dim(cache_v, v_new[..., None, :].astype(cache_v.dtype), step, axis=-2))

    if unstacked:
        k, v = (tuple(part) for part in zip(*map(write, cache.k, cache.v, k_new, v_new)))
    else:
        k, v = write(cache.k, cache.v, k_new, v_new)
    return logits, dataclasses.replace(cache, k=k, v=v).constrained()


# ----------------------------------------------------------------------------------------------
# The block and its pieces.


def _run_blocks(params: Params, cfg: ModelConfig, x, positions, attend: Callable, *, layer_caches=None,
                remat: str = "none"):
    """Scans `_block` over the stacked layers (or loops over per-layer tuples, `cpu_decode_layout`);
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
_CONTRACTED_AXES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1, "lm_head": 1}


def _project(x: jax.Array, lp: Params, name: str, preferred_element_type=None) -> jax.Array:
    """x [..., in] times the weight `name` [in, out] (`in`: its first `_CONTRACTED_AXES[name]` axes),
    or, after `cpu_decode_layout`, times `name + "_t"`, the same weight stored output-major [out, in]."""
    contracted = _CONTRACTED_AXES[name]
    if name in lp:
        return jnp.tensordot(x, lp[name], axes=contracted, preferred_element_type=preferred_element_type)
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
