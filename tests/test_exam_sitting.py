"""The toy exam splits, sitting exams with the toy models (metajax.envs.sitting) and a short RARL run
(metajax.algorithms.rarl)."""

from collections import Counter

import numpy as np
import pytest
from transformers import AutoTokenizer

from metajax.algorithms.grpo import GRPOConfig, run_grpo
from metajax.algorithms.rarl import ExamTask
from metajax.algorithms.toy_pretrain import SHIPPED_WORLD
from metajax.data.formats import TOY_EXAM
from metajax.envs.exam import make_exams
from metajax.envs.sitting import Action, ExamRules, sit, sit_planned
from metajax.envs.toy_exam import TOY_LEVEL_BOUNDS, toy_exam_splits
from metajax.models import load_hf
from metajax.pipelines import TOY_MODEL_DIRS
from metajax.sampling import Policy
from metajax.train import OptimizerConfig, read_metrics
from metajax.train.metrics import MetricsWriter

RULES = ExamRules(TOY_EXAM, TOY_LEVEL_BOUNDS)


def _policy(name):
    directory = TOY_MODEL_DIRS[name]
    if not (directory / "config.json").is_file():
        pytest.skip(f"toy model {name} not built")
    params, cfg = load_hf(directory)
    return Policy.of(params, cfg, AutoTokenizer.from_pretrained(str(directory)))


@pytest.fixture(scope="module")
def tiers():
    return toy_exam_splits(SHIPPED_WORLD)


def test_toy_exam_splits_share_no_question_and_balance_the_training_tiers(tiers):
    train, test = tiers
    assert not {q.question for t in train for q in t} & {q.question for t in test for q in t}
    # Within a training tier every operand count is equally common (4-operand sums outnumber
    # 3-operand ones four to one before balancing); unbalanced, the tier keeps all of them.
    unbalanced, _ = toy_exam_splits(SHIPPED_WORLD, balanced=False)
    for tier, full in zip(train, unbalanced):
        counts = Counter(q.difficulty for q in tier)
        full_counts = Counter(q.difficulty for q in full)
        assert len(set(counts.values())) == 1 and counts.keys() == full_counts.keys()
        assert next(iter(counts.values())) == min(full_counts.values())
    assert Counter(q.difficulty for q in unbalanced[1])[4] > 3 * Counter(q.difficulty for q in unbalanced[1])[3]


def test_planned_sitting_writes_the_forced_actions_and_counts_every_token(tiers):
    policy = _policy("toy_thinker")
    exams = make_exams(tiers[1], 4, ordering="hard", seed=0)
    plans = [[Action(2, "think"), Action(3), Action(0, "direct")] for _ in exams]
    out = sit_planned(policy, RULES, exams, [150] * 4, plans, cap=[250] * 4)
    for exam, o in zip(exams, out):
        text = policy.decode(o.ids)
        q = [question.question for question in exam.questions]  # each forced tag restates its question and budget
        assert text.startswith(f"P{q[0]} 150 <L2> <thought>") and f"Q{q[1]} 150 <L3> [Assistant] NA\n" in text
        assert f"R{q[2]} 150 <L0> [Assistant]" in text
        np.testing.assert_array_equal(o.predicted_level, [2, 3, 0])
        np.testing.assert_array_equal(o.skipped, [False, True, False])
        assert o.tokens == min(150, len(o.ids)) and len(o.ids) <= 250
        assert o.position_tokens.sum() == o.tokens
    # A budget reached mid-sheet: the cap stops generation, the later questions get no segment.
    short = sit_planned(policy, RULES, exams[:1], [30], plans[:1])
    assert len(short[0].ids) <= 30 + len(policy.encode(f"P{exams[0].questions[0].question} 30 <L2> <thought>"))
    with pytest.raises(ValueError, match="budgets must be >= 0"):
        sit(policy, RULES, exams[:1], [-1])


def test_the_exam_base_restates_each_question_and_the_budget(tiers):
    """The shipped exam base copies each labelled question and the stated budget into its tags: the
    level MFT teaches it to announce is read off that copy (README, ROI section)."""
    policy = _policy("toy_exam")
    exams = make_exams(tiers[1], 8, ordering="medium", seed=3)
    for budget in (170, 240):
        for exam, out in zip(exams, sit(policy, RULES, exams, [budget] * len(exams), cap=[320] * len(exams))):
            tags = [m.group(0) for m in TOY_EXAM.level_pattern.finditer(policy.decode(out.ids))]
            assert [tag.rsplit(" <L", 1)[0] for tag in tags] == [
                f"{TOY_EXAM.label(j)}{q.question} {budget}" for j, q in enumerate(exam.questions, 1)], tags


def test_rarl_raises_the_exam_score(tiers, tmp_path):
    """One-question exams of the easy tier, budget 60: the exam base announces random levels, so a
    third of its right answers score; Dr. GRPO on the exam reward teaches it to announce the level it
    then spends."""
    policy = _policy("toy_exam")
    exams = make_exams(tiers[0][:1], 64, questions_per_exam=1, ordering="medium", seed=0)
    task = ExamTask(policy, ExamRules(TOY_EXAM, TOY_LEVEL_BOUNDS), [(exam, 60) for exam in exams])
    config = GRPOConfig(max_steps=12, prompts_per_step=8, num_generations=8, num_iterations=1,
                        max_completion_length=60, temperature=1.0, save_steps=100, learning_rate=3e-4,
                        lr_scheduler_type="constant")
    with MetricsWriter(tmp_path) as metrics:
        run_grpo(policy, task, config, OptimizerConfig(learning_rate=3e-4, max_grad_norm=1.0), tmp_path,
                 metrics=metrics, progress=False, desc="rarl")
    scores = [r["metrics"]["score"] for r in read_metrics(tmp_path) if r["stage"] == "rarl/step"]
    assert len(scores) == 12
    assert np.mean(scores[-3:]) >= scores[0] + 0.1, scores
