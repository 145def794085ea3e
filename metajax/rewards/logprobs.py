"""Chain log-probabilities through the model: the quantities RaM's VOC reward is built from."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metajax.batching import bucket, pad_rows
from metajax.models.config import ModelConfig
from metajax.models.transformer import Params, forward, hidden_states, logits_from_hidden


def sequence_logprobs(params: Params, cfg: ModelConfig, tokens: jax.Array, target_mask: jax.Array, *,
                      attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
                      max_targets: int | None = None) -> jax.Array:
    """sum_t log p(tokens[t] | tokens[:t]) over positions where `target_mask` is true.

    Args:
      tokens: int32[batch, seq].
      target_mask: bool[batch, seq]; position 0 has no context and must not be a target.
      attention_mask, segment_ids: as in `metajax.models.forward` (padding, packing).
      max_targets: static bound on the targets of any row. With it, vocabulary logits are computed
        only at the (at most `max_targets`) positions that predict a target, instead of all `seq`:
        the vocabulary projection is the largest single matmul of a small model. Rows with more
        targets than this would lose the extra ones, so pass an upper bound (e.g. a power-of-two
        bucket of the longest answer).
    Returns:
      float32[batch].
    """
    target_mask = target_mask.astype(bool)
    if max_targets is None:
        per_token = token_logprobs(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids)
        return jnp.sum(jnp.where(target_mask, per_token, 0.0), axis=-1)
    hidden, _ = hidden_states(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids)
    positions = jax.vmap(lambda row: jnp.nonzero(row, size=max_targets, fill_value=0)[0])(target_mask)
    valid = jnp.arange(max_targets) < jnp.sum(target_mask, axis=-1, keepdims=True)
    # The token at position t is predicted by the hidden state at t - 1.
    predicting = jnp.take_along_axis(hidden, jnp.maximum(positions - 1, 0)[..., None], axis=1)
    logits = logits_from_hidden(params, cfg, predicting)
    targets = jnp.take_along_axis(tokens, positions, axis=1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    scores = picked - jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum(jnp.where(valid, scores, 0.0), axis=-1)


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


_jit_sequence_logprobs = jax.jit(sequence_logprobs, static_argnums=1, static_argnames="max_targets")


def chain_logprobs(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
                   thoughts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                   direct_thought: Sequence[int] = (), pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """log p(y | x, z) and log p(y | x) for n (question, chain, answer) triples, in one batch.

    Each row i scores the answer tokens `answers[i]` twice: after `prompts[i] + thoughts[i]`, and
    after `prompts[i] + direct_thought` (the empty-thought answer: RaM's p(y | x)).

    Returns:
      (logp_with_chain float32[n], logp_direct float32[n]) as numpy arrays.
    """
    n = len(prompts)
    if not (len(thoughts) == len(answers) == n):
        raise ValueError(f"chain_logprobs got {n} prompts, {len(thoughts)} thoughts and {len(answers)} answers")
    for i in range(n):
        if not prompts[i]:
            raise ValueError(f"triple {i}: the prompt is empty; it needs at least one token (a BOS, say)")
        if not answers[i]:
            raise ValueError(f"triple {i}: the answer is empty; there is nothing to score")
    sequences = []
    for middle in (lambda i: list(thoughts[i]), lambda i: list(direct_thought)):
        for i in range(n):
            context = list(prompts[i]) + middle(i)
            sequences.append((context + list(answers[i]), [False] * len(context) + [True] * len(answers[i])))
    scores = score_sequences(params, cfg, sequences, pad_id=pad_id)
    return scores[:n], scores[n:]


def score_sequences(params: Params, cfg: ModelConfig, sequences: Sequence[tuple[Sequence[int], Sequence[bool]]],
                    *, pad_id: int = 0, batch_size: int = 64) -> np.ndarray:
    """`sequence_logprobs` of ragged (tokens, target_mask) pairs: float32[len(sequences)].

    Rows are right-padded to a power-of-two length and grouped into batches of `batch_size` (the last
    padded with empty rows), so repeated calls reuse a few compilations.
    """
    for i, (tokens, mask) in enumerate(sequences):
        if len(tokens) != len(mask):
            raise ValueError(f"sequence {i}: {len(tokens)} tokens but a target mask of {len(mask)}")
        if not any(mask):
            raise ValueError(f"sequence {i} has no target token to score")
        if mask[0]:
            raise ValueError(f"sequence {i}: the first token has no context and cannot be a target")
    scores = np.zeros(len(sequences), np.float32)
    for start in range(0, len(sequences), batch_size):
        chunk = list(sequences[start:start + batch_size])
        rows = bucket(len(chunk), minimum=1)
        length = bucket(max(len(t) for t, _ in chunk))
        tokens, attention = pad_rows([t for t, _ in chunk] + [[pad_id]] * (rows - len(chunk)), length=length,
                                     pad_id=pad_id)
        targets, _ = pad_rows([list(m) for _, m in chunk] + [[False]] * (rows - len(chunk)), length=length, pad_id=0)
        max_targets = bucket(int(targets.sum(axis=1).max()), minimum=8)
        result = _jit_sequence_logprobs(params, cfg, tokens, targets.astype(bool), attention_mask=attention,
                                        max_targets=max_targets)
        scores[start:start + len(chunk)] = np.asarray(result)[:len(chunk)]
    return scores
