"""The GRPO reward: a weighted sum of terms, each a TRL-signature function over the batch's columns.

Every term is called as `fn(prompts, completions, **columns) -> list[float]`, the shape TRL and
Tunix users write their own rewards in (`metajax.rewards.trl_reward_fn`). The columns are the
questions' fields (`question`, `answer`, `answer_type`, `choices`, `difficulty`, `id`, `dataset`), the
completions' `num_tokens` and graded `correct`, and, when a VOC term asks for them, RaM's
`logp_with_chain`, `logp_direct` and `chain_tokens`, scored by the policy's own forward pass over
the sampled thought tokens (`metajax.algorithms.chains`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from metajax.algorithms.chains import sampled_thought, score_chains
from metajax.data.example import Example
from metajax.data.graders import grade_example
from metajax.rewards.adapters import trl_reward_fn
from metajax.rewards.voc import COSTS, voc_reward
from metajax.sampling.policy import Policy
from metajax.sampling.rollouts import Completion

REWARD_KINDS = ("correctness", "voc", "token_cost", "function")


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    """One term of the reward `R = sum_k weight_k * term_k`.

    Attributes:
      kind: "correctness" (1 for a graded-correct answer, else 0: the R1-Zero / Dr. GRPO reward);
        "voc" (RaM's value of computation of the sampled thought, `gamma`, `cost` and `eps` as in
        `metajax.rewards.voc_reward`); "token_cost" (minus the completion's generated tokens, so a
        positive weight is a cost per token); "function" (`function`, a TRL-signature callable).
      weight: the term's weight.
      gamma, cost, eps: the VOC term's settings (RaM: 0.1, "log", 1e-4).
      scorer: whose log-probs the VOC term reads: "base", the frozen starting policy (a fixed
        reward model), or "policy", the policy being trained (RaM's expert iteration scores with its
        current policy). Under a policy gradient "policy" feeds back on itself: a direct answer
        pushed down where thinking pays more lowers p(y | x), which raises every thought's reward.
      function: "package.module:name" of a callable `fn(prompts, completions, **columns) -> list[float]`.
    """

    kind: Literal["correctness", "voc", "token_cost", "function"] = "correctness"
    weight: float = 1.0
    gamma: float = 0.1
    cost: Literal["log", "linear"] = "log"
    eps: float = 1e-4
    scorer: Literal["base", "policy"] = "base"
    function: str | None = None

    def __post_init__(self):
        if self.kind not in REWARD_KINDS:
            raise ValueError(f"reward kind {self.kind!r} is not one of {REWARD_KINDS}")
        if (self.kind == "function") != (self.function is not None):
            raise ValueError("a reward term of kind 'function' needs `function: package.module:name`, and only it "
                             f"takes one (got kind {self.kind!r}, function {self.function!r})")
        if self.function is not None and ":" not in self.function:
            raise ValueError(f"reward function {self.function!r} must be written package.module:name")
        if self.scorer not in ("base", "policy"):
            raise ValueError(f"reward scorer {self.scorer!r} is not 'base' or 'policy'")
        if self.cost not in COSTS or self.gamma < 0 or self.eps <= 0:
            raise ValueError(f"voc reward needs cost in {sorted(COSTS)}, gamma >= 0 and eps > 0; got cost "
                             f"{self.cost!r}, gamma {self.gamma}, eps {self.eps}")

    @property
    def name(self) -> str:
        return self.function.rpartition(":")[2] if self.kind == "function" else self.kind

    def reward_fn(self) -> Callable:
        """The term as `fn(prompts, completions, **columns) -> list[float]`."""
        if self.kind == "voc":
            return trl_reward_fn(voc_reward, gamma=self.gamma, cost=self.cost, eps=self.eps)
        if self.kind == "correctness":
            return trl_reward_fn(_correctness)
        if self.kind == "token_cost":
            return trl_reward_fn(_token_cost)
        module, _, name = self.function.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward function {self.function!r} cannot be imported: {e}") from None


def reward_columns(policy: Policy, questions: Sequence[Example], completions: Sequence[Completion], *,
                   voc_scorer: Policy | None = None, fewshot: Sequence[Example] = (), score_batch_size: int = 64
                   ) -> dict[str, list]:
    """The batch's columns, one entry per completion (see the module docstring); the VOC columns
    only with a `voc_scorer`, the policy whose forward pass scores the chains."""
    rows = [questions[c.prompt_index] for c in completions]
    columns = {
        "question": [q.question for q in rows], "answer": [q.answer for q in rows],
        "answer_type": [q.answer_type for q in rows], "choices": [q.choices for q in rows],
        "difficulty": [q.difficulty for q in rows], "id": [q.id for q in rows], "dataset": [q.dataset for q in rows],
        "num_tokens": [c.num_tokens for c in completions],
        "correct": [grade_example(c.text, q) for c, q in zip(completions, rows)],
    }
    if voc_scorer is not None:
        chains = [(c.prompt_index, sampled_thought(policy, c.ids), len(c.ids)) for c in completions]
        scores = score_chains(voc_scorer, questions, chains, fewshot=fewshot, batch_size=score_batch_size)
        columns.update(logp_with_chain=scores.logp_with_chain.tolist(), logp_direct=scores.logp_direct.tolist(),
                       chain_tokens=scores.chain_tokens.tolist())
    return columns


def total_reward(terms: Sequence[RewardTerm], prompts: Sequence[str], completions: Sequence[str],
                 columns: dict[str, list]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(R float32[n], each term's value float32[n] by name) for n completions."""
    if not terms:
        raise ValueError("the reward has no terms: give at least one (grpo.rewards)")
    parts = {}
    total = np.zeros(len(completions), np.float32)
    for term in terms:
        values = np.asarray(term.reward_fn()(list(prompts), list(completions), **columns), np.float32)
        if values.shape != (len(completions),) or not np.isfinite(values).all():
            raise ValueError(f"reward term {term.name!r} returned {values.shape} values (finite: "
                             f"{bool(np.isfinite(values).all())}); it must give one finite float per completion")
        parts[term.name] = values
        total += term.weight * values
    return total, parts


def _correctness(correct):
    return np.asarray(correct, np.float32)


def _token_cost(num_tokens):
    return -np.asarray(num_tokens, np.float32)
