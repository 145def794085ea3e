"""Reading exam completions (metajax.envs.answers) and the exam figures (metajax.eval.exam_metrics)."""

import collections

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from metajax.data import toy
from metajax.data.example import Example
from metajax.data.formats import ROI_EXAM, TOY_EXAM
from metajax.envs.answers import read_exam
from metajax.envs.exam import Exam
from metajax.envs.toy_exam import TOY_LEVEL_BOUNDS, solution_text
from metajax.eval.exam_metrics import exam_summary

TOKENIZER = toy.build_tokenizer()


def _toy_question(operands):
    return toy._example("q" + "-".join(map(str, operands)), operands)


EXAM = Exam("e0", (_toy_question([3, 4]), _toy_question([1, 2, 3]), _toy_question([5, 6, 7, 1, 2])), (0, 1, 2))


def _ids(text, eos=True):
    return TOKENIZER.encode(text, add_special_tokens=False).ids + ([toy.EOS_ID] if eos else [])


def _read(ids, budget=1000, exam=EXAM, stopped=True):
    return read_exam(exam, ids, lambda x: TOKENIZER.decode(x, skip_special_tokens=True), TOY_EXAM,
                     budget=budget, level_bounds=TOY_LEVEL_BOUNDS, stopped=stopped)


def _toy_response(levels_and_thinks):
    answers = [(level, None if think is None else solution_text(q, think))
               for q, (level, think) in zip(EXAM.questions, levels_and_thinks)]
    return TOY_EXAM.response(answers, skip_level=len(TOY_LEVEL_BOUNDS), questions=[q.question for q in EXAM.questions],
                             budget=150)


FIRST = "P3+4=? 150 <L0> [Assistant] 7\n"
SECOND = "Q1+2+3=? 150 <L1> <thought> 1+2+3 = 3+3 = 6 </thought>\n[Assistant] 6\n"
THIRD = "R5+6+7+1+2=? 150 <L3> [Assistant] NA\n"


def test_a_well_formed_exam_is_read_token_exactly():
    text = _toy_response([(0, False), (1, True), (3, None)])
    assert text == FIRST + SECOND + THIRD
    out = _read(_ids(text))
    np.testing.assert_array_equal(out.predicted_level, [0, 1, 3])
    np.testing.assert_array_equal(out.correct, [True, True, False])
    np.testing.assert_array_equal(out.skipped, [False, False, True])
    # From the end of the tag to the end of the answer line, newline excluded: one token per char.
    solutions = [len(" [Assistant] 7"), len(" <thought> 1+2+3 = 3+3 = 6 </thought>\n[Assistant] 6"),
                 len(" [Assistant] NA")]
    np.testing.assert_array_equal(out.solution_tokens, solutions)
    np.testing.assert_array_equal(out.actual_level, [0, 1, 0])
    np.testing.assert_array_equal(out.score, [1.0, 1.0, 0.0])
    # Segments run tag to tag (a tag starts at its restated question); the last one keeps the EOS.
    np.testing.assert_array_equal(out.position_tokens, [len(FIRST), len(SECOND), len(THIRD) + 1])
    assert out.tokens == len(text) + 1 and not out.truncated
    tags = [len("P3+4=? 150 <L0>"), len("Q1+2+3=? 150 <L1>"), len("R5+6+7+1+2=? 150 <L3>")]
    np.testing.assert_array_equal(out.solution_start, [tags[0], len(FIRST) + tags[1], len(FIRST + SECOND) + tags[2]])
    np.testing.assert_array_equal(out.segment_end, [len(FIRST), len(FIRST + SECOND), len(text) + 1])


def test_a_wrong_level_scores_zero_but_stays_accurate():
    out = _read(_ids(_toy_response([(1, False), (2, True), (0, False)])))
    np.testing.assert_array_equal(out.correct, [True, True, True])
    np.testing.assert_array_equal(out.budget_correct, [True, True, True])
    np.testing.assert_array_equal(out.actual_level, [0, 1, 0])
    np.testing.assert_array_equal(out.score, [0.0, 0.0, 1.0])


