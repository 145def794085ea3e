"""Log-probabilities of tokens under the model: what VOC rewards, SFT and policy gradients are built from.

Nothing here builds float32 logits over the whole `[batch, seq, vocab]` at once. The vocabulary
projection runs in chunks of `VOCAB_CHUNK` columns under a `lax.scan`, keeping a running
logsumexp, the target's logit and the entropy's running sum; each chunk is recomputed in the
backward pass (`jax.checkpoint`) instead of being stored. Llama 3's 128k vocabulary at 16 x 2048
tokens is 16 GiB of float32 logits; chunked, the live part is `[batch, seq, VOCAB_CHUNK]`.

The public functions run compiled (jit with the static config) when called from anyone's code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metajax.batching import bucket, length_bucket, pad_rows
from metajax.host import to_host
from metajax.models.config import ModelConfig
from metajax.models.transformer import Params, continuation_hidden, hidden_states

# Columns of the vocabulary projection computed at once; vocabularies up to this size take one chunk.
VOCAB_CHUNK = 16384


def logprobs_from_hidden(params: Params, cfg: ModelConfig, hidden: jax.Array, targets: jax.Array, *,
                         temperature=None, vocab_chunk: int = VOCAB_CHUNK) -> tuple[jax.Array, jax.Array]:
    """log p(target) and the entropy of the next-token distribution, from final hidden states.

    Args:
      hidden: float[batch, T, hidden], the final-norm hidden states that predict `targets`.
      targets: int32[batch, T].
      temperature: None (1), a scalar, or float32[batch]: the distribution is softmax(logits / T),
        the one a sampler at temperature T draws from (before any top-k / top-p filter).
      vocab_chunk: vocabulary columns per chunk (static).
    Returns:
      (logp float32[batch, T], entropy float32[batch, T]), entropy in nats.
    """
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    vocab = head.shape[1]
    chunk = min(vocab_chunk, vocab)
    num_chunks = -(-vocab // chunk)
    head = jnp.pad(head, ((0, 0), (0, num_chunks * chunk - vocab)))
    head = head.reshape(head.shape[0], num_chunks, chunk).transpose(1, 0, 2)  # [chunks, hidden, chunk]
    inverse_t = jnp.float32(1.0) if temperature is None else 1.0 / jnp.asarray(temperature, jnp.float32)
    inverse_t = jnp.reshape(inverse_t, jnp.shape(inverse_t) + (1,) * (hidden.ndim - 1 - jnp.ndim(inverse_t)))
    # One row axis: a weight gradient contracting over (batch, T) makes XLA:CPU transpose its operands first.
    target_shape = targets.shape
    inverse_t = jnp.broadcast_to(inverse_t, target_shape).reshape(-1)
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)

    @jax.checkpoint
    def one_chunk(carry, inputs):
        top, total, weighted, picked = carry
        weights, start = inputs
        z = jnp.einsum("nd,dv->nv", hidden, weights, preferred_element_type=jnp.float32) * inverse_t[:, None]
        ids = start + jnp.arange(chunk)
        real = ids < vocab
        # Padding columns hold 0, not -inf, so that no inf or NaN reaches a product or its gradient.
        z = jnp.where(real, z, 0.0)
        # The running max only keeps exp() in range; it cancels in the result, so no gradient flows through it.
        new_top = jax.lax.stop_gradient(jnp.maximum(top, jnp.max(jnp.where(real, z, -jnp.inf), axis=-1)))
        rescale = jnp.exp(top - new_top)
        e = jnp.where(real, jnp.exp(z - new_top[..., None]), 0.0)
        total = total * rescale + jnp.sum(e, axis=-1)
        weighted = weighted * rescale + jnp.sum(e * z, axis=-1)
        picked = picked + jnp.sum(jnp.where(ids == targets[..., None], z, 0.0), axis=-1)
        return (new_top, total, weighted, picked), None

    rows = targets.shape  # (batch * T,)
    init = (jnp.full(rows, -jnp.inf, jnp.float32), jnp.zeros(rows, jnp.float32), jnp.zeros(rows, jnp.float32),
            jnp.zeros(rows, jnp.float32))
    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
    (top, total, weighted, picked), _ = jax.lax.scan(one_chunk, init, (head, starts))
    logsumexp = top + jnp.log(total)
    return (picked - logsumexp).reshape(target_shape), (logsumexp - weighted / total).reshape(target_shape)


@functools.partial(jax.jit, static_argnums=1, static_argnames=("remat", "vocab_chunk", "completion_len"))
def token_logprobs(params: Params, cfg: ModelConfig, tokens: jax.Array, *, attention_mask=None, segment_ids=None,
                   temperature=None, remat: str = "none", vocab_chunk: int = VOCAB_CHUNK,
                   completion_len: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced log p(tokens[t] | tokens[:t]) and the entropy of that prediction, per position (compiled).

    Args:
      tokens: int32[batch, seq]; attention_mask, segment_ids: as in `metajax.models.forward`.
      temperature: None, a scalar or float32[batch] (see `logprobs_from_hidden`).
      remat: a `REMAT_POLICIES` name: what each block recomputes in the backward pass.
      completion_len: score only the last `completion_len` tokens (1 <= completion_len < seq). A policy
        gradient needs only the sampled completion's log-probs; the vocabulary projection, the largest
        matmul of a small model and 4 of its passes in training (the chunk is recomputed in the
        backward), then runs at those positions alone.
    Returns:
      (logp float32[batch, seq], entropy float32[batch, seq]); entry t scores tokens[t], entry 0
      (no context) is 0 in both. With `completion_len`: [batch, completion_len] each, entry j
      scoring tokens[seq - completion_len + j].
    """
    seq = tokens.shape[1]
    if completion_len is not None and not 1 <= completion_len < seq:
        raise ValueError(f"completion_len={completion_len} must be in [1, {seq}): the first token has no context")
    start = 1 if completion_len is None else seq - completion_len
    hidden, _ = hidden_states(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids,
                              remat=remat)
    logp, entropy = logprobs_from_hidden(params, cfg, hidden[:, start - 1:-1], tokens[:, start:],
                                         temperature=temperature, vocab_chunk=vocab_chunk)
    if completion_len is not None:
        return logp, entropy
    return jnp.pad(logp, ((0, 0), (1, 0))), jnp.pad(entropy, ((0, 0), (1, 0)))


