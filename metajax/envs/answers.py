"""Reading one exam completion: each question's level, skip, answer and tokens, from sampled tokens.

The completion is the token ids the sampler drew. Its decoding is split into one segment per
question at the level tags (`ExamFormat.level_pattern`): the j-th tag opens the j-th question's
segment, which runs to the next tag or the end. Text before the first tag belongs to no question;
tags past the N-th open no question, but still end the segment before them (a model that invents
a next question has stopped answering this one). A question without a segment was not answered.

Counting rules (every count is in sampled tokens, never in re-tokenised text):
- The budget counts every generated token: tags, solutions, separators, text between answers and
  the stop token. Generation is causal, so the first B tokens of a longer generation are exactly
  what a hard cut at B would have produced: one generation serves the uncut accuracy and every
  budgeted figure.
- A question's solution runs from the end of its level tag to the end of its answer: the closing
  brace of the segment's last `\\boxed{}`, else the end of the answer line after `[Assistant]`,
  else the segment's last non-space character. Its length in tokens gives the actual level
  (`level_of_tokens`), the one the prediction must match.
- A question counts as answered within the budget when its answer ends at token B or before.

Nothing raises on model output: garbage, a missing tag, a truncated answer or two answers in one
segment all get a defined outcome (the grader's own rule picks the answer that counts: the first
line after `[Assistant]`, or the last `\\boxed{}`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from metajax.data.formats import ANSWER_MARKER, SKIP_PATTERN, ExamFormat
from metajax.data.graders import final_answer_span, grade_example, is_skip
from metajax.envs.exam import Exam
from metajax.rewards.exam import exam_reward, level_of_tokens

_BOX = "\\boxed{"


@dataclasses.dataclass(frozen=True)
class ExamOutcome:
    """One exam, read.

    Attributes:
      exam_id: the `Exam.id`.
      tiers: int[N], each question's difficulty tier.
      predicted_level: int32[N], the level each tag announced; -1 without a segment.
      skipped: bool[N], the question was skipped (the skip level, or an NA answer).
      correct: bool[N], its answer is right, however long the generation ran.
      budget_correct: bool[N], correct with its answer ending within the budget (budget accuracy,
        whatever the levels).
      solution_tokens: int32[N], tokens from the end of the level tag to the end of the answer.
      actual_level: int32[N], `level_of_tokens(solution_tokens)`.
      position_tokens: int32[N], tokens of each question's segment inside the budget (tag included).
      solution_start: int32[N], index in the completion of each solution's first token (right
        after its tag); 0 without a segment.
      segment_end: int32[N], index one past each segment's last token (the last segment keeps the
        stop token); 0 without a segment.
      score: float32[N], ROI's r_i on the budgeted generation: correct within the budget, not
        skipped, and the predicted level equal to the actual one.
      tokens: generated tokens counted against the budget (at most the budget).
      truncated: the generation reached the budget before its stop token.
      ids: the completion's tokens as generated (the trainer's targets are slices of them).
    """

    exam_id: str
    tiers: np.ndarray
    predicted_level: np.ndarray
    skipped: np.ndarray
    correct: np.ndarray
    budget_correct: np.ndarray
    solution_tokens: np.ndarray
    actual_level: np.ndarray
    position_tokens: np.ndarray
    solution_start: np.ndarray
    segment_end: np.ndarray
    score: np.ndarray
    tokens: int
    truncated: bool
    ids: tuple[int, ...]


def read_exam(exam: Exam, ids: Sequence[int], decode: Callable[[Sequence[int]], str], fmt: ExamFormat,
              *, budget: int, level_bounds: Sequence[int], stopped: bool = True) -> ExamOutcome:
    """Reads the completion `ids` of `exam` under a budget of `budget` tokens.

    Args:
      ids: int[T], the generated tokens (the stop token last, if one was drawn); T may exceed the
        budget when the exam was generated uncut.
      decode: token ids -> text (`Policy.decode`); prefixes of `ids` must decode to prefixes of the
        whole text, as they do for byte-level BPE and character tokenizers.
      fmt: the exam's text format.
      level_bounds: the level upper bounds in tokens (`ExamFormat` levels: Level-k up to
        `level_bounds[k]`, Level-`len(level_bounds)` = skip).
      stopped: whether `ids` ends with a stop token (the generation finished by itself).
    """
    if budget < 0:
        raise ValueError(f"read_exam: budget {budget} is below zero; give the exam's token budget")
    ids = list(ids)
    text = decode(ids)
    cut = _TokenCut(ids, decode)
    n = len(exam.questions)
    every_tag = list(fmt.level_pattern.finditer(text))
    tags = every_tag[:n]
    predicted = np.full(n, -1, np.int32)
    skipped, correct, within = (np.zeros(n, bool) for _ in range(3))
    solution, position, starts, ends = (np.zeros(n, np.int32) for _ in range(4))
    skip_level = len(level_bounds)
    for j, tag in enumerate(tags):
        end = every_tag[j + 1].start() if j + 1 < len(every_tag) else len(text)
        body = text[tag.end():end]
        answer_end = tag.end() + _answer_end(body)
        first, tag_end, last = cut(tag.start()), cut(tag.end()), cut(answer_end)
        predicted[j] = int(tag.group(1))
        skipped[j] = predicted[j] == skip_level or _reads_skip(body)
        correct[j] = not skipped[j] and grade_example(body, exam.questions[j])
        within[j] = last <= budget
        solution[j] = last - tag_end
        # The last segment keeps whatever follows its answer, the stop token included.
        end_token = cut(end) if j + 1 < len(every_tag) else len(ids)
        position[j] = min(end_token, budget) - min(first, budget)
        starts[j], ends[j] = tag_end, end_token
    actual = np.asarray(level_of_tokens(solution, tuple(level_bounds)))
    budget_correct = correct & within
    score = np.asarray(exam_reward(budget_correct, predicted, actual, skipped))
    return ExamOutcome(
        exam_id=exam.id, tiers=np.asarray(exam.tiers, np.int32), predicted_level=predicted,
        skipped=skipped, correct=correct, budget_correct=budget_correct,
        solution_tokens=solution, actual_level=actual, position_tokens=position, solution_start=starts,
        segment_end=ends, score=score,
        tokens=min(len(ids), budget), truncated=len(ids) > budget or (len(ids) == budget and not stopped),
        ids=tuple(ids))


class _TokenCut:
    """Maps a character position of `decode(ids)` to the number of tokens needed to reach it: the
    smallest k with `len(decode(ids[:k])) >= position`, by binary search over prefix decodes."""

    def __init__(self, ids: list[int], decode: Callable[[Sequence[int]], str]):
        self._ids, self._decode, self._lengths = ids, decode, {0: 0}

    def _length(self, k: int) -> int:
        if k not in self._lengths:
            self._lengths[k] = len(self._decode(self._ids[:k]))
        return self._lengths[k]

    def __call__(self, position: int) -> int:
        lo, hi = 0, len(self._ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._length(mid) >= position:
                hi = mid
            else:
                lo = mid + 1
        return lo


def _answer_end(body: str) -> int:
    """Where the answer of a segment body ends (see the module docstring)."""
    box = body.rfind(_BOX)
    if box >= 0:
        depth = 0
        for i in range(box + len(_BOX) - 1, len(body)):
            depth += {"{": 1, "}": -1}.get(body[i], 0)
            if depth == 0:
                return i + 1
    marker = body.find(ANSWER_MARKER)
    if marker >= 0:
        line_end = body.find("\n", marker)
        return len(body[:line_end].rstrip()) if line_end >= 0 else len(body.rstrip())
    return len(body.rstrip())


def _reads_skip(body: str) -> bool:
    span = final_answer_span(body)
    return is_skip(body) or (span is not None and SKIP_PATTERN.fullmatch(span) is not None)
