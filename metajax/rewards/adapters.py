"""TRL/Tunix-shaped reward functions over metajax's pure ones.

TRL's `GRPOTrainer` and Tunix call each reward function as
`fn(prompts, completions, **batch_fields) -> list[float]`, one float per completion, with the
dataset's columns (and any computed fields) as keyword lists. These adapters give researchers that
familiar shape without tying the pure functions to it.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np


def trl_reward_fn(fn: Callable, /, **fixed) -> Callable:
    """Wrap a batched reward function `fn` as `reward(prompts, completions, **batch_fields)`.

    Each call passes `fn` the batch fields its parameters name (`prompts` and `completions`
    included, when named) plus the `fixed` keyword settings, and flattens its result to one float
    per completion. E.g. `trl_reward_fn(voc_reward, gamma=0.1)` reads the batch fields
    `logp_with_chain`, `logp_direct` and `chain_tokens`.

    Args:
      fn: a pure reward function, e.g. `voc_reward`, returning float32[batch].
      **fixed: settings bound once (`gamma`, `cost`, ...); each must be a parameter of `fn`.

    Returns:
      `reward(prompts, completions, **batch_fields) -> list[float]`, named after `fn` (TRL logs
      rewards under the function's `__name__`).
    """
    name = getattr(fn, "__name__", "reward")  # a functools.partial has none
    params = {
        arg: p for arg, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = sorted(set(fixed) - set(params))
    if unknown:
        raise ValueError(f"{name} has no parameter(s) {unknown}; its parameters: {sorted(params)}")
    wanted = [arg for arg in params if arg not in fixed]

    def reward(prompts, completions, **batch_fields) -> list[float]:
        available = {"prompts": prompts, "completions": completions, **batch_fields}
        missing = [n for n in wanted if n not in available and params[n].default is params[n].empty]
        if missing:
            raise ValueError(
                f"reward {name} needs batch field(s) {missing}; the batch has {sorted(available)}")
        values = np.asarray(fn(**{n: available[n] for n in wanted if n in available}, **fixed),
                            np.float64).reshape(-1)
        if values.shape[0] != len(completions):
            raise ValueError(
                f"reward {name} returned {values.shape[0]} values for {len(completions)} completions")
        return values.tolist()

    # Only the name: TRL logs under it, while the signature must stay the TRL one, not `fn`'s.
    reward.__name__ = reward.__qualname__ = name
    return reward


def correctness_reward(
    grader: Callable[[str, str, str], bool] | None = None,
    *,
    answer_field: str = "answer",
    answer_type: str | None = None,
    answer_type_field: str = "answer_type",
) -> Callable:
    """`reward(prompts, completions, **batch_fields)`: 1.0 for each correct completion, else 0.0.

    Args:
      grader: `grade(text, gold, answer_type) -> bool`; defaults to `metajax.data.graders.grade`,
        imported on first use so that `metajax.rewards` imports without the data package.
      answer_field: the batch field holding the gold answers.
      answer_type: one answer type for every example ("numeric", "choice", ...), or None to read
        each example's from `answer_type_field`.
      answer_type_field: the batch field holding per-example answer types.

    Completions may be strings or TRL's conversational form (a list of `{"role", "content"}`
    messages, of which the last is graded).
    """

    def correctness(prompts, completions, **batch_fields) -> list[float]:
        grade = grader if grader is not None else _default_grader()
        golds = _field(batch_fields, answer_field, len(completions))
        types = ([answer_type] * len(completions) if answer_type is not None
                 else _field(batch_fields, answer_type_field, len(completions)))
        return [float(bool(grade(_completion_text(c), gold, kind)))
                for c, gold, kind in zip(completions, golds, types)]

    return correctness


def _default_grader():
    from metajax.data.graders import grade

    return grade


def _field(batch_fields: dict, name: str, n: int) -> list:
    if name not in batch_fields:
        raise ValueError(f"correctness reward needs batch field {name!r}; the batch has {sorted(batch_fields)}")
    values = list(batch_fields[name])
    if len(values) != n:
        raise ValueError(f"batch field {name!r} has {len(values)} entries for {n} completions")
    return values


def _completion_text(completion) -> str:
    """The text of a completion: a string, or the content of a conversation's last message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return completion[-1]["content"]
    raise ValueError(
        f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")