@functools.partial(jax.jit, static_argnums=1, static_argnames=("max_targets", "vocab_chunk"))
def sequence_logprobs(params: Params, cfg: ModelConfig, tokens: jax.Array, target_mask: jax.Array, *,
                      attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
                      max_targets: int | None = None, vocab_chunk: int = VOCAB_CHUNK) -> jax.Array:
    """sum_t log p(tokens[t] | tokens[:t]) over positions where `target_mask` is true (compiled).

    Args:
      tokens: int32[batch, seq].
      target_mask: bool[batch, seq]; position 0 has no context and must not be a target.
      attention_mask, segment_ids: as in `metajax.models.forward` (padding, packing).
      max_targets: static bound on the targets of any row. With it, the vocabulary projection runs
        only at the (at most `max_targets`) positions that predict a target, instead of all `seq`:
        it is the largest single matmul of a small model. Rows with more targets than this would
        lose the extra ones, so pass an upper bound (e.g. a power-of-two bucket of the longest answer).
    Returns:
      float32[batch].
    """
    target_mask = target_mask.astype(bool)
    if max_targets is None:
        per_token, _ = token_logprobs(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids,
                                      vocab_chunk=vocab_chunk)
        return jnp.sum(jnp.where(target_mask, per_token, 0.0), axis=-1)
    hidden, _ = hidden_states(params, cfg, tokens, attention_mask=attention_mask, segment_ids=segment_ids)
    positions = jax.vmap(lambda row: jnp.nonzero(row, size=max_targets, fill_value=0)[0])(target_mask)
    valid = jnp.arange(max_targets) < jnp.sum(target_mask, axis=-1, keepdims=True)
    # The token at position t is predicted by the hidden state at t - 1.
    predicting = jnp.take_along_axis(hidden, jnp.maximum(positions - 1, 0)[..., None], axis=1)
    targets = jnp.take_along_axis(tokens, positions, axis=1)
    scores, _ = logprobs_from_hidden(params, cfg, predicting, targets, vocab_chunk=vocab_chunk)
    return jnp.sum(jnp.where(valid, scores, 0.0), axis=-1)


