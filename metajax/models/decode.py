"""Sampling's side of the decoder: the KV cache, `prefill` and one `decode_step`.

`prefill` runs left-padded prompts through `transformer.hidden_states` once and allocates the cache
for `n` continuations of each; `decode_step` feeds one token per sample through the same blocks
(`transformer.run_blocks`), attending to the prompt's cache (stored once per prompt, shared by its
samples) and to the samples' own generated cache. On XLA:CPU the decode loop runs on the layout of
`cpu_decode_layout`; TPU and GPU keep stacked layers under `scan`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metajax.models.attention import decode_attention
from metajax.models.config import ModelConfig
from metajax.models.sharding import LogicalAxes, constrain
from metajax.models.transformer import (CONTRACTED_AXES, Params, hidden_states, logits_from_hidden, rms_norm,
                                        run_blocks)


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
            if name in CONTRACTED_AXES:
                n = CONTRACTED_AXES[name]
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
    x, (k_new, v_new) = run_blocks(params, cfg, x, positions, attend, layer_caches=layer_caches)
    logits = logits_from_hidden(params, cfg, rms_norm(x, params["final_norm"], cfg.rms_norm_eps))

    def write(cache_k, cache_v, k_new, v_new):  # k_new: [..., batch, n, kv_heads, head_dim] -> slot `step`
        return (jax.lax.dynamic_update_slice_in_dim(cache_k, k_new[..., None].astype(cache_k.dtype), step, axis=-1),
                jax.lax.dynamic_update_slice_in_dim(cache_v, v_new[..., None, :].astype(cache_v.dtype), step, axis=-2))

    if unstacked:
        k, v = (tuple(part) for part in zip(*map(write, cache.k, cache.v, k_new, v_new)))
    else:
        k, v = write(cache.k, cache.v, k_new, v_new)
    return logits, dataclasses.replace(cache, k=k, v=v).constrained()
