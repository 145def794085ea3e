"""Meta-cognitive fine-tuning's labels and targets on crafted samples (metajax.algorithms.mft)."""

import dataclasses

import numpy as np
import pytest

from metajax.algorithms.mft import Label, MFTConfig, answer_ids, exam_target, label, level_options
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
    assert answer_ids(POLICY, RULES, lab, 150, position=2, question="1+2+3=?") == POLICY.encode(
        "Q1+2+3=? 150 <L0>" + DIRECT)


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
    skip = POLICY.decode(answer_ids(POLICY, RULES, lab, 150, question="1+2+3=?"))
    assert skip == "P1+2+3=? 150 <L3> [Assistant] NA\n"


def test_a_correct_answer_past_the_last_level_is_not_a_label():
    long_thought = " <thought> " + "1+2+3 = " * 12 + "6 </thought>\n[Assistant] 6\n"  # > 100 tokens
    lab = label([_sample("<L2>" + long_thought)], RULES, "shortest", POLICY.stop_ids)
    assert lab.level == RULES.skip_level


def _labelled(text, level):
    return Label(level, tuple(POLICY.encode(text)), 1)


def test_stage2_target_skips_what_would_overrun_the_budget():
    # Tags "Q1+2+3=? 90 <Lk>" are 16 tokens. Costs: the L2 answer 16 + 60 tokens, the L0 answers
    # 16 + 15 each; the skip answer 32.
    heavy = _labelled(" <thought> " + "x" * 23 + " </thought>\n[Assistant] 6\n", 2)
    light = _labelled(DIRECT, 0)
    assert len(answer_ids(POLICY, RULES, heavy, 90, question="1+2+3=?")) == 76
    assert len(answer_ids(POLICY, RULES, light, 90, question="1+2+3=?")) == 31
    labels = [[heavy], [light], [light]]
    sheet = Exam("three", (QUESTION,) * 3, (1, 1, 1))
    # Budget 95: solving the heavy first leaves 19 < 31 for the rest (1 solved, in order); the best
    # plan skips it (32) and solves both light ones (32 + 62 = 94 <= 95).
    in_order = POLICY.decode(exam_target(POLICY, RULES, sheet, labels, 95, "in_order"))
    best = POLICY.decode(exam_target(POLICY, RULES, sheet, labels, 95, "best"))
    assert in_order.startswith("P1+2+3=? 95 <L2> <thought>") and in_order.count("<L3>") == 2
    assert best == ("P1+2+3=? 95 <L3> [Assistant] NA\nQ1+2+3=? 95 <L0> [Assistant] 6\n"
                    "R1+2+3=? 95 <L0> [Assistant] 6\n")
    # Budget 65: after the first light answer (31) the second (31 more) fits, the third would overrun
    # (62 + 31 > 65): both plans skip it rather than start an answer the budget cuts.
    light_sheet = [[light]] * 3
    for plan in ("best", "in_order"):
        text = POLICY.decode(exam_target(POLICY, RULES, sheet, light_sheet, 65, plan))
        assert text.count("<L0>") == 2 and text.endswith("R1+2+3=? 65 <L3> [Assistant] NA\n"), (plan, text)
    # A budget that fits everything solves everything in both plans, and ends with the stop token.
    for plan in ("best", "in_order"):
        tokens = exam_target(POLICY, RULES, sheet, labels, 250, plan)
        assert tokens[-1] == toy.EOS_ID and POLICY.decode(tokens).count("<L3>") == 0


def test_surest_rule_weighs_each_level_by_how_often_its_samples_were_right():
    # Level-0: one right of two direct answers, (1 + 1) / (2 + 2); Level-1: two right of two
    # thoughts, (2 + 1) / (2 + 2).
    samples = [_sample("<L0>" + DIRECT), _sample("<L0>" + WRONG), _sample("<L1>" + THOUGHT), _sample("<L2>" + THOUGHT)]
    options = level_options(samples, RULES, POLICY.stop_ids)
    assert [(o.level, o.correct, o.success) for o in options] == [(0, 1, 0.5), (1, 2, 0.75)]
    assert POLICY.decode(options[0].solution) == DIRECT and POLICY.decode(options[1].solution) == THOUGHT
    assert label(samples, RULES, "shortest", POLICY.stop_ids).level == 0
    surest = label(samples, RULES, "surest", POLICY.stop_ids)
    assert (surest.level, surest.correct, surest.success) == (1, 3, 0.75)
    # A tie goes to the cheaper level: one right direct answer, one right thought.
    assert label(samples[:1] + samples[2:3], RULES, "surest", POLICY.stop_ids).level == 0
    # An untagged sample (no level announced, so no solution span) spent no level: it does not lower
    # Level-0's success.
    untagged = _sample("garbage")
    assert untagged.predicted_level[0] == -1 and untagged.actual_level[0] == 0
    assert level_options(samples + [untagged], RULES, POLICY.stop_ids) == options


def test_expected_plan_takes_the_dear_sure_level_only_where_the_budget_allows():
    cheap = Label(0, tuple(POLICY.encode(DIRECT)), 1, 0.5)  # 15 tokens after a 16-17 token tag
    sure = Label(1, tuple(POLICY.encode(THOUGHT)), 2, 0.75)  # 52
    sheet = Exam("two", (QUESTION,) * 2, (1, 1))
    options = [[cheap, sure]] * 2
    # 150 tokens think on both (2 x 69, 1.5 expected); 105 fit one thought and one direct answer
    # (69 + 32: 1.25 against 1.0 for two direct answers); 70 fit two direct answers (2 x 31: 1.0),
    # and a thought (68) leaves too little for the other question (0.75).
    wide, middle, narrow = (POLICY.decode(exam_target(POLICY, RULES, sheet, options, b, "expected"))
                            for b in (150, 105, 70))
    assert wide.count("<L1> <thought>") == 2
    assert middle.count("<L1> <thought>") == 1 and middle.count("<L0> [Assistant] 6") == 1
    assert narrow.count("<L0> [Assistant] 6") == 2
    # "best" counts questions solved, each at its first option.
    assert POLICY.decode(exam_target(POLICY, RULES, sheet, [[sure]] * 2, 150, "best")).count("<L1>") == 2
    with pytest.raises(ValueError, match="stage-2 plan"):
        exam_target(POLICY, RULES, sheet, options, 150, "greedy")


def test_mft_config_rejects_bad_values():
    for bad, match in [(dict(samples_per_question=0), "samples_per_question"), (dict(label_rule="mean"), "label_rule"),
                       (dict(temperature=0.0), "temperature"), (dict(stage1_budget=0), "stage1_budget"),
                       (dict(stage2_budgets=()), "stage2_budgets"), (dict(stage2_budgets=(150, 0)), "stage2_budgets"),
                       (dict(stage2_plan="greedy"), "stage2_plan")]:
        with pytest.raises(ValueError, match=match):
            MFTConfig(**bad)


def test_labels_ignore_a_sample_cut_mid_answer():
    ids = POLICY.encode("<L1>" + THOUGHT)
    cut = read_exam(EXAM, ids[:30], POLICY.decode, TOY_EXAM, budget=30, level_bounds=TOY_LEVEL_BOUNDS, stopped=False)
    assert label([cut], RULES, "shortest", POLICY.stop_ids).level == RULES.skip_level
    np.testing.assert_array_equal(cut.correct, [False])
