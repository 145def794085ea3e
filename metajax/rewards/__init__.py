"""Pure reward functions: VOC, costs, group advantages, filters, policy-gradient losses, exam scores.

Everything here is plain `jnp` over arrays and needs only jax, numpy and the plain-Python text
formats of `metajax.data.formats` (ROI's level bounds), so `import metajax.rewards` works in anyone's
research code. The log-probabilities they take come from the model:
`metajax.models.sequence_logprobs`, `chain_logprobs` and `token_logprobs`.
"""

from metajax.rewards.adapters import correctness_reward, trl_reward_fn
from metajax.rewards.advantages import (
    ADVANTAGE_KINDS,
    group_advantages,
    ram_keep_mask,
    star_keep_mask,
)
from metajax.rewards.exam import (
    ROI_LEVEL_BOUNDS,
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

__all__ = [
    "ADVANTAGE_KINDS", "COSTS", "POLICY_GRADIENT_KINDS", "ROI_LEVEL_BOUNDS",
    "chain_cost", "correctness_reward", "exam_reward", "exam_score", "group_advantages",
    "level_of_tokens", "linear_cost", "log_cost", "log_prob_plus_eps", "policy_gradient_loss",
    "policy_gradient_terms", "ram_keep_mask", "regret", "star_keep_mask", "trl_reward_fn",
    "voc_reward",
]
