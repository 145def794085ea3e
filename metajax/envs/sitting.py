"""Sitting budgeted exams: the prompt, the generation under the budget, and its reading.

`sit` gives each exam one free generation: the model plans the whole sheet itself (the `mft`,
`mft_rarl` and `base` methods, and RARL's rollouts). `sit_planned` imposes an action on every
question (a forced level tag and the start of a direct or worked answer, or a whole skip answer)
and lets the model write the rest, one question at a time: the `cot_all`, `direct_all` and
`mft_knapsack` baselines, and the oracle's cost estimates. Both count every generated and forced
token against the budget and read the exams with `metajax.envs.answers.read_exam`. Where the
format's tag restates its question and budget (the toy's `"Q1+2+3=? 150 <L1>"`), a forced tag
writes the restatements too: the planned methods are not asked to copy their questions, while `sit` policies
copy them themselves (the exam records show how well).

Generation runs to `cap` tokens (at least the budget): the first `budget` tokens are exactly what a
hard cut would have produced, and the rest give the uncut accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import jax

from metajax.data.formats import ExamFormat
from metajax.data.prompts import question_block
from metajax.envs.answers import ExamOutcome, _TokenCut, read_exam
from metajax.envs.exam import Exam
from metajax.host import to_host
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import Rollouts, rollout
from metajax.sampling.sampler import StopReason


@dataclasses.dataclass(frozen=True)
class ExamRules:
    """The static rules of an exam world: its text format and its level bounds (Level-k covers up
    to `level_bounds[k]` solution tokens; Level-`len(level_bounds)` is the skip)."""

    format: ExamFormat
    level_bounds: tuple[int, ...]

    @property
    def skip_level(self) -> int:
        return len(self.level_bounds)

    @property
    def num_levels(self) -> int:
        """Levels with the skip."""
        return len(self.level_bounds) + 1


@dataclasses.dataclass(frozen=True)
class Action:
    """What `sit_planned` imposes on one question: a forced `level` tag, then the start of a
    direct answer (`start="direct"`), of a worked one ("think"), or nothing more ("free": the model
    answers as it likes); at the skip level, the whole skip answer."""

    level: int
    start: Literal["free", "direct", "think"] = "free"

    def opening(self, rules: ExamRules, position: int, question: str, budget: int) -> tuple[str, bool]:
        """(forced text after the answer separator, whether the model writes the rest) for the
        question at `position` (1-based), whose text is `question`, in an exam of `budget` tokens."""
        fmt = rules.format
        if self.level == rules.skip_level:
            return fmt.answer(self.level, None, rules.skip_level, position, question, budget), False
        start = {"free": "", "direct": fmt.direct_opening, "think": fmt.think_opening}[self.start]
        return fmt.tag(self.level, position, question, budget) + start, True


def exam_prompts(policy: Policy, rules: ExamRules, exams: Sequence[Exam], budgets: Sequence[int], *,
                 trigger: str | None = None) -> list[list[int]]:
    """The prompt ids of each exam, stating its budget (and a prompting method's `trigger`)."""
    return [policy.exam_prompt_ids(exam.questions, style=rules.format.prompt_style, budget=budget,
                                   level_bounds=rules.level_bounds, trigger=trigger)
            for exam, budget in zip(exams, budgets)]


def sit(policy: Policy, rules: ExamRules, exams: Sequence[Exam], budgets: Sequence[int], *,
        cap: Sequence[int] | None = None, n_samples: int = 1, temperature: float = 0.0, top_p: float = 1.0,
        rng: jax.Array | None = None, batch_size: int = 64, mesh=None, trigger: str | None = None) -> list[ExamOutcome]:
    """One free generation per exam and sample (`n_samples` consecutive outcomes per exam).

    Args:
      budgets: each exam's token budget, stated in its prompt.
      cap: tokens each exam may generate (default: its budget, a hard cut).
      trigger: a prompting method's sentence in the instructions (roi format only).
    """
    cap = _caps(budgets, cap)
    prompts = exam_prompts(policy, rules, exams, budgets, trigger=trigger)
    outcomes = []
    for number, start in enumerate(range(0, len(exams), batch_size)):
        part = slice(start, start + batch_size)
        key = None if rng is None else jax.random.fold_in(rng, number)
        rows = rollout(policy, prompts[part], max_new_tokens=max(cap[part]), budgets=cap[part], n_samples=n_samples,
                       temperature=temperature, top_p=top_p, rng=key, mesh=mesh, answer_line_stop=False)
        outcomes += read_rollouts(policy, rules, exams[part], budgets[part], rows)
    return outcomes


def read_rollouts(policy: Policy, rules: ExamRules, exams: Sequence[Exam], budgets: Sequence[int],
                  rows: Rollouts) -> list[ExamOutcome]:
    """Each row of exam rollouts read (`rows.prompt_index` says which exam it sat)."""
    tokens, lengths, prompt_index, stop_reason = to_host(
        (rows.tokens, rows.lengths, rows.prompt_index, rows.stop_reason))
    start = rows.completion_start
    out = []
    for row, length, index, reason in zip(tokens, lengths, prompt_index, stop_reason):
        ids = row[start:start + length].tolist()
        out.append(read_exam(exams[index], ids, policy.decode, rules.format, budget=int(budgets[index]),
                             level_bounds=rules.level_bounds, stopped=int(reason) != StopReason.BUDGET
                             and int(reason) != StopReason.MAX_LENGTH))
    return out


def sit_planned(policy: Policy, rules: ExamRules, exams: Sequence[Exam], budgets: Sequence[int],
                plans: Sequence[Sequence[Action]], *, cap: Sequence[int] | None = None, batch_size: int = 64,
                temperature: float = 0.0, rng: jax.Array | None = None, mesh=None) -> list[ExamOutcome]:
    """Generations (greedy by default) that follow `plans[e][j]` on question j of exam e.

    Question by question, the forced text (the separator, the action's tag and opening) is appended
    and the model writes the rest of the answer until it starts the next tag, stops, or runs out of
    its cap; a skip is written whole, with no generation. Tokens the model wrote of the next tag
    are dropped (the next forced tag replaces them), so only tokens kept in the answers count.
    """
    cap = _caps(budgets, cap)
    fmt = rules.format
    prompts = exam_prompts(policy, rules, exams, budgets)
    sheets: list[list[int]] = [[] for _ in exams]
    for j in range(max(len(exam.questions) for exam in exams)):
        waiting = []
        for e, exam in enumerate(exams):
            if j >= len(exam.questions) or len(sheets[e]) >= cap[e]:
                continue
            text, generate = plans[e][j].opening(rules, j + 1, question_block(exam.questions[j]), budgets[e])
            sheets[e] += policy.encode((fmt.separator if j else "") + text)
            if generate and len(sheets[e]) < cap[e]:
                waiting.append(e)
        limit = policy.cfg.max_position_embeddings
        for number, group in enumerate(_fitting_groups(waiting, [len(prompts[e]) + len(sheets[e]) for e in waiting],
                                                       [cap[e] - len(sheets[e]) for e in waiting], limit, batch_size)):
            room = [cap[e] - len(sheets[e]) for e in group]
            key = None if rng is None else jax.random.fold_in(jax.random.fold_in(rng, j), number)
            rows = rollout(policy, [prompts[e] + sheets[e] for e in group], max_new_tokens=max(room), budgets=room,
                           temperature=temperature, rng=key, answer_line_stop=False, stop_strings=fmt.tag_starts,
                           mesh=mesh)
            tokens, lengths, reasons = to_host((rows.tokens, rows.lengths, rows.stop_reason))
            for e, row, length, reason in zip(group, tokens, lengths, reasons):
                written = row[rows.completion_start:rows.completion_start + length].tolist()
                last = j == len(exams[e].questions) - 1
                sheets[e] += _answer_part(policy, written, int(reason), fmt.tag_starts, keep_stop=last)
    return [read_exam(exam, sheet, policy.decode, fmt, budget=budget, level_bounds=rules.level_bounds,
                      stopped=bool(sheet) and sheet[-1] in policy.stop_ids)
            for exam, sheet, budget in zip(exams, sheets, budgets)]


def _fitting_groups(items: list[int], lengths: list[int], rooms: list[int], limit: int, size: int) -> list[list[int]]:
    """`items` in batches of at most `size` whose longest prompt plus largest room fits `limit`
    positions (one compiled cache holds a batch), longest prompts first."""
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    groups, current, longest, most = [], [], 0, 0
    for i in order:
        if current and (len(current) == size or max(longest, lengths[i]) + max(most, rooms[i]) > limit):
            groups.append(current)
            current, longest, most = [], 0, 0
        current.append(items[i])
        longest, most = max(longest, lengths[i]), max(most, rooms[i])
    return groups + [current] if current else groups


def _answer_part(policy: Policy, written: list[int], reason: int, tag_starts: tuple[str, ...], *,
                 keep_stop: bool) -> list[int]:
    """The tokens of `written` that belong to the current answer."""
    if reason == StopReason.STOP_STRING:
        text = policy.decode(written)
        start = max(text.rfind(tag_start) for tag_start in tag_starts)
        keep = _TokenCut(written, policy.decode)(start)
        if len(policy.decode(written[:keep])) > start:  # a token straddles the tag's start: drop it
            keep -= 1
        return written[:keep]
    if reason == StopReason.STOP_TOKEN and not keep_stop:
        return written[:-1]  # the model ended the sheet early; the plan goes on
    return written


def _caps(budgets: Sequence[int], cap: Sequence[int] | None) -> list[int]:
    if any(b < 0 for b in budgets):
        raise ValueError(f"exam budgets must be >= 0, got {min(budgets)}; give each exam a non-negative token budget")
    cap = list(budgets) if cap is None else list(cap)
    if len(cap) != len(budgets) or any(c < b for c, b in zip(cap, budgets)):
        raise ValueError("exam caps must be given per exam and be at least the exam's budget")
    return cap


def predict_levels(policy: Policy, rules: ExamRules, questions: Sequence, budget: int, *, tag_tokens: int = 32,
                   batch_size: int = 256, mesh=None) -> list[int]:
    """The level `policy` announces for each question asked alone under `budget` (greedy; -1 where
    it writes no tag within `tag_tokens` tokens): the prediction MFT + Greedy Knapsack plans with."""
    exams = [Exam(f"level-{i}", (q,), (0,)) for i, q in enumerate(questions)]
    prompts = exam_prompts(policy, rules, exams, [budget] * len(exams))
    levels = []
    for start in range(0, len(prompts), batch_size):
        rows = rollout(policy, prompts[start:start + batch_size], max_new_tokens=tag_tokens, answer_line_stop=False,
                       mesh=mesh)
        tokens, lengths = to_host((rows.tokens, rows.lengths))
        for row, length in zip(tokens, lengths):
            text = policy.decode(row[rows.completion_start:rows.completion_start + length].tolist())
            match = rules.format.level_pattern.search(text)
            levels.append(-1 if match is None else int(match.group(1)))
    return levels
