"""GRPO / Dr. GRPO losses against a NumPy transcription of PAPERS.md section 3, and REINFORCE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.rewards import policy_gradient_loss, policy_gradient_terms

MAX_TOKENS = 16


def _loss_numpy(logp, logp_old, adv, mask, kind, eps=0.2, max_tokens=MAX_TOKENS, beta=0.0, logp_ref=None):
    """Response by response, in float64: clipped surrogate (+ beta * k3), then the kind's normaliser."""
    per_response = []
    for i in range(logp.shape[0]):
        m = mask[i]
        if not m.any():
            continue  # padding row, not a response
        rho = np.exp(logp[i, m].astype(np.float64) - logp_old[i, m])
        token = -np.minimum(rho * adv[i], np.clip(rho, 1 - eps, 1 + eps) * adv[i])
        if logp_ref is not None:
            d = logp_ref[i, m].astype(np.float64) - logp[i, m]
            token = token + beta * (np.exp(d) - d - 1)
        per_response.append(token.mean() if kind == "grpo" else token.sum() / max_tokens)
    return np.mean(per_response)


def _batch(seed, batch=6, t=MAX_TOKENS, drift=0.5):
    rng = np.random.default_rng(seed)
    logp = rng.uniform(-4, -0.01, size=(batch, t)).astype(np.float32)
    logp_old = (logp + rng.normal(scale=drift, size=(batch, t))).astype(np.float32)
    logp_ref = (logp + rng.normal(scale=drift, size=(batch, t))).astype(np.float32)
    adv = rng.normal(size=batch).astype(np.float32)
    lengths = rng.integers(1, t + 1, size=batch)
    mask = np.arange(t)[None, :] < lengths[:, None]
    mask[-1] = False  # a padding row
    return logp, logp_old, adv, mask, logp_ref


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_numpy_with_clipping(kind, seed):
    logp, logp_old, adv, mask, _ = _batch(seed)
    loss, aux = policy_gradient_loss(logp, logp_old, adv, mask, kind=kind, max_tokens=MAX_TOKENS)
    np.testing.assert_allclose(loss, _loss_numpy(logp, logp_old, adv, mask, kind), rtol=1e-5, atol=1e-6)
    # With drift 0.5 many tokens are outside [0.8, 1.2]: the clipped branch is exercised.
    rho = np.exp(logp - logp_old)
    a = adv[:, None]
    clip_active = ((rho < 0.8) & (a < 0)) | ((rho > 1.2) & (a > 0))
    np.testing.assert_allclose(aux["clip_fraction"], clip_active[mask].mean(), rtol=1e-6)
    assert 0.1 < aux["clip_fraction"] < 0.9
    np.testing.assert_allclose(aux["ratio_mean"], rho[mask].mean(), rtol=1e-5)
    assert aux["kl_mean"] == 0.0


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo"])
def test_kl_term_matches_numpy(kind):
    logp, logp_old, adv, mask, logp_ref = _batch(3)
    loss, aux = policy_gradient_loss(logp, logp_old, adv, mask, kind=kind, max_tokens=MAX_TOKENS,
                                     kl_beta=0.04, logp_ref=logp_ref)
    np.testing.assert_allclose(
        loss, _loss_numpy(logp, logp_old, adv, mask, kind, beta=0.04, logp_ref=logp_ref), rtol=1e-5)
    d = logp_ref.astype(np.float64) - logp
    np.testing.assert_allclose(aux["kl_mean"], (np.exp(d) - d - 1)[mask].mean(), rtol=1e-5)
    # The KL is reported even when it carries no weight.
    _, aux0 = policy_gradient_loss(logp, logp_old, adv, mask, kind=kind, max_tokens=MAX_TOKENS,
                                   logp_ref=logp_ref)
    np.testing.assert_allclose(aux0["kl_mean"], aux["kl_mean"], rtol=1e-6)


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo"])
def test_unclipped_gradient_is_reinforce(kind):
    logp, _, adv, mask, _ = _batch(4)
    lengths = mask.sum(-1)
    responses = (lengths > 0).sum()
    if kind == "grpo":
        weight, denom = 1.0 / np.maximum(lengths, 1)[:, None], responses
    else:
        weight, denom = 1.0, responses * MAX_TOKENS

    def ppo(lp):
        return policy_gradient_loss(lp, jax.lax.stop_gradient(lp), adv, mask, kind=kind,
                                    max_tokens=MAX_TOKENS)[0]

    def reinforce(lp):
        return -jnp.sum(adv[:, None] * lp * mask * weight) / denom

    np.testing.assert_allclose(jax.grad(ppo)(logp), jax.grad(reinforce)(logp), rtol=1e-5, atol=1e-8)
    assert np.abs(np.asarray(jax.grad(ppo)(logp))).max() > 0


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo"])
def test_sum_and_denominator_accumulate_exactly(kind):
    logp, logp_old, adv, mask, logp_ref = _batch(5)
    kw = dict(kind=kind, max_tokens=MAX_TOKENS, kl_beta=0.1)
    full, _ = policy_gradient_loss(logp, logp_old, adv, mask, logp_ref=logp_ref, **kw)
    parts = [policy_gradient_terms(logp[s], logp_old[s], adv[s], mask[s], logp_ref=logp_ref[s], **kw)
             for s in (slice(0, 2), slice(2, 6))]
    np.testing.assert_allclose(sum(p[0] for p in parts) / sum(p[1] for p in parts), full, rtol=1e-6)


