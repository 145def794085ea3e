"""Chain log-probabilities through the model: the quantities RaM's VOC reward is built from."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metajax.batching import bucket, pad_rows
from metajax.models.config import ModelConfig
from metajax.models.transformer import Params, forward


def sequence_logprobs(params: Params, cfg: ModelConfig, tokens: jax.Array, target_mask: jax.Array, *,
                      attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None
                      ) -> jax.Array:
    """sum_t log p(tokens[t] | tokens[:t]) over positions where `target_mask` is true.

    Args:
      tokens: int32[batch, seq].
      target_mask: bool[batch, seq]; position 0 has no context and must not be a target.
      attention_mask, segment_ids: as in `metajax.models.forward` (padding, packing).
    Returns:
      float32[batch].
    """
    per_token = token_logprobs(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids)
    return jnp.sum(jnp.where(target_mask.astype(bool), per_token, 0.0), axis=-1)


def token_logprobs(params: Params, cfg: ModelConfig, tokens: jax.Array, *,
                   attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
                   remat: bool = False) -> jax.Array:
    """float32[batch, seq]: log p(tokens[t] | tokens[:t]) at each position t >= 1; 0 at t = 0."""
    logits = forward(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids, remat=remat)
    return logprobs_of_tokens(logits, tokens)


def logprobs_of_tokens(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """float32[batch, seq] log-probs of `tokens` under next-token `logits` float32[batch, seq, vocab],
    shifted so entry t scores tokens[t] (entry 0 is 0)."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = tokens[:, 1:]
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    scores = picked - jax.nn.logsumexp(logits, axis=-1)
    return jnp.pad(scores, ((0, 0), (1, 0)))


_jit_sequence_logprobs = jax.jit(sequence_logprobs, static_argnums=1)


def chain_logprobs(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
                   thoughts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                   direct_thought: Sequence[int] = (), pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """log p(y | x, z) and log p(y | x) for n (question, chain, answer) triples, in one batch.

    Each row i scores the answer tokens `answers[i]` twice: after `prompts[i] + thoughts[i]`, and
    after `prompts[i] + direct_thought` (the empty-thought answer: RaM's p(y | x)). The 2n sequences
    are right-padded to a power-of-two length, so repeated calls reuse a few compilations.

    Returns:
      (logp_with_chain float32[n], logp_direct float32[n]) as numpy arrays.
    """
    n = len(prompts)
    if not (len(thoughts) == len(answers) == n):
        raise ValueError(f"chain_logprobs got {n} prompts, {len(thoughts)} thoughts and {len(answers)} answers")
    if any(len(a) == 0 for a in answers):
        raise ValueError("every answer needs at least one token to score")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (a BOS, say) before the answer")
    rows, targets = [], []
    for context_of in (lambda i: list(prompts[i]) + list(thoughts[i]), lambda i: list(prompts[i]) + list(direct_thought)):
        for i in range(n):
            context = context_of(i)
            rows.append(context + list(answers[i]))
            targets.append((len(context), len(context) + len(answers[i])))
    length = bucket(max(len(r) for r in rows))
    tokens, mask = pad_rows(rows, length=length, pad_id=pad_id)
    target_mask = np.zeros_like(mask)
    for i, (start, end) in enumerate(targets):
        target_mask[i, start:end] = True
    scores = np.asarray(_jit_sequence_logprobs(params, cfg, tokens, target_mask, attention_mask=mask))
    return scores[:n], scores[n:]
