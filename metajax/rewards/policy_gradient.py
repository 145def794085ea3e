"""The clipped policy-gradient loss of GRPO and Dr. GRPO (PAPERS.md section 3).

Per token: `-min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)` with `rho = exp(logp - logp_old)`, plus
an optional k3 KL penalty `beta * (exp(d) - d - 1)`, `d = logp_ref - logp` (oat's estimator). The
kinds differ only in how token losses are aggregated:

- "grpo": mean over each response's own tokens, then mean over responses.
- "dr_grpo": sum over all tokens divided by `responses * max_tokens`, a constant (the generation
  budget), so long and short responses weigh each token alike (arXiv 2503.20783).

A row whose mask is all False is padding (e.g. a batch padded to a bucketed shape) and does not
count as a response. The loss is returned as a (sum, denominator) pair by `policy_gradient_terms`
so that gradient accumulation over micro-batches stays exact: sum the sums and the denominators,
divide once.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

PolicyGradientKind = Literal["grpo", "dr_grpo"]
POLICY_GRADIENT_KINDS: tuple[str, ...] = ("grpo", "dr_grpo")


def policy_gradient_loss(
    logp,
    logp_old,
    advantages,
    mask,
    *,
    kind: PolicyGradientKind,
    clip_eps: float = 0.2,
    max_tokens: int | None = None,
    kl_beta: float = 0.0,
    logp_ref=None,
):
    """The loss to minimise, `loss_sum / denominator` of `policy_gradient_terms` (same arguments).

    Returns:
      (loss: float32[], aux: dict of float32[]); a batch of padding only gives loss 0.
    """
    loss_sum, denom, aux = policy_gradient_terms(
        logp, logp_old, advantages, mask, kind=kind, clip_eps=clip_eps, max_tokens=max_tokens,
        kl_beta=kl_beta, logp_ref=logp_ref)
    return loss_sum / jnp.maximum(denom, 1.0), aux


def policy_gradient_terms(
    logp,
    logp_old,
    advantages,
    mask,
    *,
    kind: PolicyGradientKind,
    clip_eps: float = 0.2,
    max_tokens: int | None = None,
    kl_beta: float = 0.0,
    logp_ref=None,
):
    """The policy-gradient loss as an exact (sum, denominator) pair.

    Args:
      logp: float32[batch, T] per-token log-probs of the sampled tokens under the policy being
        trained (gradients flow through these).
      logp_old: float32[batch, T] the same under the policy that sampled them (PPO's `pi_old`; pass
        `stop_gradient(logp)` for one on-policy step, which makes the loss REINFORCE's).
      advantages: float32[batch] one advantage per response (`group_advantages`, flattened).
      mask: bool[batch, T] the response tokens that carry loss.
      kind: "grpo" or "dr_grpo" (TRL's `loss_type` names).
      clip_eps: PPO's clip range `eps` (TRL's `epsilon`); 0.2 in Dr. GRPO.
      max_tokens: the constant Dr. GRPO divides by, the generation budget (TRL's
        `max_completion_length`); required for "dr_grpo", unused by "grpo".
      kl_beta: weight of the k3 KL penalty (TRL's `beta`); 0 in Dr. GRPO. Needs `logp_ref` when > 0.
      logp_ref: float32[batch, T] per-token log-probs under the reference policy, or None. When given,
        `aux["kl_mean"]` reports the KL even with `kl_beta = 0`.

    Returns:
      (loss_sum: float32[], denominator: float32[], aux) with aux float32[] scalars over valid
      tokens: "clip_fraction" (tokens whose clipped term is the active one), "ratio_mean" (mean
      `rho`), "kl_mean" (mean k3 KL; 0 without `logp_ref`).
    """
    logp, logp_old, advantages, mask, logp_ref = _checked(
        logp, logp_old, advantages, mask, logp_ref, kind=kind, clip_eps=clip_eps,
        max_tokens=max_tokens, kl_beta=kl_beta)

    # Padding positions may hold anything (0 against -1e30): zero their differences before `exp`
    # so that neither the loss nor its gradient can see an inf or NaN from them.
    ratio = jnp.exp(jnp.where(mask, logp - logp_old, 0.0))
    adv = advantages[:, None]
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    token_loss = -jnp.minimum(ratio * adv, clipped * adv)
    kl = jnp.zeros_like(logp) if logp_ref is None else _k3_kl(logp, logp_ref, mask)
    token_loss = token_loss + kl_beta * kl

    tokens_per_row = jnp.sum(mask, axis=-1)
    responses = jnp.sum(tokens_per_row > 0).astype(jnp.float32)
    row_sums = jnp.sum(jnp.where(mask, token_loss, 0.0), axis=-1)
    if kind == "grpo":
        loss_sum = jnp.sum(row_sums / jnp.maximum(tokens_per_row, 1))
        denom = responses
    else:
        loss_sum = jnp.sum(row_sums)
        denom = responses * jnp.float32(max_tokens)

    clip_active = ((ratio < 1.0 - clip_eps) & (adv < 0)) | ((ratio > 1.0 + clip_eps) & (adv > 0))
    aux = {
        "clip_fraction": _token_mean(clip_active.astype(jnp.float32), mask),
        "ratio_mean": _token_mean(ratio, mask),
        "kl_mean": _token_mean(kl, mask),
    }
    return loss_sum, denom, aux


def _k3_kl(logp, logp_ref, mask):
    """Per-token k3 estimator of KL(pi || pi_ref): `exp(d) - d - 1`, `d = logp_ref - logp`; >= 0."""
    d = jnp.where(mask, logp_ref - logp, 0.0)
    return jnp.exp(d) - d - 1.0


def _token_mean(x, mask):
    """Mean of `x: float32[batch, T]` over the valid tokens (0 when there are none)."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _checked(logp, logp_old, advantages, mask, logp_ref, *, kind, clip_eps, max_tokens, kl_beta):
    """Validate the static settings and shapes; return the arrays as float32 (mask as bool)."""
    if kind not in POLICY_GRADIENT_KINDS:
        raise ValueError(f"unknown policy-gradient kind {kind!r}: use one of {POLICY_GRADIENT_KINDS}")
    if kind == "dr_grpo" and (max_tokens is None or max_tokens <= 0):
        raise ValueError(
            "kind='dr_grpo' divides by a constant: pass max_tokens, the generation budget "
            f"(TRL's max_completion_length), as a positive int; got {max_tokens!r}")
    if not clip_eps >= 0:
        raise ValueError(f"clip_eps must be >= 0 (Dr. GRPO uses 0.2), got {clip_eps}")
    if kl_beta != 0 and logp_ref is None:
        raise ValueError(f"kl_beta={kl_beta} needs logp_ref, the reference policy's per-token log-probs")
    logp = jnp.asarray(logp, jnp.float32)
    if logp.ndim != 2:
        raise ValueError(f"logp must be [batch, T], got shape {logp.shape}")
    named = {"logp_old": logp_old, "mask": mask} | ({} if logp_ref is None else {"logp_ref": logp_ref})
    for name, x in named.items():
        if jnp.shape(x) != logp.shape:
            raise ValueError(f"{name} shape {jnp.shape(x)} must equal logp's shape {logp.shape}")
    if jnp.shape(advantages) != logp.shape[:1]:
        raise ValueError(
            f"advantages must be [batch] = {logp.shape[:1]} (one per response), got {jnp.shape(advantages)}")
    return (logp, jnp.asarray(logp_old, jnp.float32), jnp.asarray(advantages, jnp.float32),
            jnp.asarray(mask, bool), None if logp_ref is None else jnp.asarray(logp_ref, jnp.float32))
