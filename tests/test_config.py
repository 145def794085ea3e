"""The run configuration and the command line's handling of bad configs."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metajax.config import Config, ConfigError, _read_yaml, build, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_defaults_and_overrides():
    config = load_config(None, ["expert_iteration.iterations=2", "train.learning_rate=3e-4", "seed=7",
                                "eval.methods=[cot, ram]"])
    assert config.expert_iteration.iterations == 2
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert config.seed == 7
    assert config.eval.methods == ("cot", "ram")
    # RaM paper defaults where nothing overrides them
    assert (config.expert_iteration.samples_per_question, config.expert_iteration.gamma) == (3, 0.1)
    assert config.expert_iteration.eps == pytest.approx(1e-4)


def test_a_partial_section_overrides_only_its_keys():
    from metajax.algorithms.toy_pretrain import SHIPPED_WORLD
    config = load_config(None, ["data.toy.n_eval=40", "data.toy.p_thought=0.25"])
    assert config.data.toy == dataclasses.replace(SHIPPED_WORLD, n_eval=40, p_thought=0.25)
    per_level = load_config(None, ["data.toy.p_thought=[0.1, 0.2, 0.3, 0.4, 0.5]"])
    assert per_level.data.toy.p_thought == (0.1, 0.2, 0.3, 0.4, 0.5)
    pretrain = load_config(None, ["task=toy_pretrain", "toy_pretrain.world.max_operands=8",
                                  "toy_pretrain.world.difficulty_weights=[1, 1, 1, 1, 1, 1, 1]",
                                  "toy_pretrain.world.p_thought=0.5"])
    assert pretrain.toy_pretrain.world == dataclasses.replace(
        SHIPPED_WORLD, max_operands=8, difficulty_weights=(1.0,) * 7, p_thought=0.5)
    # More levels than the shipped per-level shares: the error says what to give.
    with pytest.raises(ConfigError, match=r"toy_pretrain.world: .*p_thought has 5 entries but there are 7 "
                                          r"difficulties .* or a single number for all"):
        load_config(None, ["task=toy_pretrain", "toy_pretrain.world.max_operands=8",
                           "toy_pretrain.world.difficulty_weights=[1, 1, 1, 1, 1, 1, 1]"])
    assert pretrain.toy_pretrain.hidden_size == 128


@pytest.mark.parametrize("override, message", [
    ("foo=1", r"unknown key 'foo'; valid keys here: data, eval"),
    ("expert_iteration.iterationz=1", r"unknown key 'expert_iteration.iterationz'"),
    ("expert_iteration.iterations=abc", r"expert_iteration.iterations: expected int, got 'abc'"),
    ("expert_iteration.max_new_tokens=-5", r"expert_iteration.max_new_tokens must be >= 1"),
    ("eval.max_new_tokens=0", r"eval.max_new_tokens must be >= 1"),
    ("model.path=/no/such/dir", r"model.path: /no/such/dir has no config.json"),
    ("model.gguf=/no/such.gguf", r"model.gguf: file /no/such.gguf does not exist"),
    ("task=blah", r"task: 'blah' is not one of"),
    ("eval.methods=[cot, magic]", r"unknown method 'magic'"),
    ("novalue", r"must look like key.sub=value"),
    ("data.toy.p_thought=[0.4, 0.2]", r"data.toy: ToyWorldConfig: p_thought has 2 entries but there are 5 "
                                      r"difficulties \(2, 3, 4, 5, 6\): give one share each"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("dataset, path, message", [
    # GSM8K train has no offline source: the error names the Hub route, not the prepare script.
    ("gsm8k", "nowhere/gsm8k/train.jsonl", r"no offline source has this file: set data.source: hf .*hub openai/gsm8k "
                                           r"config main.*writes only gsm8k test"),
    ("gsm8k", "nowhere/gsm8k/test.jsonl", r"run `python -m metajax.data.prepare --out nowhere` to write it"),
    ("proofwriter", "p.jsonl", r"no offline source.*hub tasksource/proofwriter.*no installed package ships proofwriter offline"),
])
def test_missing_data_files_say_where_the_data_comes_from(dataset, path, message):
    with pytest.raises(ConfigError, match=f"data.eval_path: {path} does not exist; {message}"):
        load_config(None, [f"data.dataset={dataset}", f"data.eval_path={path}", "task=eval"])


def test_prompting_section():
    assert load_config(None).prompting.chat == "auto"
    assert load_config(None, ["prompting.chat=false", "prompting.system_prompt=Be brief."]).prompting.chat is False
    with pytest.raises(ConfigError, match=r"prompting.chat: 'sometimes' fits none of"):
        load_config(None, ["prompting.chat=sometimes"])


def test_base_files_merge(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\nexpert_iteration:\n  iterations: 5\n  gamma: 0.2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nexpert_iteration:\n  iterations: 1\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config.seed, config.expert_iteration.iterations, config.expert_iteration.gamma) == (3, 1, 0.2)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate_or_fail_only_on_missing_files(path, monkeypatch):
    # Paper configs point at checkpoints and data a user provides; everything else must be right.
    from metajax.pipelines import TASKS
    monkeypatch.chdir(path.parents[1])
    config = build(Config, _read_yaml(path), "")
    assert config.task in TASKS
    try:
        load_config(path)
    except ConfigError as e:
        assert re.match(r"(model\.path: \S+ has no config\.json|data\.\w+_path: \S+ does not exist|"
                        r"roi\.\w+_tiers\[\d\]\.path: \S+ does not exist)", str(e)), e
    if config.model.path.startswith("checkpoints/"):  # a published model: the error says how to get it
        assert config.model.hub_id, "a paper config names the Hub model its checkpoint directory holds"
        with pytest.raises(ConfigError, match=f"huggingface-cli download {config.model.hub_id} --local-dir "
                                              f"{config.model.path}"):
            load_config(path)


def test_training_on_bf16_master_weights_is_refused_with_the_fix(monkeypatch):
    """bf16 rounds an update of 1e-6 on a weight of 0.02 to nothing; evaluation in bf16 is fine."""
    import jax.numpy as jnp
    assert float(jnp.bfloat16(0.02) + jnp.bfloat16(1e-6)) == float(jnp.bfloat16(0.02))
    for task in ("ram", "grpo", "roi"):
        with pytest.raises(ConfigError, match="model.dtype: float32 and model.compute_dtype: bfloat16"):
            load_config(f"{CONFIGS[0].parent}/{task}_toy.yaml", ["model.dtype=bfloat16"])
    config = load_config(None, ["task=eval", "model.dtype=bfloat16", "eval.methods=[base]"])
    assert config.model.dtype == "bfloat16"
    # The remat policy is one of three names.
    assert load_config(None, ["model.remat=save_dots"]).model.remat == "save_dots"
    with pytest.raises(ConfigError, match="model.remat"):
        load_config(None, ["model.remat=true"])


def test_roi_configs_check_tiers_budgets_and_methods(monkeypatch):
    monkeypatch.chdir(CONFIGS[0].parents[1])
    path = "configs/roi_qwen2.5-1.5b-instruct_hard_1024.yaml"
    on_toy_model = ["model.path=toy_exam"]
    with pytest.raises(ConfigError, match=r"roi\.train_tiers\[0\]\.path: data/gsm8k/train\.jsonl does not exist; "
                                          r"no offline source has this file: .*openai/gsm8k"):
        load_config(path, on_toy_model + ["roi.test_tiers=[]"])
    config = build(Config, _read_yaml(Path(path)), "")
    assert (config.roi.budgets, config.roi.orderings, config.roi.level_bounds) == ((1024,), ("hard",), (256, 512, 1024))
    for override, match in [("roi.budgets=[-5]", "budget below zero"), ("roi.methods=[best]", "unknown"),
                            ("roi.orderings=[easy_first]", "easy_first is added"),
                            ("roi.level_bounds=[60, 20]", "strictly increasing"),
                            ("grpo.max_completion_length=100", "at least the largest roi budget"),
                            ("mft.label_rule=mean", "label_rule"),
                            ("roi.questions_per_exam=11", "labels at most 10 questions")]:
        with pytest.raises(ConfigError, match=match):
            load_config("configs/roi_toy.yaml", [override])


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "metajax.main", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_rejects_bad_configs_with_status_2_and_writes_nothing(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("expert_iteration: [unclosed\n")
    negative = tmp_path / "negative.yaml"
    negative.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "eval": {"max_new_tokens": -1}}))
    cases = [
        (["--config", str(tmp_path / "missing.yaml")], "config file .*missing.yaml does not exist"),
        (["--config", str(bad_yaml)], "bad.yaml is not valid YAML"),
        (["--config", str(negative)], "eval.max_new_tokens must be >= 1"),
        (["--set", f"run_dir={tmp_path / 'run'}", "--set", "wrong.key=1"], "unknown key 'wrong'"),
        # The built-in 512 new tokens fill the toy model's 512 positions: refused before the run.
        (["--set", f"run_dir={tmp_path / 'run'}"], "eval.max_new_tokens: 512 new tokens leave no room for a "
                                                   "prompt in the model's context of 512 positions"),
        (["--set", f"run_dir={tmp_path / 'run'}", "--set", "eval.max_new_tokens=64"],
         "expert_iteration.max_new_tokens: 512"),
        (["--set", f"run_dir={tmp_path / 'run'}", "--set", "task=grpo", "--set", "eval.max_new_tokens=64",
          "--set", "eval.methods=[base]", "--set", "grpo.max_completion_length=600"], "grpo.max_completion_length: 600"),
    ]
    for args, message in cases:
        result = _cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("metajax: config error:"), result.stderr
        assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


def _malformed_overrides() -> list[tuple[list[str], str]]:
    """(overrides, a key the one-line error must name): generated over the sections' fields."""
    cases = []
    for section in ("model", "data", "prompting", "expert_iteration", "grpo", "train", "eval", "mesh", "roi", "mft"):
        cases.append(([f"{section}.no_such_key=1"], "no_such_key"))  # an unknown nested key
    sizes = {"expert_iteration": ("iterations", "questions_per_iteration", "samples_per_question", "max_new_tokens",
                                  "epochs", "batch_size", "rollout_batch_size", "score_batch_size"),
             "grpo": ("max_steps", "prompts_per_step", "num_generations", "max_completion_length"),
             "mft": ("questions", "samples_per_question", "batch_size", "save_steps"), "eval": ("max_new_tokens", "batch_size")}
    for section, names in sizes.items():
        for i, name in enumerate(names):
            cases.append(([f"{section}.{name}={-(i % 2)}"], name))  # zero and negative sizes, alternately
    cases += [(["expert_iteration.iterations=abc"], "iterations"), (["train.learning_rate=fast"], "learning_rate"),
              (["seed=[1]"], "seed"), (["model.remat=yes"], "remat"), (["data.fewshot=1.5"], "fewshot"),
              (["grpo.temperature=hot"], "temperature"), (["mesh.fsdp=many"], "fsdp"),
              (["expert_iteration.top_p=0"], "top_p"), (["expert_iteration.top_p=1.5"], "top_p"),
              (["grpo.top_p=0"], "top_p"), (["expert_iteration.temperature=-0.1"], "temperature"),
              (["grpo.temperature=-1"], "temperature"), (["data.fewshot=-1"], "fewshot"),
              (["task=roi", "model.path=toy_exam", "roi.budgets=[-5]"], "budget"),
              (["mesh.fsdp=3"], "mesh"), (["mesh.data=0"], "mesh"), (["mesh.data=-1"], "mesh"),
              (["expert_iteration.gradient_accumulation_steps=3"], "gradient_accumulation_steps"),
              (["model.path=/no/such/checkpoint"], "model.path"),
              (["data.dataset=gsm8k", "data.train_path=/no/such.jsonl"], "data.train_path"),
              (["task=nonsense"], "task"), (["eval.methods=[best]"], "eval.methods")]
    return cases


@pytest.mark.parametrize("overrides,key", _malformed_overrides(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_malformed_configs_exit_2_with_one_line_naming_the_key(tmp_path, capsys, overrides, key):
    from metajax.main import main
    run_dir = tmp_path / "run"
    args = [a for o in [f"run_dir={run_dir}", *overrides] for a in ("--set", o)]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metajax: config error:"), lines
    assert key in lines[0], lines[0]
    assert not run_dir.exists()


def test_enough_malformed_configs_are_generated():
    assert len(_malformed_overrides()) >= 30


def test_yaml_syntax_errors_keep_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("expert_iteration:\n  iterations: 2\n  gamma: [0.1\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML: .* at line 4, column 5"):
        load_config(path)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    from metajax.main import main
    assert main(["--config", str(tmp_path / "loop.yaml")]) == 2
