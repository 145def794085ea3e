"""Meta-cognitive fine-tuning's labels and targets on crafted samples (metajax.algorithms.mft)."""

import dataclasses

import numpy as np
import pytest

from metajax.algorithms.mft import Label, MFTConfig, answer_ids, exam_target, label
from metajax.data import toy
from metajax.data.formats import TOY_EXAM
from metajax.envs.answers import read_exam
from metajax.envs.exam import Exam
from metajax.envs.sitting import ExamRules
from metajax.envs.toy_exam import TOY_LEVEL_BOUNDS

TOKENIZER = toy.build_tokenizer()
RULES = ExamRules(TOY_EXAM, TOY_LEVEL_BOUNDS)
QUESTION = toy._example("q", [1, 2, 3])  # 6
EXAM = Exam("one", (QUESTION,), (1,))


@dataclasses.dataclass(frozen=True)
class _Policy:
    """What the label and target builders use of a Policy: the toy tokenizer and its stop ids."""

    stop_ids: tuple = (toy.EOS_ID,)

    def encode(self, text):
        return TOKENIZER.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return TOKENIZER.decode(list(ids), skip_special_tokens=True)


POLICY = _Policy()
DIRECT = " [Assistant] 6\n"  # 14 solution tokens: Level-0
THOUGHT = " <thought> 1+2+3 = 3+3 = 6 </thought>\n[Assistant] 6\n"  # 51: Level-1
WRONG = " [Assistant] 7\n"


def _sample(text):
    ids = POLICY.encode(text) + [toy.EOS_ID]
    return read_exam(EXAM, ids, POLICY.decode, TOY_EXAM, budget=200, level_bounds=TOY_LEVEL_BOUNDS)


def test_shortest_rule_takes_the_cheapest_correct_solution_and_its_sampled_tokens():
    samples = [_sample("<L2>" + THOUGHT), _sample("<L1>" + WRONG), _sample("<L2>" + DIRECT)]
    lab = label(samples, RULES, "shortest", POLICY.stop_ids)
    assert lab.level == 0 and lab.correct == 2
    # The sampled tokens after the (wrong) sampled tag, without the stop token.
    assert POLICY.decode(lab.solution) == DIRECT
    assert answer_ids(POLICY, RULES, lab, position=2, question="1+2+3=?") == POLICY.encode("Q1+2+3=? <L0>" + DIRECT)


def test_median_and_most_frequent_rules():
    samples = [_sample("<L0>" + THOUGHT), _sample("<L0>" + DIRECT), _sample("<L0>" + THOUGHT),
               _sample("<L0> <thought> 1+2+3 = 6 </thought>\n[Assistant] 6\n")]
    median = label(samples, RULES, "median", POLICY.stop_ids)
    assert median.level == 1 and POLICY.decode(median.solution) == " <thought> 1+2+3 = 6 </thought>\n[Assistant] 6\n"
    frequent = label(samples, RULES, "most_frequent", POLICY.stop_ids)
    # Level-1 three times, Level-0 once: the shortest Level-1 solution.
    assert frequent.level == 1 and frequent.correct == 4
    assert POLICY.decode(frequent.solution) == " <thought> 1+2+3 = 6 </thought>\n[Assistant] 6\n"


def test_no_correct_sample_means_skip():
    samples = [_sample("<L0>" + WRONG), _sample("garbage"), _sample("<L3> [Assistant] NA\n")]
    lab = label(samples, RULES, "shortest", POLICY.stop_ids)
    assert lab == Label(3, (), 0)
    assert POLICY.decode(answer_ids(POLICY, RULES, lab, question="1+2+3=?")) == "P1+2+3=? <L3> [Assistant] NA\n"


def test_a_correct_answer_past_the_last_level_is_not_a_label():
    long_thought = " <thought> " + "1+2+3 = " * 12 + "6 </thought>\n[Assistant] 6\n"  # > 100 tokens
    lab = label([_sample("<L2>" + long_thought)], RULES, "shortest", POLICY.stop_ids)
    assert lab.level == RULES.skip_level


def _labelled(text, level):
    return Label(level, tuple(POLICY.encode(text)), 1)


def test_stage2_target_skips_what_would_overrun_the_budget():
    # Tags "Q1+2+3=? <Lk>" are 13 tokens. Costs: the L2 answer 13 + 60 tokens, the L0 answers
    # 13 + 15 each; the skip answer 29.
    heavy = _labelled(" <thought> " + "x" * 23 + " </thought>\n[Assistant] 6\n", 2)
    light = _labelled(DIRECT, 0)
    assert len(answer_ids(POLICY, RULES, heavy, question="1+2+3=?")) == 73
    assert len(answer_ids(POLICY, RULES, light, question="1+2+3=?")) == 28
    labels = [heavy, light, light]
    sheet = Exam("three", (QUESTION,) * 3, (1, 1, 1))
    # Budget 90: solving the heavy first leaves 17 < 28 for the rest (1 solved, in order); the best
    # plan skips it (29) and solves both light ones (29 + 56 = 85 <= 90).
    in_order = POLICY.decode(exam_target(POLICY, RULES, sheet, labels, 90, "in_order"))
    best = POLICY.decode(exam_target(POLICY, RULES, sheet, labels, 90, "best"))
    assert in_order.startswith("P1+2+3=? <L2> <thought>") and in_order.count("<L3>") == 2
    assert best == "P1+2+3=? <L3> [Assistant] NA\nQ1+2+3=? <L0> [Assistant] 6\nR1+2+3=? <L0> [Assistant] 6\n"
    # Budget 60: after the first light answer (28) the second (28 more) fits, the third would overrun
    # (56 + 28 > 60): both plans skip it rather than start an answer the budget cuts.
    light_sheet = [light, light, light]
    for plan in ("best", "in_order"):
        text = POLICY.decode(exam_target(POLICY, RULES, sheet, light_sheet, 60, plan))
        assert text.count("<L0>") == 2 and text.endswith("R1+2+3=? <L3> [Assistant] NA\n"), (plan, text)
    # A budget that fits everything solves everything in both plans, and ends with the stop token.
    for plan in ("best", "in_order"):
        tokens = exam_target(POLICY, RULES, sheet, labels, 250, plan)
        assert tokens[-1] == toy.EOS_ID and POLICY.decode(tokens).count("<L3>") == 0


def test_mft_config_rejects_bad_values():
    for bad, match in [(dict(samples_per_question=0), "samples_per_question"), (dict(label_rule="mean"), "label_rule"),
                       (dict(temperature=0.0), "temperature"), (dict(stage1_budget=0), "stage1_budget"),
                       (dict(stage2_budgets=()), "stage2_budgets"), (dict(stage2_budgets=(150, 0)), "stage2_budgets")]:
        with pytest.raises(ValueError, match=match):
            MFTConfig(**bad)


def test_labels_ignore_a_sample_cut_mid_answer():
    ids = POLICY.encode("<L1>" + THOUGHT)
    cut = read_exam(EXAM, ids[:30], POLICY.decode, TOY_EXAM, budget=30, level_bounds=TOY_LEVEL_BOUNDS, stopped=False)
    assert label([cut], RULES, "shortest", POLICY.stop_ids).level == RULES.skip_level
    np.testing.assert_array_equal(cut.correct, [False])
