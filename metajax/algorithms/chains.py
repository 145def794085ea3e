"""RaM chains on the token path: the sampled thought's tokens, and their VOC reward.

A sampled completion opens with a thought block `"<thought> ... </thought>\\n"` or answers directly.
`sampled_thought` finds the block's tokens in the sampled ids themselves (never by encoding its
text again), and `score_chains` scores exactly those tokens: `log p(y | x, z)` over the prompt, the
sampled thought and the gold answer block, against `log p(y | x)` over the prompt and the answer
block alone, with the policy as its own reward model (PAPERS.md section 1). What expert iteration
trains on (`training_row`) is the same token sequence, so what was scored is what is learned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from metajax.data.example import Example
from metajax.data.formats import THOUGHT_CLOSE, THOUGHT_OPEN
from metajax.data.token_spans import encode_ram
from metajax.models.logprobs import score_continuations
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import tokens_within

THOUGHT_END = THOUGHT_CLOSE + "\n"  # a thought block ends with its line


def sampled_thought(policy: Policy, ids: Sequence[int]) -> tuple[int, ...] | None:
    """The tokens of the thought block a RaM completion opens with.

    Returns () when the completion answers directly (it does not open with "<thought>"), the
    block's tokens through "</thought>\\n" when it closes on a token boundary, and None when a
    block opens but never closes (the budget ran out mid-thought) or closes inside a token: such a
    chain has no tokens an answer could follow.
    """
    text = policy.decode(ids)
    if not text.startswith(THOUGHT_OPEN):
        return ()
    end = text.find(THOUGHT_END)
    if end < 0:
        return None
    end += len(THOUGHT_END)
    cut = tokens_within(policy, ids, end)
    return tuple(ids[:cut]) if policy.decode(ids[:cut]) == text[:end] else None


@dataclasses.dataclass(frozen=True)
class AnswerPieces:
    """A question's prompt x and gold answer block y in tokens: `prompt + answer` is the whole
    direct sequence; `target_start` is where the scored answer begins within `answer` (after the
    "[Assistant]" marker)."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    target_start: int


def answer_pieces(policy: Policy, question: Example, fewshot: Sequence[Example] = ()) -> AnswerPieces:
    """x and y of `question` (after the `fewshot` blocks), span-exact (`metajax.data.token_spans.encode_ram`)."""
    enc = encode_ram(policy.tokenizer, question, None, question.answer, fewshot=fewshot, cfg=policy.prompt)
    (start, end), (target, _) = enc.answer_span, enc.target_span
    return AnswerPieces(tuple(enc.tokens[:enc.prompt_len]), tuple(enc.tokens[start:end]), target - start)


@dataclasses.dataclass(frozen=True)
class ChainScores:
    """The VOC terms of n chains: log p(y | x, z) and log p(y | x) float32[n], and l(z) int32[n].

    `voc_reward(logp_with_chain, logp_direct, chain_tokens, ...)` (`metajax.rewards`) is RaM's
    reward; for a direct answer all three are 0, so its reward is exactly 0.
    """

    logp_with_chain: np.ndarray
    logp_direct: np.ndarray
    chain_tokens: np.ndarray


def score_chains(policy: Policy, questions: Sequence[Example], chains: Sequence[tuple[int, tuple[int, ...] | None, int]],
                 *, fewshot: Sequence[Example] = (), batch_size: int = 64) -> ChainScores:
    """Scores the gold answer after each sampled chain and after none, with the policy's own forward pass.

    Args:
      chains: (question index, `sampled_thought` of the completion, completion length) triples. An
        empty thought (a direct answer) scores nothing; an unparseable one (None) gets
        p(y | x, z) = 0 (no answer can follow it) and l(z) = all of its tokens.
      fewshot: the blocks x starts with (the rollout prompt's shots).
    """
    pieces = {i: answer_pieces(policy, questions[i], fewshot) for i in sorted({c[0] for c in chains})}
    # One group per question that has a thought: its prompt x runs once, then the direct answer (slot 0)
    # and each of its sampled chains after it.
    groups = {i: [_continuation((), pieces[i])] for i in sorted({i for i, thought, _ in chains if thought != ()})}
    slots = {}
    for n, (i, thought, _) in enumerate(chains):
        if thought:
            slots[n] = len(groups[i])
            groups[i].append(_continuation(thought, pieces[i]))
    scored = dict(zip(groups, score_continuations(policy.params, policy.cfg,
                                                  [(pieces[i].prompt, continuations) for i, continuations in groups.items()],
                                                  pad_id=policy.pad_id, batch_size=batch_size)))
    with_chain = np.zeros(len(chains), np.float32)
    direct = np.zeros(len(chains), np.float32)
    lengths = np.zeros(len(chains), np.int32)
    for n, (i, thought, length) in enumerate(chains):
        if thought == ():
            continue
        direct[n] = scored[i][0]
        if thought is None:
            with_chain[n], lengths[n] = -np.inf, length
        else:
            with_chain[n], lengths[n] = scored[i][slots[n]], len(thought)
    return ChainScores(logp_with_chain=with_chain, logp_direct=direct, chain_tokens=lengths)


def training_row(policy: Policy, question: Example, thought: tuple[int, ...]) -> tuple[list[int], list[bool]]:
    """(tokens, loss_mask) of x + z + y + EOS, zero-shot: the prompt, the sampled thought tokens (none
    for a direct answer), the gold answer block; the loss on everything after the prompt. In chat the
    answer block already ends with the template's end of turn, which is the stop token there."""
    pieces = answer_pieces(policy, question)
    ending = [] if policy.prompt.chat else list(policy.stop_ids[:1])
    completion = list(thought) + list(pieces.answer) + ending
    return list(pieces.prompt) + completion, [False] * len(pieces.prompt) + [True] * len(completion)


def _continuation(thought: tuple[int, ...], pieces: AnswerPieces) -> tuple[list[int], list[bool]]:
    """(tokens, target mask) of the thought and the answer block after the prompt: the answer's scored
    span is the target."""
    context = len(thought) + pieces.target_start
    return list(thought) + list(pieces.answer), [False] * context + [True] * (len(pieces.answer) - pieces.target_start)
