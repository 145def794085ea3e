"""ROI-Reasoning's exam reward: right answers count only when the model foresaw their cost.

Before solving a question the model predicts a level (`<predicted_level>Level-k</predicted_level>`);
a question scores 1 when its answer is correct *and* the predicted level equals the level of the
tokens actually spent; a skip (Level-3, `\\boxed{NA}`) scores 0 (PAPERS.md section 2).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from metajax.data.formats import ROI_LEVEL_BOUNDS


def exam_reward(correct, predicted_level, actual_level, skipped):
    """Per-question score `1[correct and predicted_level == actual_level]`, 0 for a skip.

    Args:
      correct: bool[...] whether each answer is right.
      predicted_level: int32[...] the level the model announced.
      actual_level: int32[...] the level of the tokens it spent (`level_of_tokens`).
      skipped: bool[...] whether the model skipped the question.

    Returns:
      float32[...], the broadcast shape of the inputs.
    """
    hit = (jnp.asarray(correct, bool) & ~jnp.asarray(skipped, bool)
           & (jnp.asarray(predicted_level) == jnp.asarray(actual_level)))
    return hit.astype(jnp.float32)


def exam_score(correct, predicted_level, actual_level, skipped):
    """ROI's exam reward `R = sum_i r_i` over the questions of each exam.

    Arguments as `exam_reward`, with questions on the last axis: `[..., questions]`.

    Returns:
      float32[...]: one score per exam, at most the number of questions.
    """
    return jnp.sum(exam_reward(correct, predicted_level, actual_level, skipped), axis=-1)


def level_of_tokens(num_tokens, thresholds: Sequence[int] = ROI_LEVEL_BOUNDS):
    """The level whose token range holds each count; upper bounds are inclusive.

    With ROI's thresholds (256, 512, 1024): `n <= 256` is Level-0, `256 < n <= 512` Level-1,
    `512 < n <= 1024` Level-2. A count above the last threshold gets `len(thresholds)` (3 here,
    the number ROI gives to skipping): it overran every solving level, so no solving prediction
    matches it, and `exam_reward` scores a skip 0 whatever its level.

    Args:
      num_tokens: int32[...] tokens spent per question.
      thresholds: strictly increasing positive ints, static (the toy world scales them down).

    Returns:
      int32[...] levels in `0..len(thresholds)`.
    """
    thresholds = tuple(thresholds)
    if not thresholds or any(t <= 0 for t in thresholds) or any(
            a >= b for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError(f"thresholds must be strictly increasing positive ints, got {thresholds}")
    num_tokens = jnp.asarray(num_tokens)
    return jnp.sum(num_tokens[..., None] > jnp.asarray(thresholds), axis=-1).astype(jnp.int32)


def regret(score, score_easy):
    """ROI's regret `(score_easy - score) / score_easy` of an ordering against easy-to-hard.

    Args:
      score: float32[...] the exam score in the order given.
      score_easy: float32[...] the score on the same exam reordered easy to hard.

    Returns:
      float32[...]; NaN where `score_easy <= 0`, for there is nothing to regret against (use
      `jnp.nanmean` to average, or pass scores already averaged over exams).
    """
    score = jnp.asarray(score, jnp.float32)
    score_easy = jnp.asarray(score_easy, jnp.float32)
    defined = score_easy > 0
    return jnp.where(defined, (score_easy - score) / jnp.where(defined, score_easy, 1.0), jnp.nan)
