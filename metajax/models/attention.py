"""Grouped-query attention: the full-sequence implementations behind one switch, and decode attention.

Full-sequence attention (scoring, training, prefill) is chosen by `ModelConfig.attention`:
  * "reference": the plain definition, one float32 score tensor [b, kv_heads, r, t, s]. It is
    what the other two are tested against.
  * "blockwise": queries in blocks of `ATTENTION_BLOCK`; block i attends to keys [0, end of block i)
    only, since the mask is causal, so the work above the diagonal is skipped (about half the
    FLOPs) and the live scores are [b, kv_heads, r * block, s], not [.., t, s]. Each block is
    rematerialised in the backward pass (`jax.checkpoint`): training keeps a block's inputs, not
    its probabilities, as flash attention does. On a 2-core XLA:CPU one layer at 8 x 1024 tokens
    (9 query / 3 KV heads of 64) took 209 ms against "reference"'s 1028 ms (an ad hoc timing, not
    a benchmarks/ script); with one block (t <= ATTENTION_BLOCK) it computes what "reference" does.
  * "dot_product": `jax.nn.dot_product_attention`, which lets XLA pick a fused kernel (cuDNN on
    GPU when shapes and dtypes allow).

Keys are multiplied in a heads-first layout, [.., head_dim, positions] for the cache, so every
score product is a plain batched matmul with contiguous operands: with positions first and
head_dim contracted on both sides XLA:CPU ran the same products 4x slower.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Large finite negative instead of -inf: a fully masked row (a padding query) then softmaxes to a
# harmless uniform distribution rather than NaN.
MASKED = -0.7 * float(np.finfo(np.float32).max)

ATTENTION_IMPLEMENTATIONS = ("reference", "blockwise", "dot_product")

# Queries per block of "blockwise": at 1024 tokens 128 ran faster than 256 on XLA:CPU (209 vs 246 ms).
ATTENTION_BLOCK = 128


def attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, *, implementation: str,
              causal: bool) -> jax.Array:
    """softmax(q k^T / sqrt(hd)) v over the allowed keys.

    Args:
      q: [b, t, q_heads, hd]; k, v: [b, s, kv_heads, hd] (q_heads a multiple of kv_heads).
      allowed: bool[b, t, s], which keys each query sees.
      implementation: one of `ATTENTION_IMPLEMENTATIONS`.
      causal: `allowed` never lets query i see a key after position i (t == s); "blockwise" relies
        on it to skip the blocks above the diagonal.
    Returns:
      [b, t, q_heads, hd] in q's dtype.
    """
    if implementation == "reference":
        return reference_attention(q, k, v, allowed)
    if implementation == "blockwise":
        if not causal:
            raise ValueError("blockwise attention needs a causal mask (t == s, no key after its query)")
        return blockwise_attention(q, k, v, allowed, block=ATTENTION_BLOCK)
    if implementation == "dot_product":
        return jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None]).astype(q.dtype)
    raise ValueError(f"attention implementation {implementation!r} is not one of {ATTENTION_IMPLEMENTATIONS}")


def reference_attention(q, k, v, allowed):
    """The plain definition: one float32 score tensor over every (query, key) pair."""
    b, t, hq, hd = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, t, hkv, hq // hkv, hd)
    scores = jnp.einsum("btgrk,bsgk->bgrts", q, k, preferred_element_type=jnp.float32) / math.sqrt(hd)
    scores = jnp.where(allowed[:, None, None], scores, MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bgrts,bsgk->btgrk", probs, v).reshape(b, t, hq, hd)


def blockwise_attention(q, k, v, allowed, *, block: int = ATTENTION_BLOCK):
    """Causal attention by query blocks, each over its key prefix only (see the module docstring)."""
    b, t, hq, hd = q.shape
    g = k.shape[2]
    r = hq // g
    queries = q.reshape(b, t, g, r, hd).transpose(0, 2, 1, 3, 4)  # [b, g, t, r, hd]
    keys_t = k.transpose(0, 2, 3, 1)  # [b, g, hd, s]
    values = v.transpose(0, 2, 1, 3)  # [b, g, s, hd]

    @jax.checkpoint
    def one_block(q_block, keys_t, values, allowed_block):
        rows = q_block.shape[2]
        scores = jnp.einsum("bgqk,bgks->bgqs", q_block.reshape(b, g, rows * r, hd), keys_t,
                            preferred_element_type=jnp.float32) / math.sqrt(hd)
        scores = jnp.where(allowed_block[:, None, :, None], scores.reshape(b, g, rows, r, -1), MASKED)
        # Normalised after the value product: one pass fewer over the [.., rows * r, s] scores.
        weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = jnp.einsum("bgqs,bgsk->bgqk", weights.astype(values.dtype).reshape(b, g, rows * r, -1), values,
                         preferred_element_type=jnp.float32)
        return (out.reshape(b, g, rows, r, hd) / total).astype(values.dtype)

    outputs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        outputs.append(one_block(queries[:, :, start:end], keys_t[..., :end], values[:, :, :end],
                                 allowed[:, start:end, :end]))
    out = jnp.concatenate(outputs, axis=2)
    return out.transpose(0, 2, 1, 3, 4).reshape(b, t, hq, hd)


def decode_attention(q, k_self, v_self, prompt_keys_t, prompt_values, prompt_mask, gen_keys_t, gen_values, earlier):
    """Attention of one new token per sample over [its prompt | its earlier tokens | itself].

    Each cache is read once, in place: the three parts are softmaxed together through one shared
    maximum, with no concatenated score tensor and no copy of the cache.

    Args:
      q: [b, n, q_heads, hd]; k_self, v_self: [b, n, kv_heads, hd], the new token's own key and value.
      prompt_keys_t: [b, kv_heads, hd, p]; prompt_values: [b, kv_heads, p, hd] (shared by the n samples).
      prompt_mask: bool[b, p].
      gen_keys_t: [b, n, kv_heads, hd, max_new]; gen_values: [b, n, kv_heads, max_new, hd].
      earlier: bool[max_new], the generated slots already written.
    Returns:
      [b, n, q_heads, hd] in q's dtype.
    """
    b, n, hq, hd = q.shape
    g = k_self.shape[2]
    r = hq // g
    dtype, f32 = q.dtype, jnp.float32
    q = q.reshape(b, n, g, r, hd)
    # The prompt part is shared by the n samples: its queries ride along the matmul's rows.
    q_prompt = q.transpose(0, 2, 1, 3, 4).reshape(b, g, n * r, hd)
    s_prompt = jnp.einsum("bgqk,bgkp->bgqp", q_prompt, prompt_keys_t.astype(dtype), preferred_element_type=f32)
    s_prompt = s_prompt.reshape(b, g, n, r, -1).transpose(0, 2, 1, 3, 4)  # [b, n, g, r, p]
    s_gen = jnp.einsum("bngrk,bngks->bngrs", q, gen_keys_t.astype(dtype), preferred_element_type=f32)
    s_self = jnp.einsum("bngrk,bngk->bngr", q, k_self, preferred_element_type=f32)[..., None]
    scale = 1.0 / math.sqrt(hd)
    s_prompt = jnp.where(prompt_mask[:, None, None, None, :], s_prompt * scale, MASKED)
    s_gen = jnp.where(earlier, s_gen * scale, MASKED)
    s_self = s_self * scale
    top = jnp.maximum(jnp.maximum(jnp.max(s_prompt, -1, keepdims=True), jnp.max(s_gen, -1, keepdims=True)), s_self)
    e_prompt, e_gen, e_self = jnp.exp(s_prompt - top), jnp.exp(s_gen - top), jnp.exp(s_self - top)
    total = jnp.sum(e_prompt, -1, keepdims=True) + jnp.sum(e_gen, -1, keepdims=True) + e_self
    p_prompt = (e_prompt / total).astype(dtype).transpose(0, 2, 1, 3, 4).reshape(b, g, n * r, -1)
    out_prompt = jnp.einsum("bgqp,bgpk->bgqk", p_prompt, prompt_values.astype(dtype))
    out_prompt = out_prompt.reshape(b, g, n, r, hd).transpose(0, 2, 1, 3, 4)
    out = (out_prompt + jnp.einsum("bngrs,bngsk->bngrk", (e_gen / total).astype(dtype), gen_values.astype(dtype))
           + (e_self / total).astype(dtype) * v_self[:, :, :, None, :])
    return out.reshape(b, n, hq, hd)


def prefix_attention(q, k_self, v_self, prefix_keys_t, prefix_values, prefix_mask, allowed_self, *,
                     block: int = ATTENTION_BLOCK):
    """Attention of C continuations of each prefix over [their shared prefix | their own earlier tokens].

    The prefix's keys and values were computed once (`metajax.models.continuation_hidden`); the C
    continuations' queries ride along the rows of one product with its keys, as the n samples of
    `decode_attention` do, and both parts are softmaxed through one shared maximum. Queries go in
    blocks of `block` positions, each over its own keys up to the block's end (the mask is causal),
    so the live fp32 scores are [b, c, heads, block, p + block end], as in "blockwise".

    Args:
      q: [b, c, l, q_heads, hd]; k_self, v_self: [b, c, l, kv_heads, hd], the continuations' own.
      prefix_keys_t: [b, kv_heads, hd, p]; prefix_values: [b, kv_heads, p, hd].
      prefix_mask: bool[b, p].
      allowed_self: bool[b, c, l, l], causal: which of its own continuation's keys each query sees.
    Returns:
      [b, c, l, q_heads, hd] in q's dtype.
    """
    l = q.shape[2]
    blocks = [_prefix_attention_block(q[:, :, start:start + block], k_self[:, :, :start + block],
                                      v_self[:, :, :start + block], prefix_keys_t, prefix_values, prefix_mask,
                                      allowed_self[:, :, start:start + block, :start + block])
              for start in range(0, l, block)]
    return jnp.concatenate(blocks, axis=2)


def _prefix_attention_block(q, k_self, v_self, prefix_keys_t, prefix_values, prefix_mask, allowed_self):
    b, c, lq, hq, hd = q.shape
    g = k_self.shape[3]
    r = hq // g
    dtype, f32 = q.dtype, jnp.float32
    q = q.reshape(b, c, lq, g, r, hd)
    q_prefix = q.transpose(0, 3, 1, 2, 4, 5).reshape(b, g, c * lq * r, hd)
    s_prefix = jnp.einsum("bgqk,bgkp->bgqp", q_prefix, prefix_keys_t.astype(dtype), preferred_element_type=f32)
    s_prefix = s_prefix.reshape(b, g, c, lq, r, -1).transpose(0, 2, 1, 4, 3, 5)  # [b, c, g, r, lq, p]
    s_self = jnp.einsum("bcqgrk,bcsgk->bcgrqs", q, k_self, preferred_element_type=f32)  # [b, c, g, r, lq, ls]
    scale = 1.0 / math.sqrt(hd)
    s_prefix = jnp.where(prefix_mask[:, None, None, None, None, :], s_prefix * scale, MASKED)
    s_self = jnp.where(allowed_self[:, :, None, None], s_self * scale, MASKED)
    top = jnp.maximum(jnp.max(s_prefix, -1, keepdims=True), jnp.max(s_self, -1, keepdims=True))
    e_prefix, e_self = jnp.exp(s_prefix - top), jnp.exp(s_self - top)
    total = jnp.sum(e_prefix, -1, keepdims=True) + jnp.sum(e_self, -1, keepdims=True)
    p_prefix = (e_prefix / total).astype(dtype).transpose(0, 2, 1, 4, 3, 5).reshape(b, g, c * lq * r, -1)
    out_prefix = jnp.einsum("bgqp,bgpk->bgqk", p_prefix, prefix_values.astype(dtype))
    out_prefix = out_prefix.reshape(b, g, c, lq, r, hd).transpose(0, 2, 3, 1, 4, 5)  # [b, c, lq, g, r, hd]
    out_self = jnp.einsum("bcgrqs,bcsgk->bcqgrk", (e_self / total).astype(dtype), v_self)
    return (out_prefix + out_self).reshape(b, c, lq, hq, hd)
