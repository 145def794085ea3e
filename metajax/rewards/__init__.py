"""Pure reward functions: VOC, costs, group advantages, filters, policy-gradient losses, exam scores.

Everything here needs only jax and numpy, so `import metajax.rewards` works in anyone's research
code. `sequence_logprobs` and `chain_logprobs` run the model and live in `.logprobs`, which is
imported only when one of them is first used.
"""

import importlib

from metajax.rewards.adapters import correctness_reward, trl_reward_fn
from metajax.rewards.advantages import (
    ADVANTAGE_KINDS,
    group_advantages,
    ram_keep_mask,
    star_keep_mask,
)
from metajax.rewards.exam import (
    ROI_LEVEL_THRESHOLDS,
    exam_reward,
    exam_score,
    level_of_tokens,
    regret,
)
from metajax.rewards.policy_gradient import (
    POLICY_GRADIENT_KINDS,
    policy_gradient_loss,
    policy_gradient_terms,
)
from metajax.rewards.voc import (
    COSTS,
    chain_cost,
    linear_cost,
    log_cost,
    log_prob_plus_eps,
    voc_reward,
)

_LOGPROBS = ("sequence_logprobs", "chain_logprobs")

__all__ = [
    "ADVANTAGE_KINDS", "COSTS", "POLICY_GRADIENT_KINDS", "ROI_LEVEL_THRESHOLDS",
    "chain_cost", "correctness_reward", "exam_reward", "exam_score", "group_advantages",
    "level_of_tokens", "linear_cost", "log_cost", "log_prob_plus_eps", "policy_gradient_loss",
    "policy_gradient_terms", "ram_keep_mask", "regret", "star_keep_mask", "trl_reward_fn",
    "voc_reward", *_LOGPROBS,
]


def __getattr__(name):
    # The log-prob functions pull in the model code; import them on first use only.
    if name in _LOGPROBS:
        return getattr(importlib.import_module(".logprobs", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LOGPROBS))
