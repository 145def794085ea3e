"""Rationality-aware RL (ROI-Reasoning's second stage, PAPERS.md section 2): Dr. GRPO over whole
exams.

Each prompt is one exam sheet under its hard budget; its G rollouts are cut at the budget by the
sampler, and each rollout's reward is the exam reward R = sum_i r_i, read token-exactly from the
sampled tokens (`metajax.envs.answers`). The loop is `metajax.algorithms.grpo.run_grpo`; this module
supplies the task (`ExamTask`), whose step metrics add the score, skip rate and level accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metajax.algorithms.grpo import ScoredRollouts
from metajax.envs.exam import Exam
from metajax.envs.sitting import ExamRules, exam_prompts, read_rollouts
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import Rollouts


class ExamTask:
    """GRPO's task over budgeted exams: `(exam, budget)` pairs, each prompt stating its budget."""

    opening: list[int] = []
    answer_line_stop = False

    def __init__(self, base: Policy, rules: ExamRules, exams: Sequence[tuple[Exam, int]]):
        if not exams:
            raise ValueError("RARL needs training exams; none were drawn")
        self._rules = rules
        self._exams = [exam for exam, _ in exams]
        self._budgets = [int(budget) for _, budget in exams]
        self._prompts = exam_prompts(base, rules, self._exams, self._budgets)

    def __len__(self) -> int:
        return len(self._exams)

    def prompt(self, index: int) -> list[int]:
        return self._prompts[index]

    def budget(self, index: int) -> int:
        return self._budgets[index]

    def score(self, policy: Policy, indices: Sequence[int], rows: Rollouts) -> ScoredRollouts:
        outcomes = read_rollouts(policy, self._rules, [self._exams[i] for i in indices],
                                 [self._budgets[i] for i in indices], rows)
        reward = np.array([o.score.sum() for o in outcomes], np.float32)
        solved = [(o.predicted_level >= 0) & ~o.skipped for o in outcomes]
        hits = sum(int((s & (o.predicted_level == o.actual_level)).sum()) for s, o in zip(solved, outcomes))
        metrics = {"score": float(np.mean([o.score.mean() for o in outcomes])),
                   "skip_rate": float(np.mean([o.skipped.mean() for o in outcomes])),
                   "level_accuracy": hits / max(1, sum(int(s.sum()) for s in solved)),
                   "truncated": float(np.mean([o.truncated for o in outcomes]))}
        return ScoredRollouts(reward, {"exam_score": reward}, np.array([o.budget_correct.mean() for o in outcomes]),
                              np.array([o.tokens for o in outcomes]), metrics)
