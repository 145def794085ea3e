"""Evaluation: strict and lenient grading, format-failure kinds, answer-only direct shots."""

import json

import pytest

from metajax.config import load_config
from metajax.data.example import Example
from metajax.eval import evaluate as evaluation
from metajax.eval.evaluate import format_failure, results_table, summarize, write_records
from metajax.pipelines import load_policy
from metajax.sampling.rollouts import Completion
from metajax.sampling.sampler import StopReason

ARC = Example(id="a1", question="Which is a mammal?", answer="A", answer_type="choice", dataset="arc_easy",
              choices=("Whale", "Trout"))
SHOT = Example(id="s1", question="What is 2+3?", answer="5", answer_type="numeric", dataset="toy", rationale="2+3=5")


def _completion(text, stop=StopReason.STOP_TOKEN, raw=None):
    return Completion(ids=(), text=text, num_tokens=len(text.split()), prompt_index=0,
                      raw_text=text if raw is None else raw, stop_reason=int(stop))


@pytest.mark.parametrize("text, stop, chat, kind", [
    ("<thought> whales breathe air </thought>\n[Assistant] A\n", StopReason.STOP_TOKEN, False, None),
    ("[Assistant] A\n", StopReason.MAX_LENGTH, False, None),  # the answer line ended before the budget
    ("<thought> whales <thought>\n<thought>\n", StopReason.MAX_LENGTH, False, "unclosed_thought"),
    ("<thought> done </thought>\nThe answer is: A", StopReason.STOP_TOKEN, False, "no_answer_marker"),
    ("The answer is: A", StopReason.STOP_TOKEN, False, "no_answer_marker"),
    ("<thought> ok </thought>\n[Assistant] the whale, bec", StopReason.MAX_LENGTH, False, "cut_at_budget"),
    ("<thought> ok </thought>\nA", StopReason.STOP_TOKEN, True, None),
    ("A", StopReason.STOP_TOKEN, True, None),
    ("<thought> still going", StopReason.BUDGET, True, "unclosed_thought"),
    ("<thought> ok </thought>\nThe whale, becau", StopReason.MAX_LENGTH, True, "cut_at_budget"),
])
def test_format_failure_kinds(text, stop, chat, kind):
    assert format_failure(_completion(text, stop), chat=chat) == kind


def test_strict_and_lenient_grading_and_records(tmp_path):
    # A completion that breaks the format but plainly states the right answer is lenient-correct
    # only; the record keeps the raw text, the extracted answer, the gold and the failure kind.
    plain = _completion("<thought> done </thought>\nThe answer is: A", raw="<thought> done </thought>\nThe answer is: A")
    proper = _completion("<thought> x </thought>\n[Assistant] A\n", raw="<thought> x </thought>\n[Assistant] A\n[User] ?")
    wrong = _completion("[Assistant] B\n")
    records = [evaluation._record(c, ARC, "[User] Which is a mammal?\n", chat=False) for c in (plain, proper, wrong)]
    assert [(r.correct, r.lenient_correct, r.failure) for r in records] == [
        (False, True, "no_answer_marker"), (True, True, None), (False, False, None)]
    assert records[1].raw_completion.endswith("[User] ?") and records[1].completion.endswith("A\n")
    assert [r.extracted for r in records] == ["A", "A", "B"] and {r.gold for r in records} == {"A"}
    summary = summarize(records)
    assert summary["accuracy"] == pytest.approx(1 / 3) and summary["lenient_accuracy"] == pytest.approx(2 / 3)
    assert summary["format_failure_rate"] == pytest.approx(1 / 3)
    assert summary["failures"] == {"unclosed_thought": 0.0, "no_answer_marker": pytest.approx(1 / 3),
                                   "cut_at_budget": 0.0}
    assert "| 33.3% | 66.7% | 33.3% |" in results_table({"cot": summary})
    write_records(tmp_path / "eval.jsonl", records)
    row = json.loads((tmp_path / "eval.jsonl").read_text().splitlines()[0])
    assert {k: row[k] for k in ("correct", "lenient_correct", "extracted", "gold", "failure")} == {
        "correct": False, "lenient_correct": True, "extracted": "A", "gold": "A", "failure": "no_answer_marker"}