def chain_logprobs(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
                   thoughts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                   direct_thought: Sequence[int] = (), pad_id: int = 0, batch_size: int = 64
                   ) -> tuple[np.ndarray, np.ndarray]:
    """log p(y | x, z) and log p(y | x) for n (question, chain, answer) triples of token ids.

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
    # Triples with the same prompt share it: it runs once, followed by each distinct continuation (the
    # direct one, the same for every chain of a question, once).
    groups: dict[tuple[int, ...], dict[tuple[tuple[int, ...], int], int]] = {}

    def slot(prompt, middle, answer) -> int:
        continuations = groups.setdefault(tuple(prompt), {})
        return continuations.setdefault((tuple(middle) + tuple(answer), len(middle)), len(continuations))

    slots = [(tuple(prompts[i]), slot(prompts[i], thoughts[i], answers[i]), slot(prompts[i], direct_thought, answers[i]))
             for i in range(n)]
    scored = score_continuations(
        params, cfg, [(prompt, [(list(tokens), [False] * context + [True] * (len(tokens) - context))
                                for tokens, context in continuations]) for prompt, continuations in groups.items()],
        pad_id=pad_id, batch_size=batch_size)
    scores = dict(zip(groups, scored))
    with_chain = np.array([scores[prompt][chain] for prompt, chain, _ in slots], np.float32)
    direct = np.array([scores[prompt][alone] for prompt, _, alone in slots], np.float32)
    return with_chain, direct


@functools.partial(jax.jit, static_argnums=1, static_argnames=("max_targets", "vocab_chunk"))
def shared_prefix_logprobs(params: Params, cfg: ModelConfig, prefix: jax.Array, prefix_mask: jax.Array,
                           tokens: jax.Array, token_mask: jax.Array, target_mask: jax.Array, *, max_targets: int,
                           vocab_chunk: int = VOCAB_CHUNK) -> jax.Array:
    """sum_t log p(tokens[t] | prefix, tokens[:t]) over each continuation's targets, every prefix run
    once for all of its continuations (compiled; `metajax.models.continuation_hidden`).

    Args:
      prefix: int32[B, P], left-padded; prefix_mask: bool[B, P].
      tokens: int32[B, C, L], C continuations of each prefix, right-padded; token_mask: bool[B, C, L].
      target_mask: bool[B, C, L], the scored positions (a continuation's first token may be one: the
        prefix's last state predicts it).
      max_targets: static bound on the targets of any continuation (as in `sequence_logprobs`).
    Returns:
      float32[B, C].
    """
    b, c, l = tokens.shape
    last, hidden = continuation_hidden(params, cfg, prefix, prefix_mask, tokens, token_mask)
    # Token t of a continuation is predicted by its state t - 1; token 0 by the prefix's last state.
    first = jnp.broadcast_to(last[:, None, None], (b, c, 1, last.shape[-1]))
    predicting = jnp.concatenate([first, hidden[:, :, :-1]], axis=2).reshape(b * c, l, -1)
    target_mask = target_mask.astype(bool).reshape(b * c, l)
    positions = jax.vmap(lambda row: jnp.nonzero(row, size=max_targets, fill_value=0)[0])(target_mask)
    valid = jnp.arange(max_targets) < jnp.sum(target_mask, axis=-1, keepdims=True)
    targets = jnp.take_along_axis(tokens.reshape(b * c, l), positions, axis=1)
    scores, _ = logprobs_from_hidden(params, cfg, jnp.take_along_axis(predicting, positions[..., None], axis=1),
                                     targets, vocab_chunk=vocab_chunk)
    return jnp.sum(jnp.where(valid, scores, 0.0), axis=-1).reshape(b, c)


def score_continuations(params: Params, cfg: ModelConfig,
                        groups: Sequence[tuple[Sequence[int], Sequence[tuple[Sequence[int], Sequence[bool]]]]], *,
                        pad_id: int = 0, batch_size: int = 64) -> list[np.ndarray]:
    """`shared_prefix_logprobs` of ragged groups: (prefix tokens, [(continuation tokens, target mask),
    ...]) -> one float32[continuations] per group, the same sums `score_sequences` gives for each
    prefix + continuation, with the prefix computed once per group.

    A call takes as many groups as fit `batch_size` continuations; group, candidate and length
    counts pad to buckets, so repeated calls reuse a few compilations.
    """
    for g, (prefix, continuations) in enumerate(groups):
        if not prefix:
            raise ValueError(f"group {g}: the prefix is empty; it needs at least one token (a BOS, say)")
        for j, (tokens, mask) in enumerate(continuations):
            if len(tokens) != len(mask):
                raise ValueError(f"group {g}, continuation {j}: {len(tokens)} tokens but a target mask of {len(mask)}")
            if not any(mask):
                raise ValueError(f"group {g}, continuation {j} has no target token to score")
    if not groups:
        return []
    width = bucket(max(len(continuations) for _, continuations in groups), minimum=1)
    per_call = max(1, batch_size // width)
    out = []
    for start in range(0, len(groups), per_call):
        chunk = list(groups[start:start + per_call])
        rows = bucket(len(chunk), minimum=1)
        prefix, prefix_mask = pad_rows([p for p, _ in chunk] + [[pad_id]] * (rows - len(chunk)),
                                       length=length_bucket(max(len(p) for p, _ in chunk)), pad_id=pad_id, left=True)
        length = length_bucket(max(len(t) for _, continuations in chunk for t, _ in continuations))
        tokens = np.full((rows, width, length), pad_id, np.int32)
        token_mask = np.zeros((rows, width, length), bool)
        targets = np.zeros((rows, width, length), bool)
        for i, (_, continuations) in enumerate(chunk):
            for j, (t, m) in enumerate(continuations):
                tokens[i, j, :len(t)], token_mask[i, j, :len(t)], targets[i, j, :len(m)] = t, True, m
        result = to_host(shared_prefix_logprobs(
            params, cfg, prefix, prefix_mask, tokens, token_mask, targets,
            max_targets=bucket(int(targets.sum(axis=-1).max()), minimum=8)))
        out += [result[i, :len(continuations)] for i, (_, continuations) in enumerate(chunk)]
    return out


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
        result = sequence_logprobs(params, cfg, tokens, targets.astype(bool), attention_mask=attention,
                                   max_targets=max_targets)
        scores[start:start + len(chunk)] = to_host(result)[:len(chunk)]
    return scores
