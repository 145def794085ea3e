"""ROI-Reasoning's budgeted exam: N questions in a fixed order under one hard token budget.

An exam is an ordered stochastic multiple-choice knapsack (OS-MCKP, PAPERS.md section 2): for each
question in turn the model picks an action (a solving depth, announced as a level, or a skip)
knowing the tokens left but not what the action will cost; generation is cut when the budget is
spent. This module builds exams from difficulty tiers in the three orderings, solves the knapsack
exactly for a known cost model (`oracle_value`), and holds the greedy knapsack baseline.

Exams are drawn from tiers of questions (the paper: GSM8K easy, MATH medium, AIME hard; the toy
world: operand counts). Position j of an exam takes its question from tier `j % len(tiers)`, so the
default exam of three holds one question of each tier; the ordering then arranges them:

- `medium`: a seeded random order (mixed);
- `hard`: hardest tier first;
- `easy_first`: easiest tier first, the reordering that regret compares against.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from metajax.data.example import Example

ORDERINGS: tuple[str, ...] = ("medium", "hard", "easy_first")


@dataclasses.dataclass(frozen=True)
class Exam:
    """One exam sheet.

    Attributes:
      id: stable identifier (`"<prefix>-<index>"`), shared by every ordering of the same questions.
      questions: the questions in the order they are asked.
      tiers: int[N], the difficulty tier of each question (0 = easiest).
    """

    id: str
    questions: tuple[Example, ...]
    tiers: tuple[int, ...]

    def __post_init__(self):
        if not self.questions or len(self.questions) != len(self.tiers):
            raise ValueError(f"exam {self.id!r}: needs at least one question and one tier per "
                             f"question, got {len(self.questions)} questions and {len(self.tiers)} tiers")

    def easy_first(self) -> "Exam":
        """The same questions from the easiest tier to the hardest (stable within a tier)."""
        order = sorted(range(len(self.tiers)), key=lambda j: self.tiers[j])
        return Exam(self.id, tuple(self.questions[j] for j in order), tuple(self.tiers[j] for j in order))


def make_exams(tiers: Sequence[Sequence[Example]], n_exams: int, *, questions_per_exam: int = 3,
               ordering: str = "medium", seed: int = 0, prefix: str = "exam") -> list[Exam]:
    """Draws `n_exams` exams, deterministically for a given `seed`.

    Position j draws uniformly from tier `j % len(tiers)`, without repeating a question within an
    exam (questions may recur across exams: AIME 2025 has 30). The same seed draws the same
    questions in every ordering, and exam ids match across orderings. Build training and test exams from
    disjoint tiers and check them with `check_disjoint`.

    Args:
      tiers: questions per difficulty tier, easiest first.
      ordering: one of `ORDERINGS`.
    """
    if ordering not in ORDERINGS:
        raise ValueError(f"make_exams: ordering {ordering!r} is not one of {ORDERINGS}")
    if n_exams < 0 or questions_per_exam < 1:
        raise ValueError(f"make_exams: need n_exams >= 0 and questions_per_exam >= 1, got "
                         f"{n_exams} and {questions_per_exam}")
    if not tiers:
        raise ValueError("make_exams: no tiers given; pass one list of questions per difficulty tier")
    plan = [j % len(tiers) for j in range(questions_per_exam)]
    for tier in set(plan):
        needed = plan.count(tier)
        if len(tiers[tier]) < needed:
            raise ValueError(f"make_exams: tier {tier} has {len(tiers[tier])} question(s) but each exam "
                             f"takes {needed} from it; add questions or shorten the exam")
    # Separate streams for the questions and their order: one seed gives the same questions in
    # every ordering, so settings compare methods on the same sheets.
    picks_rng, order_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
    exams = []
    for e in range(n_exams):
        picks = {t: iter(picks_rng.choice(len(tiers[t]), size=plan.count(t), replace=False).tolist())
                 for t in sorted(set(plan))}
        chosen = [(t, tiers[t][next(picks[t])]) for t in plan]
        mixed = [chosen[j] for j in order_rng.permutation(len(chosen)).tolist()]
        if ordering != "medium":  # the mixed order breaks ties within a tier
            mixed.sort(key=lambda pair: pair[0], reverse=ordering == "hard")
        exams.append(Exam(f"{prefix}-{e}", tuple(q for _, q in mixed), tuple(t for t, _ in mixed)))
    return exams


def check_disjoint(train: Sequence[Exam], test: Sequence[Exam]) -> None:
    """Raises ValueError if a question (by dataset and text) appears in both exam sets."""
    key = lambda ex: (ex.dataset, ex.question, ex.choices)  # noqa: E731
    seen = {key(q) for exam in train for q in exam.questions}
    shared = sorted({q.id for exam in test for q in exam.questions if key(q) in seen})
    if shared:
        raise ValueError(f"{len(shared)} test question(s) also appear in training exams (e.g. "
                         f"{shared[:3]}); draw training and test exams from disjoint splits")


def oracle_value(success, cost_pmf, budget: int) -> tuple[float, np.ndarray]:
    """The optimal expected exam score for a known cost model, by dynamic programming.

    Questions come in order. With b tokens left the policy picks an action knowing b but not its
    cost; the cost c is then drawn from `cost_pmf[i, a]`. If c <= b the question scores
    `success[i, a]` in expectation and b becomes b - c; if c > b generation is cut, the question
    scores 0 and nothing is left for the rest. With V_N = 0,

        V_i(b) = max_a  sum_{c <= b} cost_pmf[i, a, c] * (success[i, a] + V_{i+1}(b - c)).

    Args:
      success: float[N, A], the probability that action a on question i scores when it finishes.
      cost_pmf: float[N, A, C], the probability that it spends c = 0..C-1 tokens (each row sums
        to 1).
      budget: the tokens of the whole exam, >= 0.

    Returns:
      (value, policy): V_0(budget), and `policy` int[N, budget + 1], the optimal action for each
      question and tokens left (ties go to the lowest action index).
    """
    success, cost_pmf = _check_cost_model(success, cost_pmf, budget)
    n, actions, _ = cost_pmf.shape
    value_next = np.zeros(budget + 1)
    policy = np.zeros((n, budget + 1), np.int32)
    for i in reversed(range(n)):
        q = np.empty((actions, budget + 1))
        for a in range(actions):
            pmf = cost_pmf[i, a, :budget + 1]
            fits = np.cumsum(np.pad(pmf, (0, budget + 1 - len(pmf))))  # P(c <= b)
            q[a] = success[i, a] * fits + np.convolve(pmf, value_next)[:budget + 1]
        policy[i] = np.argmax(q, axis=0)
        value_next = q[policy[i], np.arange(budget + 1)]
    return float(value_next[budget]), policy


def policy_value(success, cost_pmf, budget: int, policy) -> float:
    """The exact expected score of a deterministic `policy` int[N, budget + 1] (`oracle_value`'s
    rules), by enumerating every sequence of costs: exponential in N, for checking small cases."""
    success, cost_pmf = _check_cost_model(success, cost_pmf, budget)
    n, _, num_costs = cost_pmf.shape
    total = 0.0
    for costs in itertools.product(range(num_costs), repeat=n):
        left, prob, score = budget, 1.0, 0.0
        for i, c in enumerate(costs):
            a = int(policy[i][left])
            prob *= cost_pmf[i, a, c]
            if c > left:
                # Cut: this question and every later one score 0, and no later cost is drawn;
                # the tuple whose later costs are all 0 stands for this branch alone.
                prob *= not any(costs[i + 1:])
                break
            score += success[i, a]
            left -= c
        total += prob * score
    return total


def simulate_policy(success, cost_pmf, budget: int, policy, n_exams: int, seed: int = 0) -> np.ndarray:
    """Monte-Carlo exam scores float[n_exams] of `policy` under the cost model: costs drawn from
    `cost_pmf`, each finished question scoring with probability `success`."""
    success, cost_pmf = _check_cost_model(success, cost_pmf, budget)
    n, _, num_costs = cost_pmf.shape
    rng = np.random.default_rng(seed)
    scores = np.zeros(n_exams)
    left = np.full(n_exams, budget)
    alive = np.ones(n_exams, bool)
    for i in range(n):
        a = np.asarray(policy)[i][left]
        u = rng.random(n_exams)[:, None]
        cost = np.minimum((u > np.cumsum(cost_pmf[i, a], axis=-1)).sum(-1), num_costs - 1)
        finished = alive & (cost <= left)
        scores += finished * (rng.random(n_exams) < success[i, a])
        alive = finished
        left = np.where(finished, left - cost, 0)
    return scores


def greedy_knapsack(costs: Sequence[float | None], budget: float) -> tuple[bool, ...]:
    """ROI's MFT + Greedy Knapsack baseline: solve questions in ascending predicted cost (ties by
    position) while the running sum fits `budget`, skip the rest.

    Args:
      costs: each question's predicted cost (the centroid of its predicted level), None for a
        question the model itself skips.

    Returns:
      bool[N], True where the question is solved.
    """
    if budget < 0:
        raise ValueError(f"greedy_knapsack: budget {budget} is below zero")
    order = sorted((c, j) for j, c in enumerate(costs) if c is not None)
    solve, spent = [False] * len(costs), 0.0
    for cost, j in order:
        if spent + cost > budget:
            break
        solve[j], spent = True, spent + cost
    return tuple(solve)


def _check_cost_model(success, cost_pmf, budget: int) -> tuple[np.ndarray, np.ndarray]:
    success = np.asarray(success, np.float64)
    cost_pmf = np.asarray(cost_pmf, np.float64)
    if cost_pmf.ndim != 3 or success.shape != cost_pmf.shape[:2]:
        raise ValueError(f"oracle: success must be float[N, A] and cost_pmf float[N, A, C] with the "
                         f"same N and A; got {success.shape} and {cost_pmf.shape}")
    if int(budget) != budget or budget < 0:
        raise ValueError(f"oracle: budget {budget} must be an integer >= 0")
    if np.any((success < 0) | (success > 1)) or np.any(cost_pmf < 0):
        raise ValueError("oracle: success must lie in [0, 1] and cost_pmf must be non-negative")
    sums = cost_pmf.sum(-1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        worst = np.unravel_index(np.argmax(np.abs(sums - 1)), sums.shape)
        raise ValueError(f"oracle: cost_pmf[{worst[0]}, {worst[1]}] sums to {sums[worst]:.6f}, not 1; "
                         "put the mass of costs beyond C - 1 on the last bin")
    return success, cost_pmf