def test_direct_shots_are_answer_only_and_cot_shots_keep_rationales(monkeypatch):
    policy = load_policy(load_config(None))
    seen = {}

    def fake_complete(policy_, prompts, *, opening=(), **kwargs):
        seen[policy_.decode(opening)] = [policy_.decode(p) for p in prompts]
        return [_completion("[Assistant] 5\n") for _ in prompts]

    monkeypatch.setattr(evaluation, "complete", fake_complete)
    question = Example(id="q", question="What is 1+1?", answer="2", answer_type="numeric", dataset="toy")
    for prompting in ("direct", "cot"):
        evaluation.evaluate(policy, [question], prompting=prompting, fewshot=[SHOT])
    assert seen["[Assistant]"] == ["[User] What is 2+3?\n[Assistant] 5\n[User] What is 1+1?\n"]
    assert seen["<thought>"] == ["[User] What is 2+3?\n<thought> 2+3=5 </thought>\n[Assistant] 5\n[User] What is 1+1?\n"]



def test_tokens_by_difficulty_plot_keeps_coinciding_methods_visible(tmp_path, monkeypatch):
    """cot and star often draw the same line on the toy world: each method gets its own style."""
    drawn = {}
    monkeypatch.setattr(evaluation, "save_figure", lambda fig, path: drawn.setdefault("fig", fig) and path)
    same = {"by_difficulty": {1: {"mean_tokens": 3.0}, 2: {"mean_tokens": 5.0}, None: {"mean_tokens": 0.0}}}
    evaluation.plot_tokens_by_difficulty({"base": same, "cot": same, "star": same, "ram": same}, tmp_path / "p.png")
    lines = drawn["fig"].axes[0].lines
    assert [line.get_label() for line in lines] == ["base", "cot", "star", "ram"]
    assert len({(line.get_marker(), line.get_linestyle(), line.get_markersize()) for line in lines}) == 4
    assert all(list(line.get_xdata()) == [1, 2] for line in lines)


def test_an_eval_run_counts_the_bad_rows_it_skipped_in_its_metrics_and_results(tmp_path):
    from metajax import pipelines
    from metajax.train import read_metrics
    rows = [json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) for i in range(3)]
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join([rows[0], '{"question": "no answer"}', rows[1], "not json", rows[2]]) + "\n")
    run_dir = tmp_path / "run"
    config = load_config(None, [f"run_dir={run_dir}", "task=eval", "eval.methods=[base]", "eval.max_new_tokens=4",
                                "data.dataset=gsm8k", f"data.eval_path={data}", "data.on_bad_row=skip",
                                "data.fewshot=0", "data.num_eval=3", "eval.batch_size=4"])
    summaries = pipelines.run(config)
    assert summaries["base"]["n"] == 3
    assert [r["metrics"] for r in read_metrics(run_dir) if r["stage"] == "data"] == [{"skipped_rows/test": 2.0}]
    assert "Skipped bad data rows (data.on_bad_row: skip): 2 in test" in (run_dir / "results.md").read_text()


def test_finished_evaluations_are_reused_only_under_the_same_settings(tmp_path):
    from metajax.eval.evaluate import FinishedEvaluations, read_records
    records = [evaluation._record(_completion("[Assistant] A\n"), ARC, "[User] Which is a mammal?\n", chat=False)]
    FinishedEvaluations(tmp_path, "settings 1").finished("cot", records)
    assert read_records(tmp_path / "eval_cot.jsonl") == records
    assert FinishedEvaluations(tmp_path, "settings 1").records("cot") == records
    assert FinishedEvaluations(tmp_path, "settings 2").records("cot") is None  # another config or model
    assert FinishedEvaluations(tmp_path, "settings 1").records("base") is None  # never finished
    (tmp_path / "eval_cot.jsonl").unlink()
    assert FinishedEvaluations(tmp_path, "settings 1").records("cot") is None


def test_run_settings_change_with_the_config_and_the_model_files(tmp_path):
    import shutil

    from metajax.pipelines import TOY_MODEL_DIR, _settings
    model = tmp_path / "model"
    shutil.copytree(TOY_MODEL_DIR, model)
    config = load_config(None, [f"model.path={model}", "run_dir=a"])
    assert _settings(config) == _settings(load_config(None, [f"model.path={model}", "run_dir=b"]))
    assert _settings(config) != _settings(load_config(None, [f"model.path={model}", "eval.max_new_tokens=9"]))
    before = _settings(config)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the same path, rewritten: a new checkpoint
    assert _settings(config) != before
