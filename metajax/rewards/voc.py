"""RaM's value-of-computation reward: what a reasoning chain buys, minus what it costs.

`R(x, y, z) = log(p(y | x, z) + eps) - log(p(y | x) + eps) - C(z)` (RaM, arXiv 2410.05563; the
authors' `src/reward_model.py`). Inputs are log-probabilities of the gold answer (sums of token
log-probs, e.g. from `metajax.rewards.sequence_logprobs`), never probabilities: a long answer's
probability underflows float32 long before its log-probability loses precision.
"""

from __future__ import annotations

from typing import Callable, Literal

import jax.numpy as jnp

CostName = Literal["log", "linear"]


def voc_reward(
    logp_with_chain,
    logp_direct,
    chain_tokens,
    *,
    gamma: float = 0.1,
    cost: CostName | Callable = "log",
    eps: float = 1e-4,
):
    """RaM's reward of a chain `z`: the answer-probability gain it buys minus its length cost.

    Args:
      logp_with_chain: float32[...] `log p(y | x, z)`: the gold answer's log-probability after the
        chain. May be `-inf` (the answer cannot follow); the result stays finite.
      logp_direct: float32[...] `log p(y | x)`: the same with an empty thought (RaM's direct
        candidate); broadcastable against `logp_with_chain`.
      chain_tokens: int32[...] `l(z)`, the thought block's length in tokens (0 when there is none);
        broadcastable against the others.
      gamma: cost weight, RaM's 0.1. Ignored by a callable `cost`.
      cost: "log" for `gamma * log(1 + l)` (the authors' code), "linear" for `gamma * l` (also tried by
        the authors), or a callable `l -> cost` that returns the cost in reward units.
      eps: RaM's probability floor 1e-4: it caps how much a chain can gain or lose when either
        probability is tiny.

    Returns:
      float32[...]: the broadcast shape of the inputs.
    """
    return (log_prob_plus_eps(logp_with_chain, eps) - log_prob_plus_eps(logp_direct, eps)
            - chain_cost(chain_tokens, cost=cost, gamma=gamma))


def log_cost(chain_tokens, gamma: float = 0.1):
    """RaM's cost `gamma * log(1 + l)`. chain_tokens: int32[...] -> float32[...]."""
    return gamma * jnp.log1p(jnp.asarray(chain_tokens, jnp.float32))


def linear_cost(chain_tokens, gamma: float = 0.1):
    """The linear cost `gamma * l` the RaM authors also tried. chain_tokens: int32[...] -> float32[...]."""
    return gamma * jnp.asarray(chain_tokens, jnp.float32)


COSTS: dict[str, Callable] = {"log": log_cost, "linear": linear_cost}


def chain_cost(chain_tokens, *, cost: CostName | Callable = "log", gamma: float = 0.1):
    """`C(z)` by name ("log", "linear") with weight `gamma`, or a callable `l -> cost` (gamma unused).

    chain_tokens: int32[...] -> float32[...].
    """
    if callable(cost):
        return jnp.asarray(cost(jnp.asarray(chain_tokens)), jnp.float32)
    if cost not in COSTS:
        raise ValueError(
            f"unknown chain cost {cost!r}: use one of {sorted(COSTS)} or pass a callable l -> cost")
    return COSTS[cost](chain_tokens, gamma)


def log_prob_plus_eps(logp, eps: float = 1e-4):
    """`log(exp(logp) + eps)` without leaving log space. logp: float32[...] -> float32[...].

    Finite for every float32 `logp`, `-inf` included (gives `log(eps)`), and `exp` never overflows,
    so a caller can feed unnormalised or masked scores without a NaN reaching the reward.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (RaM uses 1e-4), got {eps}")
    return jnp.logaddexp(jnp.asarray(logp, jnp.float32), jnp.log(jnp.float32(eps)))