def test_truncation_mid_question():
    text = _toy_response([(0, False), (1, True), (2, True)])
    ids = _ids(text)
    budget = len(FIRST) + 30  # inside the second question's thought
    cut = _read(ids[:budget], budget=budget, stopped=False)
    assert cut.truncated and cut.tokens == budget
    np.testing.assert_array_equal(cut.correct, [True, False, False])
    np.testing.assert_array_equal(cut.predicted_level, [0, 1, -1])
    np.testing.assert_array_equal(cut.position_tokens, [len(FIRST), 30, 0])
    # The same tokens generated uncut: accurate on both, but the second ends past the budget.
    uncut = _read(ids, budget=budget)
    assert uncut.truncated and uncut.tokens == budget
    np.testing.assert_array_equal(uncut.correct, [True, True, True])
    np.testing.assert_array_equal(uncut.budget_correct, [True, False, False])
    np.testing.assert_array_equal(uncut.score, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(uncut.position_tokens, [len(FIRST), 30, 0])


@pytest.mark.parametrize("text,predicted,correct", [
    # no tag on the first answer: the first tag opens question 0's segment (a tag without its
    # restated question still counts)
    ("[Assistant] 7\n<L1> <thought> 1+2+3 = 3+3 = 6 </thought>\n[Assistant] 6\n", [1, -1, -1],
     [False, False, False]),
    # two answers for one question: the grader reads the first answer line
    ("P3+4=? <L0> [Assistant] 8\n[Assistant] 7\nQ1+2+3=? <L0> [Assistant] 6\n", [0, 0, -1], [False, True, False]),
    # garbage
    ("%%$#@!!<<L>> 12 <thought> </thought>", [-1, -1, -1], [False, False, False]),
    ("", [-1, -1, -1], [False, False, False]),
    # more tags than questions: the extra one opens nothing
    ("P3+4=? <L0> [Assistant] 7\nQ1+2+3=? <L0> [Assistant] 6\nR5+6+7+1+2=? <L0> [Assistant] 21\n"
     "S1+1=? <L2> [Assistant] 1\n", [0, 0, 0], [True, True, True]),
])
def test_malformed_output_gets_a_defined_outcome(text, predicted, correct):
    out = _read(_ids(text))
    np.testing.assert_array_equal(out.predicted_level, predicted)
    np.testing.assert_array_equal(out.correct, correct)
    assert out.score.shape == (3,) and set(out.score.tolist()) <= {0.0, 1.0}
    assert out.tokens == len(text) + 1


def test_an_invented_question_ends_the_last_answer():
    answer = "P1+2+3=? <L0> [Assistant] 6\n"
    one = Exam("one", EXAM.questions[1:2], (1,))
    out = _read(_ids(answer + "Q5+5=? <L1> [Assistant] 9\n"), exam=one)
    assert out.segment_end[0] == len(answer)
    assert out.correct[0] and out.position_tokens[0] == out.segment_end[0]


def test_negative_budget_is_refused():
    with pytest.raises(ValueError, match="below zero"):
        _read(_ids("<L0> 1"), budget=-1)


def _byte_level_bpe():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [ROI_EXAM.response([(1, "Twelve times three is 36, so \\boxed{36}"), (3, None)], 3)] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


def test_roi_format_counts_sampled_bpe_tokens():
    tok = _byte_level_bpe()
    questions = tuple(Example(id=f"m{i}", question=q, answer=a, answer_type="numeric", dataset="gsm8k")
                      for i, (q, a) in enumerate([("12*3?", "36"), ("7+5?", "12"), ("2^10?", "1024")]))
    exam = Exam("roi", questions, (0, 1, 2))
    text = ROI_EXAM.response([(1, "Twelve times three is 36, so \\boxed{36}"), (0, "\\boxed{13}"),
                              (3, None)], 3) + "\n\nThanks!"
    assert text.startswith("<predicted_level>Level-1</predicted_level> Twelve")
    enc = tok.encode(text)
    ids = enc.ids
    out = read_exam(exam, ids, tok.decode, ROI_EXAM, budget=10_000, level_bounds=(5, 10, 1000))
    np.testing.assert_array_equal(out.predicted_level, [1, 0, 3])
    np.testing.assert_array_equal(out.correct, [True, False, False])
    np.testing.assert_array_equal(out.skipped, [False, False, True])
    # Independent count from the encoder's offsets: tokens ending after the tag and by the answer.
    first_tag_end = text.index("</predicted_level>") + len("</predicted_level>")
    box_end = text.index("{36}") + len("{36}")
    expected = sum(1 for _, end in enc.offsets if first_tag_end < end <= box_end)
    assert out.solution_tokens[0] == expected and expected < box_end - first_tag_end
    assert out.tokens == len(ids)
    assert out.actual_level[0] == (expected > 5) + (expected > 10)
    np.testing.assert_array_equal(out.score, [float(out.actual_level[0] == 1), 0.0, 0.0])


def _outcome(exam_id, scores, correct, budget_correct, skipped, predicted, actual, tokens):
    from metajax.envs.answers import ExamOutcome
    arr = lambda x, t=bool: np.asarray(x, t)  # noqa: E731
    zeros = np.zeros(3, np.int32)
    return ExamOutcome(exam_id, arr([0, 1, 2], np.int32), arr(predicted, np.int32), arr(skipped),
                       arr(correct), arr(budget_correct), arr([5, 5, 5], np.int32), arr(actual, np.int32),
                       arr([1, 2, 3], np.int32), zeros, zeros, arr(scores, np.float32), tokens, False, ())


def test_exam_summary_against_hand_computed_values():
    outcomes = [
        _outcome("a", [1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 3], [0, 2, 0], 100),
        _outcome("b", [1, 1, 0], [1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 1, -1], [0, 1, 0], 50),
    ]
    easy = [
        _outcome("a", [1, 1, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 1, 3], [0, 1, 0], 90),
        _outcome("b", [1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0], [0, 1, 0], 60),
    ]
    s = exam_summary(outcomes, easy_first=easy, oracle=0.9, num_levels=4, n_boot=200)
    assert s["score"] == pytest.approx(3 / 6)
    assert s["accuracy"] == pytest.approx(5 / 6)
    assert s["budget_accuracy"] == pytest.approx(3 / 6)
    assert s["skip_rate"] == pytest.approx(1 / 6)
    # Solved questions with a tag: a0, a1, b0, b1 -> hits a0, b0, b1.
    assert s["level_accuracy"] == pytest.approx(3 / 4)
    assert s["mean_tokens"] == pytest.approx(75.0)
    assert s["regret"] == pytest.approx((5 / 6 - 3 / 6) / (5 / 6))
    assert s["oracle_gap"] == pytest.approx(0.9 - 0.5)
    assert s["tokens_by_position"] == [1.0, 2.0, 3.0]
    for name, (low, high) in s["ci"].items():
        assert low <= s[name] + 1e-12 and s[name] <= high + 1e-12, name
    confusion = np.array(s["level_confusion"])
    assert confusion.shape == (5, 4) and confusion.sum() == 6
    assert confusion[3, 0] == 1 and confusion[4, 0] == 1 and confusion[1, 2] == 1
    with pytest.raises(ValueError, match="same exams"):
        exam_summary(outcomes, easy_first=easy[::-1], num_levels=4)


def test_exam_corpus_holds_exams_drills_and_single_questions_in_their_shares():
    from metajax.algorithms.toy_pretrain import SHIPPED_WORLD
    from metajax.envs.toy_exam import ToyExamCorpus, exam_corpus

    spec = ToyExamCorpus(single_share=0.2, drill_share=0.3, max_drill_questions=6, skip_share=0.1)
    texts = exam_corpus(SHIPPED_WORLD, 1500, seed=4, spec=spec)
    assert texts == exam_corpus(SHIPPED_WORLD, 1500, seed=4, spec=spec)
    held_out = {ex.question for ex in toy.make_splits(SHIPPED_WORLD)[1] if ex.difficulty >= 3}
    kinds = collections.Counter()
    for text in texts:
        prompt, _, response = text.partition("\n")
        if prompt.startswith("[User] Copy: "):
            kinds["drill"] += 1
            listed = prompt[len("[User] Copy: "):].split(" ")
            assert 2 <= len(listed) <= 6 and [q[0] for q in listed] == list(TOY_EXAM.labels[:len(listed)])
            assert sorted(response.splitlines()) == sorted(listed)  # every question restated once, any order
        elif prompt.startswith("[User] Exam, "):
            kinds["exam"] += 1
            budget = int(prompt[len("[User] Exam, "):].split(" ")[0])
            listed = prompt.split(": ", 1)[1].split(" ")
            questions = tuple(toy._example(f"q{j}", _operands(q[1:])) for j, q in enumerate(listed))
            exam = Exam("corpus", questions, (0,) * len(questions))
            assert 1 <= len(questions) <= 3 and not {q.question for q in questions} & held_out
            ids = _ids(response)
            out = read_exam(exam, ids, lambda x: TOKENIZER.decode(x, skip_special_tokens=True), TOY_EXAM,
                            budget=1000, level_bounds=TOY_LEVEL_BOUNDS)
            # Each answer restates its own question after its label, and the budget, and is right
            # unless it skips.
            assert [m.group(0) for m in TOY_EXAM.level_pattern.finditer(response)] == [
                f"{q} {budget} <L{level}>" for q, level in zip(listed, out.predicted_level)]
            np.testing.assert_array_equal(out.correct, ~out.skipped)
        else:
            kinds["single"] += 1
    shares = {k: v / len(texts) for k, v in kinds.items()}
    assert abs(shares["single"] - 0.2) < 0.04 and abs(shares["drill"] - 0.3) < 0.04, shares
    with pytest.raises(ValueError, match="max_drill_questions"):
        ToyExamCorpus(max_drill_questions=11)
    with pytest.raises(ValueError, match="single_share"):
        ToyExamCorpus(single_share=0.8, drill_share=0.3)


def _operands(question):
    return [int(x) for x in question[:-2].split("+")]
