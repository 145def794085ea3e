"""Group-relative advantages and the sample filters built on them (RaM, STaR, GRPO, Dr. GRPO).

Rewards come as `float32[groups, k]`: `k` candidates per question. A boolean `mask` of the same
shape gives the ragged form: `False` marks padding (a group with fewer than `k` candidates), which
never enters a group statistic and gets advantage 0 and is never kept.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

AdvantageKind = Literal["mean", "grpo", "dr_grpo"]
ADVANTAGE_KINDS: tuple[str, ...] = ("mean", "grpo", "dr_grpo")

GRPO_STD_EPS = 1e-8


def group_advantages(rewards, *, kind: AdvantageKind, mask=None):
    """Each candidate's reward relative to its group.

    - "mean": `R - mean(R)` over the group, RaM's baseline (its filter keeps advantage >= 0).
    - "dr_grpo": `R - mean(R)`, Dr. GRPO (arXiv 2503.20783): the same formula as "mean", named for
      the method a config reproduces.
    - "grpo": `(R - mean(R)) / (std(R) + 1e-8)`, GRPO. `std` is the *population* standard deviation
      (divide by the number of valid members, ddof=0) over the group's valid members; TRL uses the
      unbiased one (ddof=1), which differs by a factor `sqrt((n - 1) / n)`. A group whose rewards
      are all equal gets advantage exactly 0.

    Args:
      rewards: float32[groups, k].
      kind: "mean", "grpo" or "dr_grpo".
      mask: bool[groups, k] valid members, or None for all valid.

    Returns:
      float32[groups, k]; 0 at masked members and for groups of one valid member.
    """
    if kind not in ADVANTAGE_KINDS:
        raise ValueError(f"unknown advantage kind {kind!r}: use one of {ADVANTAGE_KINDS}")
    centered, mask, count = _centered(rewards, mask)
    if kind == "grpo":
        std = jnp.sqrt(jnp.sum(jnp.where(mask, centered**2, 0.0), axis=-1, keepdims=True) / count)
        centered = centered / (std + GRPO_STD_EPS)
    return jnp.where(mask, centered, 0.0)


def ram_keep_mask(rewards, correct, mask=None):
    """RaM's expert-iteration filter (PAPERS.md section 1, step 5): which candidates to train on.

    A candidate is kept when all hold: its group has at least one correct valid candidate; it is
    correct or its reward is >= 0; its advantage `reward - mean(group rewards)` is >= 0.

    Args:
      rewards: float32[groups, k] VOC rewards (the direct candidate is one of the `k`).
      correct: bool[groups, k] whether each candidate's answer is right.
      mask: bool[groups, k] valid members, or None for all valid.

    Returns:
      bool[groups, k]; never True at a masked member.
    """
    if jnp.shape(correct) != jnp.shape(rewards):
        raise ValueError(
            f"correct shape {jnp.shape(correct)} must equal the rewards' shape {jnp.shape(rewards)}")
    advantage = group_advantages(rewards, kind="mean", mask=mask)
    keep = star_keep_mask(correct, mask)
    group_solved = jnp.any(keep, axis=-1, keepdims=True)
    good = keep | (jnp.asarray(rewards) >= 0)
    return _valid(rewards, mask) & group_solved & good & (advantage >= 0)


def star_keep_mask(correct, mask=None):
    """STaR's filter: keep the correct valid candidates. correct, mask: bool[groups, k] -> bool[groups, k]."""
    correct = jnp.asarray(correct, bool)
    return correct & _valid(correct, mask)


def _centered(rewards, mask):
    """`rewards - group mean` over valid members, with the mask and the clamped member count.

    The group's largest valid reward is subtracted before averaging: a constant group then centres
    to exactly 0 (a rounding residue divided by GRPO's 1e-8 would otherwise become a +-1 advantage),
    and a large common offset cancels before it can cost precision in the sum.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim < 1:
        raise ValueError(f"rewards must be [groups, k] (or [k] for one group), got shape {rewards.shape}")
    mask = _valid(rewards, mask)
    # Padded slots may hold anything, NaN included: they must not reach a sum.
    rewards = jnp.where(mask, rewards, 0.0)
    count = jnp.sum(mask, axis=-1, keepdims=True)
    top = jnp.max(jnp.where(mask, rewards, -jnp.inf), axis=-1, keepdims=True)
    shifted = rewards - jnp.where(count > 0, top, 0.0)
    count = jnp.maximum(count, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(mask, shifted, 0.0), axis=-1, keepdims=True) / count
    return shifted - mean, mask, count


def _valid(like, mask):
    """The validity mask as bool with `like`'s shape (all True when `mask` is None)."""
    shape = jnp.shape(like)
    if mask is None:
        return jnp.ones(shape, bool)
    mask = jnp.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} must equal the rewards' shape {shape}")
    return mask
