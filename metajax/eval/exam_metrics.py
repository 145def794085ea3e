"""ROI-Reasoning's figures over a set of read exams, each with a 95% bootstrap interval over exams.

Per question (`metajax.envs.answers.ExamOutcome`), then averaged over all questions of all exams:
- `score`: ROI's r_i (correct within the budget, not skipped, predicted level == actual level); the
  mean of r_i is the exam reward R = sum_i r_i divided by N, so it lies in [0, 1];
- `accuracy`: correct, however long the generation ran (levels and budget ignored);
- `budget_accuracy`: correct with the answer inside the budget, whatever the levels;
- `skip_rate`: skipped questions;
- `level_accuracy`: predicted level == actual level, over the questions answered and not skipped;
- `mean_tokens`: tokens spent per exam (at most the budget);
- `regret`: `(mean Score_easy - mean Score) / mean Score_easy` against the same exams reordered easy
  to hard, defined unless every easy-first exam scores 0;
- `oracle_gap`: the oracle's expected score minus `score` (same units).
Intervals resample exams with replacement (paired with their easy-first twins for regret) and take
the 2.5 and 97.5 percentiles of each figure's ratio of sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metajax.envs.answers import ExamOutcome

FIGURES: tuple[str, ...] = ("score", "accuracy", "budget_accuracy", "regret", "oracle_gap",
                            "level_accuracy", "skip_rate", "mean_tokens")


def exam_summary(outcomes: Sequence[ExamOutcome], *, easy_first: Sequence[ExamOutcome] | None = None,
                 oracle: float | None = None, num_levels: int, n_boot: int = 1000,
                 seed: int = 0) -> dict:
    """Every figure of `FIGURES` with its interval under `"ci"`, tokens by position and the level
    confusion matrix.

    Args:
      outcomes: one per exam.
      easy_first: the same exams reordered easy to hard, in the same order (for regret); None
        leaves regret out (NaN).
      oracle: the oracle's expected per-question score on these exams; None leaves the gap NaN.
      num_levels: levels including the skip level (`len(level_bounds) + 1`), the confusion size.

    Returns:
      {figure: float, "ci": {figure: [low, high]}, "n_exams", "tokens_by_position": [P1..PN],
       "level_confusion": int[num_levels + 1][num_levels] (rows: predicted level, the last row
       "no tag"; columns: actual level)}.
    """
    if not outcomes:
        raise ValueError("exam_summary: no exams to summarise")
    if easy_first is not None and [o.exam_id for o in easy_first] != [o.exam_id for o in outcomes]:
        raise ValueError("exam_summary: easy_first must hold the same exams in the same order")
    sums = _per_exam_sums(outcomes)
    easy = None if easy_first is None else _per_exam_sums(easy_first)["score"]

    def figures(rows: np.ndarray) -> dict[str, float]:
        ratio = {name: _ratio(num[rows].sum(-1), den[rows].sum(-1)) for name, (num, den) in sums.items()}
        if easy is not None:
            mean_easy = _ratio(easy[0][rows].sum(-1), easy[1][rows].sum(-1))
            ratio["regret"] = _ratio(mean_easy - ratio["score"], mean_easy)
        else:
            ratio["regret"] = np.full_like(ratio["score"], np.nan)
        ratio["oracle_gap"] = (np.nan if oracle is None else oracle) - ratio["score"]
        return ratio

    n = len(outcomes)
    point = figures(np.arange(n)[None])
    draws = figures(np.random.default_rng(seed).integers(0, n, size=(n_boot, n)))
    summary = {name: float(point[name][0]) for name in FIGURES}
    summary["ci"] = {name: _interval(draws[name]) for name in FIGURES}
    summary["n_exams"] = n
    summary["tokens_by_position"] = np.mean(
        [o.position_tokens for o in outcomes], axis=0).round(2).tolist()
    summary["level_confusion"] = _confusion(outcomes, num_levels).tolist()
    return summary


def _per_exam_sums(outcomes: Sequence[ExamOutcome]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(numerator, denominator) per exam of each ratio figure, float[E] each."""
    def stack(f):
        return np.array([f(o) for o in outcomes], np.float64)

    questions = stack(lambda o: len(o.score))
    solved = lambda o: (o.predicted_level >= 0) & ~o.skipped  # noqa: E731
    return {
        "score": (stack(lambda o: o.score.sum()), questions),
        "accuracy": (stack(lambda o: o.correct.sum()), questions),
        "budget_accuracy": (stack(lambda o: o.budget_correct.sum()), questions),
        "skip_rate": (stack(lambda o: o.skipped.sum()), questions),
        "level_accuracy": (stack(lambda o: (solved(o) & (o.predicted_level == o.actual_level)).sum()),
                           stack(lambda o: solved(o).sum())),
        "mean_tokens": (stack(lambda o: o.tokens), np.ones(len(outcomes))),
    }


def _ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _interval(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return [float("nan"), float("nan")]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]


def _confusion(outcomes: Sequence[ExamOutcome], num_levels: int) -> np.ndarray:
    matrix = np.zeros((num_levels + 1, num_levels), np.int64)
    for o in outcomes:
        for predicted, actual in zip(o.predicted_level, o.actual_level):
            row = predicted if 0 <= predicted < num_levels else num_levels
            matrix[row, min(int(actual), num_levels - 1)] += 1
    return matrix
