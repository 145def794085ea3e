"""The OS-MCKP oracle, the greedy knapsack and exam drawing (metajax.envs.exam)."""

import itertools

import numpy as np
import pytest

from metajax.data.example import Example
from metajax.envs.exam import (check_disjoint, greedy_knapsack, make_exams, oracle_value, policy_value,
                               simulate_policy)


def _random_instance(rng, n, actions, num_costs):
    success = rng.random((n, actions))
    cost_pmf = rng.random((n, actions, num_costs)) ** 3  # peaked, with some near-zero bins
    cost_pmf /= cost_pmf.sum(-1, keepdims=True)
    return success, cost_pmf


@pytest.mark.parametrize("n,actions,num_costs,budget", [(2, 2, 3, 2), (3, 2, 3, 2), (2, 3, 4, 3)])
def test_oracle_equals_the_best_of_all_policies(n, actions, num_costs, budget):
    rng = np.random.default_rng(n * 100 + actions * 10 + budget)
    for _ in range(3):
        success, cost_pmf = _random_instance(rng, n, actions, num_costs)
        value, policy = oracle_value(success, cost_pmf, budget)
        assert policy.shape == (n, budget + 1)
        best = max(policy_value(success, cost_pmf, budget, np.reshape(table, (n, budget + 1)))
                   for table in itertools.product(range(actions), repeat=n * (budget + 1)))
        assert value == pytest.approx(best, abs=1e-12)
        assert policy_value(success, cost_pmf, budget, policy) == pytest.approx(value, abs=1e-12)


def test_oracle_policy_matches_monte_carlo():
    rng = np.random.default_rng(7)
    success, cost_pmf = _random_instance(rng, 3, 4, 12)
    value, policy = oracle_value(success, cost_pmf, 15)
    scores = simulate_policy(success, cost_pmf, 15, policy, n_exams=200_000, seed=1)
    stderr = scores.std() / np.sqrt(len(scores))
    assert abs(scores.mean() - value) < 4 * stderr


def test_oracle_skips_a_question_that_would_starve_the_rest():
    # Question 0: solve (costs 8 of 10, scores 1) or skip (costs 0). Questions 1 and 2: solve for
    # 4 tokens each, scoring 1. Solving question 0 leaves 2 tokens: 1 point; skipping it gives 2.
    cost_pmf = np.zeros((3, 2, 11))
    cost_pmf[0, 0, 8] = cost_pmf[1, 0, 4] = cost_pmf[2, 0, 4] = 1.0
    cost_pmf[:, 1, 0] = 1.0
    success = np.array([[1.0, 0.0]] * 3)
    value, policy = oracle_value(success, cost_pmf, 10)
    assert value == pytest.approx(2.0)
    assert policy[0, 10] == 1 and policy[1, 10] == 0 and policy[2, 6] == 0
    # With 12 tokens everything fits.
    assert oracle_value(success, cost_pmf, 16)[0] == pytest.approx(3.0)


def test_a_cost_over_the_budget_cuts_the_exam():
    # One action that overruns with probability 1/2: the expected score halves, and the second
    # question (cheap, sure) is lost on the cut branch too.
    cost_pmf = np.zeros((2, 1, 6))
    cost_pmf[0, 0, [1, 5]] = 0.5
    cost_pmf[1, 0, 0] = 1.0
    value, _ = oracle_value(np.ones((2, 1)), cost_pmf, 4)
    assert value == pytest.approx(0.5 * 2.0)


@pytest.mark.parametrize("bad", [
    dict(success=np.ones((2, 2)), cost_pmf=np.full((2, 3, 2), 0.5), budget=3),
    dict(success=np.ones((1, 1)), cost_pmf=np.full((1, 1, 2), 0.4), budget=3),
    dict(success=np.ones((1, 1)), cost_pmf=np.full((1, 1, 2), 0.5), budget=-1),
    dict(success=np.full((1, 1), 1.5), cost_pmf=np.full((1, 1, 2), 0.5), budget=3),
])
def test_oracle_refuses_a_malformed_cost_model(bad):
    with pytest.raises(ValueError, match="oracle"):
        oracle_value(**bad)


def test_greedy_knapsack_hand_worked():
    # Centroids 128/384/768 (ROI's), budget 1024: ascending 128 (q2), 384 (q0), then 768 (q1)
    # overflows (1280 > 1024); q3 was skipped by the model.
    assert greedy_knapsack([384, 768, 128, None], 1024) == (True, False, True, False)
    assert greedy_knapsack([384, 384, 384], 768) == (True, True, False)
    assert greedy_knapsack([], 10) == ()
    with pytest.raises(ValueError, match="below zero"):
        greedy_knapsack([1], -1)


def _tier(name, n):
    return [Example(id=f"{name}{i}", question=f"{name} question {i}", answer="1", answer_type="numeric",
                    dataset=name) for i in range(n)]


def test_exams_draw_one_question_per_tier_in_each_ordering():
    tiers = [_tier("easy", 10), _tier("medium", 10), _tier("hard", 10)]
    hard = make_exams(tiers, 50, ordering="hard", seed=3)
    assert all(exam.tiers == (2, 1, 0) for exam in hard)
    assert all(exam.easy_first().tiers == (0, 1, 2) for exam in hard)
    medium = make_exams(tiers, 200, ordering="medium", seed=3)
    assert {exam.tiers for exam in medium} == set(itertools.permutations(range(3)))
    for exam in medium:
        assert [q.dataset for q in exam.questions] == [("easy", "medium", "hard")[t] for t in exam.tiers]
    assert make_exams(tiers, 5, seed=3) == make_exams(tiers, 5, seed=3)
    assert make_exams(tiers, 5, seed=3) != make_exams(tiers, 5, seed=4)
    for a, b in zip(hard, make_exams(tiers, 50, ordering="medium", seed=3)):
        assert a.id == b.id
        assert sorted(q.id for q in a.questions) == sorted(q.id for q in b.questions)
        assert b.easy_first() == a.easy_first()
    longer = make_exams(tiers[:1], 20, questions_per_exam=4, seed=0)
    assert all(len({q.id for q in exam.questions}) == 4 for exam in longer)


def test_exam_drawing_refuses_bad_requests():
    tiers = [_tier("easy", 2)]
    with pytest.raises(ValueError, match="ordering"):
        make_exams(tiers, 1, ordering="random")
    with pytest.raises(ValueError, match="tier 0 has 2"):
        make_exams(tiers, 1, questions_per_exam=3)
    train = make_exams([_tier("a", 5)], 3, prefix="train")
    check_disjoint(train, make_exams([_tier("b", 5)], 3, prefix="test"))
    with pytest.raises(ValueError, match="also appear in training"):
        check_disjoint(train, make_exams([_tier("a", 5)], 3, prefix="test"))


def test_training_sheets_cycle_the_given_budgets_over_both_orderings():
    from metajax.eval.roi_eval import ROIConfig, training_sheets
    tiers = [_tier("easy", 10), _tier("medium", 10), _tier("hard", 10)]
    config = ROIConfig(budgets=(150, 230), orderings=("medium", "hard"))
    run = training_sheets(tiers, 12, config, seed=0, prefix="mft")
    assert [b for _, b in run] == [150, 230] * 6
    wide = training_sheets(tiers, 12, config, seed=0, prefix="mft", budgets=(100, 150, 260))
    assert [b for _, b in wide] == [100, 150, 260] * 4
    assert [e for e, _ in wide] == [e for e, _ in run]  # the same sheets, only the stated budgets differ
    assert {e.tiers == (2, 1, 0) for e, _ in run} == {True, False}  # hard-first and mixed sheets both
