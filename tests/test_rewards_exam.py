"""ROI-Reasoning's exam reward, levels and regret."""

import itertools

import jax
import numpy as np
import pytest

from metajax.rewards import exam_reward, exam_score, level_of_tokens, regret


def test_exam_reward_truth_table():
    rows = list(itertools.product([False, True], [0, 1, 2], [0, 1, 2], [False, True]))
    correct, predicted, actual, skipped = (np.array(col) for col in zip(*rows))
    want = [float(c and p == a and not s) for c, p, a, s in rows]
    np.testing.assert_array_equal(exam_reward(correct, predicted, actual, skipped), want)


def test_exam_score_sums_over_questions():
    correct = np.array([[True, True, False], [True, True, True]])
    predicted = np.array([[0, 1, 2], [2, 1, 0]])
    actual = np.array([[0, 2, 2], [2, 1, 0]])
    skipped = np.array([[False, False, False], [False, False, True]])
    np.testing.assert_array_equal(exam_score(correct, predicted, actual, skipped), [1.0, 2.0])


def test_level_of_tokens_boundaries_are_inclusive_upper_bounds():
    counts = np.array([0, 1, 256, 257, 512, 513, 1024, 1025, 5000])
    np.testing.assert_array_equal(level_of_tokens(counts), [0, 0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(level_of_tokens(np.array([[8, 9], [16, 17]]), thresholds=(8, 16)),
                                  [[0, 1], [1, 2]])
    assert level_of_tokens(np.int32(300)).dtype == np.int32


def test_level_of_tokens_rejects_bad_thresholds():
    for bad in [(), (256, 256), (512, 256), (0, 10)]:
        with pytest.raises(ValueError, match="strictly increasing positive"):
            level_of_tokens(10, thresholds=bad)


def test_regret():
    np.testing.assert_allclose(regret(np.array([3.0, 2.0, 0.0]), np.array([3.0, 4.0, 2.0])),
                               [0.0, 0.5, 1.0])
    assert np.isnan(regret(0.0, 0.0)) and np.isnan(regret(1.0, 0.0))


def test_jit_and_vmap():
    rng = np.random.default_rng(0)
    shape = (4, 3)
    correct, skipped = rng.random(shape) < 0.6, rng.random(shape) < 0.2
    predicted = rng.integers(0, 3, shape)
    actual = level_of_tokens(rng.integers(0, 1100, shape))
    eager = exam_score(correct, predicted, actual, skipped)
    np.testing.assert_array_equal(jax.jit(exam_score)(correct, predicted, actual, skipped), eager)
    np.testing.assert_array_equal(jax.vmap(exam_score)(correct, predicted, actual, skipped), eager)
    np.testing.assert_array_equal(jax.jit(level_of_tokens, static_argnums=1)(np.array([300]), (256, 512)),
                                  [1])
