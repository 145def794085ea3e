"""VOC reward and chain costs against a direct NumPy transcription of RaM's formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from metajax.rewards import chain_cost, linear_cost, log_cost, voc_reward

EPS = 1e-4


def _voc_numpy(lp_chain, lp_direct, length, gamma, cost):
    """RaM's `log(p(y|x,z) + eps) - log(p(y|x) + eps) - C(z)`, in float64 through probabilities."""
    c = gamma * (np.log1p(length) if cost == "log" else length)
    return np.log(np.exp(lp_chain) + EPS) - np.log(np.exp(lp_direct) + EPS) - c


@pytest.mark.parametrize("cost", ["log", "linear"])
def test_voc_matches_numpy_on_moderate_values(cost):
    rng = np.random.default_rng(0)
    lp_chain = rng.uniform(-25.0, 0.0, size=(4, 6))
    lp_direct = rng.uniform(-25.0, 0.0, size=(4, 6))
    length = rng.integers(0, 600, size=(4, 6))
    got = voc_reward(lp_chain, lp_direct, length, gamma=0.07, cost=cost, eps=EPS)
    assert got.dtype == jnp.float32 and got.shape == (4, 6)
    np.testing.assert_allclose(got, _voc_numpy(lp_chain, lp_direct, length, 0.07, cost),
                               rtol=1e-5, atol=2e-5)


def test_voc_default_is_rams_log_cost_with_gamma_point_one():
    got = voc_reward(-1.0, -4.0, 9)
    np.testing.assert_allclose(got, _voc_numpy(-1.0, -4.0, 9, 0.1, "log"), rtol=1e-6)


def test_voc_callable_cost_replaces_gamma_cost():
    got = voc_reward(-1.0, -2.0, jnp.array([0, 4, 16]), cost=lambda l: jnp.sqrt(l) / 10, gamma=123.0)
    want = np.log(np.exp(-1.0) + EPS) - np.log(np.exp(-2.0) + EPS) - np.sqrt([0, 4, 16]) / 10
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("very_negative", [-jnp.inf, -1e30, -1e4])
def test_voc_is_finite_for_impossible_answers(very_negative):
    # An impossible answer is worth log(eps): the reward, and its gradient, stay finite.
    got = voc_reward(very_negative, 0.0, 3, gamma=0.1)
    np.testing.assert_allclose(got, np.log(EPS) - np.log(1 + EPS) - 0.1 * np.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(voc_reward(0.0, very_negative, 0), np.log(1 + EPS) - np.log(EPS), rtol=1e-6)
    assert voc_reward(very_negative, very_negative, 0) == 0.0
    grads = jax.grad(lambda a, b: voc_reward(a, b, 3), argnums=(0, 1))(
        jnp.float32(very_negative), jnp.float32(very_negative))
    assert all(np.isfinite(g) for g in grads)


def test_cost_functions():
    lengths = np.array([0, 1, 10, 511])
    np.testing.assert_allclose(log_cost(lengths, 0.2), 0.2 * np.log(1 + lengths), rtol=1e-6)
    np.testing.assert_allclose(linear_cost(lengths, 0.2), 0.2 * lengths, rtol=1e-6)
    np.testing.assert_allclose(chain_cost(lengths, cost="linear", gamma=0.5), 0.5 * lengths, rtol=1e-6)
    assert log_cost(0) == 0.0 and linear_cost(0) == 0.0


@settings(max_examples=40, deadline=None)
@given(lp_chain=st.floats(-50, 0), lp_direct=st.floats(-50, 0),
       short=st.integers(0, 2000), extra=st.integers(1, 2000),
       gamma=st.floats(1e-3, 1.0), cost=st.sampled_from(["log", "linear"]))
def test_voc_decreases_with_chain_length(lp_chain, lp_direct, short, extra, gamma, cost):
    r = voc_reward(lp_chain, lp_direct, jnp.array([short, short + extra]), gamma=gamma, cost=cost)
    assert r[1] < r[0]


@settings(max_examples=40, deadline=None)
@given(lp_direct=st.floats(-50, 0), low=st.floats(-50, 0), gain=st.floats(0.5, 20),
       length=st.integers(0, 1000))
def test_voc_increases_with_answer_probability(lp_direct, low, gain, length):
    r = voc_reward(jnp.array([low, min(low + gain, 0.0)]), lp_direct, length)
    assert r[1] >= r[0]


def test_voc_jit_and_vmap():
    rng = np.random.default_rng(1)
    lp_chain = jnp.asarray(rng.uniform(-10, 0, size=(3, 5)), jnp.float32)
    lp_direct = jnp.asarray(rng.uniform(-10, 0, size=(3,)), jnp.float32)
    length = jnp.asarray(rng.integers(0, 100, size=(3, 5)), jnp.int32)
    eager = voc_reward(lp_chain, lp_direct[:, None], length, cost="linear", gamma=0.01)
    jitted = jax.jit(lambda a, b, c: voc_reward(a, b, c, cost="linear", gamma=0.01))(
        lp_chain, lp_direct[:, None], length)
    mapped = jax.vmap(lambda a, b, c: voc_reward(a, b, c, cost="linear", gamma=0.01))(
        lp_chain, lp_direct, length)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(mapped, eager, rtol=1e-6)


def test_voc_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown chain cost 'quadratic'"):
        voc_reward(-1.0, -2.0, 3, cost="quadratic")
    with pytest.raises(ValueError, match="eps must be > 0"):
        voc_reward(-1.0, -2.0, 3, eps=0.0)
