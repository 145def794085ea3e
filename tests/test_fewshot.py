"""Few-shot selection: the dataset's own rationales, else the shipped shots; a shortfall is an error."""

import pytest

from metajax.data.example import Example
from metajax.data.fewshot import SHIPPED_FILES, select_fewshot, shipped_shots
from metajax.data.graders import grade_example
from metajax.data.prompts import PromptConfig, render_prompt


def _row(i, rationale=None):
    return Example(id=f"r{i}", question=f"What is {i}+1?", answer=str(i + 1), answer_type="numeric",
                   dataset="gsm8k", rationale=rationale)


@pytest.mark.parametrize("dataset", sorted(SHIPPED_FILES))
def test_shipped_shots_are_valid_worked_examples(dataset):
    shots = shipped_shots(dataset)
    assert len(shots) >= 5 and len({s.id for s in shots}) == len(shots)
    for shot in shots:
        assert shot.rationale and shot.dataset == dataset
        assert grade_example(f"<thought> {shot.rationale} </thought>\n[Assistant] {shot.answer}\n", shot)
    prompt = render_prompt(PromptConfig(style="cot"), shots[0], fewshot=shots[1:])
    assert prompt.count("<thought>") == len(shots) - 1


def test_rows_without_rationales_fall_back_to_the_shipped_shots():
    arc_rows = [Example(id="x", question="Q?", answer="A", answer_type="choice", dataset="arc_easy", choices=("a", "b"))]
    assert select_fewshot("arc_easy", arc_rows, 4) == shipped_shots("arc_easy")[:4]
    with pytest.raises(ValueError, match=r"data.fewshot is 6 but arc_easy has 5 shipped shots.*at most 5"):
        select_fewshot("arc_easy", arc_rows, 6)


def test_own_rationales_come_first_and_a_shortfall_is_an_error():
    rows = [_row(0), _row(1, "1+1=2"), _row(2), _row(3, "3+1=4")]
    assert [ex.id for ex in select_fewshot("gsm8k", rows, 2)] == ["r1", "r3"]
    with pytest.raises(ValueError, match="gsm8k has 2 training rows with a rationale in train.jsonl"):
        select_fewshot("gsm8k", rows, 3, where=" in train.jsonl")
    with pytest.raises(ValueError, match="gsm8k has 0 training rows"):
        select_fewshot("gsm8k", [], 1)
    assert select_fewshot("gsm8k", [], 0) == []


def test_questions_from_one_file_are_split_without_overlap(tmp_path):
    # GSM8K's real config trains and evaluates on the one offline file: shots, training and
    # evaluated questions must still be disjoint.
    import json

    from metajax.config import load_config
    from metajax.pipelines import load_questions
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(40)]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(None, ["data.dataset=gsm8k", f"data.train_path={path}", f"data.eval_path={path}",
                                "data.num_eval=10", "data.fewshot=3"])
    train, evaluated, shots, _ = load_questions(config)
    ids = [{ex.id for ex in part} for part in (train, evaluated, shots)]
    assert [len(part) for part in ids] == [27, 10, 3]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