def test_dr_grpo_weighs_tokens_alike_and_grpo_weighs_responses_alike():
    # Two responses with advantage 1, lengths 2 and 8, on policy: per-token gradient magnitudes.
    mask = np.arange(8)[None, :] < np.array([[2], [8]])
    logp = np.full((2, 8), -1.0, np.float32)
    grads = {kind: np.asarray(jax.grad(lambda lp: policy_gradient_loss(
        lp, jax.lax.stop_gradient(lp), np.ones(2, np.float32), mask, kind=kind, max_tokens=10)[0])(logp))
        for kind in ["grpo", "dr_grpo"]}
    np.testing.assert_allclose(grads["dr_grpo"][mask], -1.0 / (2 * 10))
    np.testing.assert_allclose(grads["grpo"][0, :2], -1.0 / (2 * 2))
    np.testing.assert_allclose(grads["grpo"][1], -1.0 / (2 * 8))


def test_padding_garbage_stays_out_of_loss_and_gradient():
    logp, logp_old, adv, mask, logp_ref = _batch(6)
    # exp(logp - logp_old) = inf at the padding unless it is kept out before the exp.
    logp = np.where(mask, logp, 0.0).astype(np.float32)
    logp_old = np.where(mask, logp_old, -1e30).astype(np.float32)
    logp_ref = np.where(mask, logp_ref, np.inf).astype(np.float32)

    def loss(lp):
        return policy_gradient_loss(lp, logp_old, adv, mask, kind="dr_grpo", max_tokens=MAX_TOKENS,
                                    kl_beta=0.1, logp_ref=logp_ref)

    value, aux = loss(logp)
    grad = jax.grad(lambda lp: loss(lp)[0])(logp)
    assert np.isfinite(value) and all(np.isfinite(v) for v in aux.values())
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0.0)


def test_all_padding_gives_zero_loss():
    z = np.zeros((2, 4), np.float32)
    loss, _ = policy_gradient_loss(z, z, np.ones(2, np.float32), np.zeros((2, 4), bool), kind="grpo")
    assert loss == 0.0


def test_jit_and_vmap():
    logp, logp_old, adv, mask, logp_ref = _batch(7)
    fn = lambda a, b, c, d, e: policy_gradient_loss(a, b, c, d, kind="dr_grpo", max_tokens=MAX_TOKENS,
                                                    kl_beta=0.05, logp_ref=e)[0]
    eager = fn(logp, logp_old, adv, mask, logp_ref)
    np.testing.assert_allclose(jax.jit(fn)(logp, logp_old, adv, mask, logp_ref), eager, rtol=1e-6)
    stacked = [np.stack([x, x[::-1]]) for x in (logp, logp_old, adv, mask, logp_ref)]
    mapped = jax.vmap(fn)(*stacked)
    np.testing.assert_allclose(mapped[0], eager, rtol=1e-6)
    np.testing.assert_allclose(mapped[1], fn(*(s[1] for s in stacked)), rtol=1e-6)


def test_bad_input_is_rejected():
    logp, logp_old, adv, mask, _ = _batch(8)
    with pytest.raises(ValueError, match="pass max_tokens"):
        policy_gradient_loss(logp, logp_old, adv, mask, kind="dr_grpo")
    with pytest.raises(ValueError, match="kl_beta=0.1 needs logp_ref"):
        policy_gradient_loss(logp, logp_old, adv, mask, kind="grpo", kl_beta=0.1)
    with pytest.raises(ValueError, match="unknown policy-gradient kind 'ppo'"):
        policy_gradient_loss(logp, logp_old, adv, mask, kind="ppo")
    with pytest.raises(ValueError, match="mask shape"):
        policy_gradient_loss(logp, logp_old, adv, mask[:, :3], kind="grpo")
    with pytest.raises(ValueError, match="advantages must be"):
        policy_gradient_loss(logp, logp_old, adv[:, None], mask, kind="grpo")
