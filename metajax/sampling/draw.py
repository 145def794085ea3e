"""How a token is drawn from the logits: greedy, or tempered and top-k / top-p filtered.

Traced inside the sampler's decode loop, once per step, so the filter avoids XLA:CPU's slow full
sort of the vocabulary wherever it can (`filter_logits`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Logits `filter_logits` takes by `lax.top_k` before it looks further.
FILTER_CANDIDATES = 256


def draw_tokens(logits, temperatures, top_p, top_k, key):
    """One token per row: argmax where temperature is 0, else a draw from the tempered, top-k and
    top-p filtered distribution. logits: float32[..., vocab]; temperatures: float32[...]."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(logits):
        scaled = logits / jnp.maximum(temperatures, 1e-6)[..., None]
        scaled = jax.lax.cond((top_k > 0) | (top_p < 1.0), lambda x: filter_logits(x, top_p, top_k), lambda x: x,
                              scaled)
        return jnp.where(temperatures > 0, jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32), greedy)

    # All-greedy batches skip the random draw over the vocabulary (the benchmark's and evaluation's case).
    return jax.lax.cond(jnp.any(temperatures > 0), draw, lambda _: greedy, logits)


def filter_logits(logits: jax.Array, top_p, top_k) -> jax.Array:
    """Masks (to -inf) tokens outside the top-k and outside the top-p nucleus.

    The nucleus is the smallest set of most likely tokens whose probability (under the top-k
    renormalised distribution) reaches `top_p`; the most likely token is always kept. Ties at the
    cut-off value are kept together.

    No full sort in the common cases (XLA:CPU sorted 192 rows of a 32000-token vocabulary in 1.06 s):
    the cut-off is found among the `FILTER_CANDIDATES` largest logits (`lax.top_k`, 26 ms for those
    rows) whenever it lies there: top_k <= FILTER_CANDIDATES, or no top-k and a nucleus inside the
    candidates. A nucleus beyond them (a flat distribution) is found by bisection over the logit
    values (`_nucleus_by_bisection`, 83 ms), and only a top-k beyond the candidates sorts. The same
    cut-off either way, up to the float32 rounding of the probability sums.
    logits: float32[..., vocab]; top_p: float scalar in (0, 1]; top_k: int scalar, 0 for no limit.
    """
    vocab = logits.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)

    def cutoff(ordered, total):  # ordered: the largest logits, descending; total: softmax's denominator
        ranks = jnp.arange(ordered.shape[-1])
        probs = jnp.where(ranks < k, jnp.exp(ordered - ordered[..., :1]), 0.0) / total
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly more likely tokens
        # top_p = 1 keeps everything: float32 cumulative mass can reach 1 before the smallest tokens.
        in_nucleus = ((mass_before < top_p) | (top_p >= 1.0)) & (ranks < k)
        return jnp.min(jnp.where(in_nucleus, ordered, jnp.inf), axis=-1, keepdims=True), jnp.sum(probs, axis=-1)

    def denominator(ordered):  # over the top k of `ordered`
        kept = jnp.arange(ordered.shape[-1]) < k
        return jnp.sum(jnp.where(kept, jnp.exp(ordered - ordered[..., :1]), 0.0), axis=-1, keepdims=True)

    def by_sort():
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        return cutoff(ordered, denominator(ordered))[0]

    def beyond_candidates():
        return jax.lax.cond(k == vocab, lambda: _nucleus_by_bisection(logits, top_p), by_sort)

    # The barrier keeps XLA:CPU's TopK a TopK: fused with its consumers it was rewritten into a full
    # sort (174 ms instead of 4).
    candidates = jax.lax.optimization_barrier(jax.lax.top_k(logits, min(FILTER_CANDIDATES, vocab))[0])
    width = candidates.shape[-1]
    everything = jnp.sum(jnp.exp(logits - candidates[..., :1]), axis=-1, keepdims=True)
    fast, mass = cutoff(candidates, jnp.where(k <= width, denominator(candidates), everything))
    # Without a top-k limit, the nucleus closed inside the candidates when their mass reached top_p.
    decided = (k <= width) | ((k == vocab) & (top_p < 1.0) & (mass >= top_p))
    return jnp.where(logits >= jax.lax.cond(jnp.all(decided), lambda: fast, beyond_candidates), logits, -jnp.inf)


def _nucleus_by_bisection(logits: jax.Array, top_p) -> jax.Array:
    """float32[..., 1]: the nucleus cut-off with no top-k and no sort.

    The cut-off is the smallest logit v whose strictly larger logits hold less than `top_p` of the
    probability (the first token of value v in sorted order then has mass_before < top_p). That
    condition is monotone in v, so 32 halvings of the logits' order-preserving uint32 keys find v
    exactly: each is one masked sum over the vocabulary.
    """
    probs = jax.nn.softmax(logits, axis=-1)
    bits = jax.lax.bitcast_convert_type(logits, jnp.uint32)
    sign = jnp.uint32(1 << 31)
    keys = jnp.where(bits >= sign, ~bits, bits | sign)  # uint32 order = float order

    def halve(_, bounds):  # the answer's key stays in [low, high]; `high` always satisfies the condition
        low, high = bounds
        middle = low + (high - low) // 2
        closed = jnp.sum(jnp.where(keys > middle, probs, 0.0), axis=-1, keepdims=True) < top_p
        return jnp.where(closed, low, middle + 1), jnp.where(closed, middle, high)

    bounds = (jnp.min(keys, axis=-1, keepdims=True), jnp.max(keys, axis=-1, keepdims=True))
    _, key = jax.lax.fori_loop(0, 32, halve, bounds)
    value = jax.lax.bitcast_convert_type(jnp.where(key >= sign, key ^ sign, ~key), jnp.float32)
    # top_p = 1 keeps everything: float32 mass can reach 1 before the smallest tokens.
    return jnp.where(top_p >= 1.0, -jnp.inf, value)
