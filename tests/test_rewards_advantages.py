"""Group advantages and the RaM/STaR keep-masks: NumPy references and property tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from metajax.rewards import group_advantages, ram_keep_mask, star_keep_mask

KINDS = ["mean", "grpo", "dr_grpo"]


def _advantages_numpy(rewards, mask, kind):
    """Per group, over its valid members: R - mean, divided by (population std + 1e-8) for grpo."""
    out = np.zeros_like(rewards, dtype=np.float64)
    for g in range(rewards.shape[0]):
        valid = rewards[g][mask[g]].astype(np.float64)
        if valid.size == 0:
            continue
        a = valid - valid.mean()
        if kind == "grpo":
            a = a / (valid.std() + 1e-8)
        out[g][mask[g]] = a
    return out


@st.composite
def groups(draw, with_correct=False):
    """Rewards on a 1/4 grid (exact in float32, std either 0 or >= 1/8), a mask, maybe correctness."""
    # Few shapes (each costs a compile); the mask makes the groups ragged, empty or singletons.
    shape = draw(st.sampled_from([(1, 1), (1, 5), (3, 2), (4, 5)]))
    rewards = draw(hnp.arrays(np.int32, shape, elements=st.integers(-32, 32))).astype(np.float32) / 4
    mask = draw(hnp.arrays(bool, shape))
    if not with_correct:
        return rewards, mask
    return rewards, mask, draw(hnp.arrays(bool, shape))


@pytest.mark.parametrize("kind", KINDS)
def test_advantages_match_numpy_on_ragged_groups(kind):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(6, 5)).astype(np.float32)
    mask = rng.random((6, 5)) < 0.7
    mask[0] = False          # an empty group
    mask[1] = [True, False, False, False, False]  # a group of one
    got = group_advantages(rewards, kind=kind, mask=mask)
    assert got.shape == (6, 5) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _advantages_numpy(rewards, mask, kind), rtol=1e-5, atol=1e-6)


def test_grpo_uses_population_std():
    got = group_advantages(np.array([[0.0, 2.0]]), kind="grpo")
    np.testing.assert_allclose(got, [[-1.0, 1.0]], rtol=1e-6)  # std = 1 (ddof=0), not sqrt(2)


def test_constant_group_gets_exactly_zero_grpo_advantage():
    # Averaged in float32, these groups leave a rounding residue (~1e-8) that GRPO's 1e-8 would
    # blow up to an advantage of order 1.
    rewards = np.array([[0.1] * 7, [0.7] * 7, [2.9] * 7, [0.01] * 7], np.float32)
    for kind in KINDS:
        assert np.all(np.asarray(group_advantages(rewards, kind=kind)) == 0.0)


def test_padding_values_do_not_leak():
    rewards = np.array([[1.0, 3.0, np.nan, np.inf]], np.float32)
    mask = np.array([[True, True, False, False]])
    for kind in KINDS:
        got = np.asarray(group_advantages(rewards, kind=kind, mask=mask))
        np.testing.assert_allclose(got[0, :2], [-1.0, 1.0], rtol=1e-6)
        assert np.all(got[0, 2:] == 0.0)


@settings(max_examples=60, deadline=None)
@given(data=groups(), shift=st.integers(-400, 400), kind=st.sampled_from(KINDS))
def test_advantages_are_shift_invariant(data, shift, kind):
    rewards, mask = data
    base = group_advantages(rewards, kind=kind, mask=mask)
    shifted = group_advantages(rewards + np.float32(shift / 4), kind=kind, mask=mask)
    np.testing.assert_allclose(shifted, base, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(data=groups(), scale=st.floats(0.1, 10.0))
def test_grpo_advantages_are_scale_invariant(data, scale):
    rewards, mask = data
    base = group_advantages(rewards, kind="grpo", mask=mask)
    scaled = group_advantages(rewards * np.float32(scale), kind="grpo", mask=mask)
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(data=groups(), kind=st.sampled_from(KINDS))
def test_advantages_sum_to_zero_and_padding_gets_zero(data, kind):
    rewards, mask = data
    adv = np.asarray(group_advantages(rewards, kind=kind, mask=mask))
    assert adv.shape == rewards.shape
    assert np.all(adv[~mask] == 0.0)
    np.testing.assert_allclose(adv.sum(axis=-1), 0.0, atol=1e-4)
    if kind == "grpo":
        # Normalised groups have unit population variance over their valid members.
        for g in range(rewards.shape[0]):
            valid = rewards[g][mask[g]]
            if valid.size and valid.std() > 0:
                np.testing.assert_allclose((adv[g][mask[g]] ** 2).mean(), 1.0, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(data=groups(), kind=st.sampled_from(KINDS))
def test_advantages_match_numpy_property(data, kind):
    rewards, mask = data
    np.testing.assert_allclose(group_advantages(rewards, kind=kind, mask=mask),
                               _advantages_numpy(rewards, mask, kind), rtol=1e-5, atol=1e-5)


def test_ram_keep_mask_worked_example():
    rewards = np.array([
        [0.5, -0.2, 0.1, 0.0],    # mean 0.1: keep 0.5 (adv>0, R>=0), 0.1 (adv 0, R>=0); -0.2 adv<0
        [-0.3, -0.1, -0.5, 0.0],  # mean -0.225: -0.1 is correct with adv>0; 0.0 has R>=0
        [0.9, 0.8, 0.0, 0.0],     # no correct candidate: keep nothing
        [-0.4, -0.6, 0.2, 9.0],   # 9.0 is padding: mean over 3 is -0.2667
    ], np.float32)
    correct = np.array([
        [True, True, False, False],
        [False, True, False, False],
        [False, False, False, False],
        [False, True, False, True],
    ])
    mask = np.array([[True] * 4, [True] * 4, [True] * 4, [True, True, True, False]])
    want = np.array([
        [True, False, True, False],
        [False, True, False, True],
        [False, False, False, False],
        [False, False, True, False],  # -0.4: incorrect and R<0; -0.6: adv<0; 0.2: R>=0, adv>0
    ])
    np.testing.assert_array_equal(ram_keep_mask(rewards, correct, mask), want)


@settings(max_examples=80, deadline=None)
@given(data=groups(with_correct=True))
def test_ram_keep_mask_invariants(data):
    rewards, mask, correct = data
    keep = np.asarray(ram_keep_mask(rewards, correct, mask))
    adv = np.asarray(group_advantages(rewards, kind="mean", mask=mask))
    assert keep.shape == rewards.shape and keep.dtype == bool
    assert not np.any(keep & ~mask)
    assert np.all(adv[keep] >= 0)
    assert np.all(correct[keep] | (rewards[keep] >= 0))
    unsolved = ~np.any(correct & mask, axis=-1)
    assert not np.any(keep[unsolved])
    # A solved group always keeps its best correct-or-nonnegative candidate, if it is the top reward.
    for g in np.flatnonzero(~unsolved):
        valid = np.flatnonzero(mask[g])
        top = valid[np.argmax(rewards[g][valid])]
        if correct[g, top] or rewards[g, top] >= 0:
            assert keep[g, top]


def test_star_keep_mask_keeps_correct_valid_rows():
    correct = np.array([[True, False, True], [False, False, False]])
    mask = np.array([[True, True, False], [True, True, True]])
    np.testing.assert_array_equal(star_keep_mask(correct, mask), [[True, False, False], [False] * 3])
    np.testing.assert_array_equal(star_keep_mask(correct), correct)


def test_jit_and_vmap():
    rng = np.random.default_rng(2)
    rewards = rng.normal(size=(3, 4, 5)).astype(np.float32)
    mask = rng.random((3, 4, 5)) < 0.8
    correct = rng.random((3, 4, 5)) < 0.5
    for kind in KINDS:
        eager = np.stack([group_advantages(r, kind=kind, mask=m) for r, m in zip(rewards, mask)])
        fn = lambda r, m: group_advantages(r, kind=kind, mask=m)
        np.testing.assert_allclose(jax.jit(jax.vmap(fn))(rewards, mask), eager, rtol=1e-6, atol=1e-7)
    eager_keep = np.stack([ram_keep_mask(*args) for args in zip(rewards, correct, mask)])
    np.testing.assert_array_equal(jax.jit(jax.vmap(ram_keep_mask))(rewards, correct, mask), eager_keep)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="unknown advantage kind 'ppo'"):
        group_advantages(np.zeros((2, 3)), kind="ppo")
    with pytest.raises(ValueError, match="mask shape"):
        group_advantages(np.zeros((2, 3)), kind="mean", mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="correct shape"):
        ram_keep_mask(np.zeros((2, 3)), np.ones((3, 2), bool))
