"""The runs `metajax.main` can start, one function per `task`, and the methods a results table compares.

This module only wires a config to the loops of `metajax.algorithms`. Data flows one way:
config -> data -> policy -> training loop (sample, reward, select or weight, update) -> checkpoint ->
evaluation -> results in the run directory. `TASKS` and `METHODS` are the only lists of tasks and
methods: a new one is registered there and nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax.algorithms.expert_iteration import run_expert_iteration
from metajax.algorithms.grpo import run_grpo
from metajax.data.example import Example
from metajax.data.fewshot import select_fewshot
from metajax.eval.evaluate import FinishedEvaluations, evaluate, plot_tokens_by_difficulty, results_table, summarize
from metajax.files import run_lock, write_text_atomic
from metajax.host import is_main_process, sync
from metajax.models import load_hf, save_hf
from metajax.sampling.policy import Policy
from metajax.train.metrics import MetricsWriter

if TYPE_CHECKING:
    from metajax.config import Config

TOY_MODEL_DIRS = {"toy": Path(__file__).parent / "assets" / "toy_model",
                  "toy_thinker": Path(__file__).parent / "assets" / "toy_thinker",
                  "toy_exam": Path(__file__).parent / "assets" / "toy_exam"}
TOY_MODEL_DIR = TOY_MODEL_DIRS["toy"]


def run(config: Config) -> dict:
    """Runs `config.task`; returns its summary."""
    run_dir = Path(config.run_dir)
    with run_lock(run_dir):
        write_text_atomic(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
        return TASKS[config.task](config, run_dir)


def run_training_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: ram | star | grpo`: train, from the same base policy, every method of `config.eval.methods`
    that a loop trains (and the task's own), then evaluate every method on the held-out split and
    write the results table and plot."""
    mesh = _mesh(config)
    base = load_policy(config, mesh)
    train_questions, eval_questions, fewshot, skipped_rows = load_questions(config)
    trained: dict[str, Policy] = {}
    with MetricsWriter(run_dir) as metrics:
        _log_skipped_rows(metrics, skipped_rows)
        for name, method in METHODS.items():
            if method.train is None or (name not in config.eval.methods and name != config.task):
                continue
            policy = method.train(config, base, train_questions, run_dir / name, metrics=metrics, fewshot=fewshot,
                                  mesh=mesh)
            _save_policy(config, policy, run_dir / name / "final")
            trained[name] = policy
        summaries = evaluate_methods(config, run_dir, eval_questions, base, trained, fewshot=fewshot, mesh=mesh,
                                     metrics=metrics)
    return write_results(run_dir, summaries, skipped_rows)


def run_eval_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: eval`: evaluate the configured checkpoint with each method's prompting; a trained
    method's row is the checkpoint itself, prompted as that method's policy is."""
    mesh = _mesh(config)
    policy = load_policy(config, mesh)
    _, eval_questions, fewshot, skipped_rows = load_questions(config)
    trained = {m: policy for m in config.eval.methods if METHODS[m].train is not None}
    with MetricsWriter(run_dir) as metrics:
        _log_skipped_rows(metrics, skipped_rows)
        summaries = evaluate_methods(config, run_dir, eval_questions, policy, trained, fewshot=fewshot, mesh=mesh,
                                     metrics=metrics)
    return write_results(run_dir, summaries, skipped_rows)


def evaluate_methods(config: Config, run_dir: Path, questions: Sequence[Example], base: Policy,
                     trained: dict[str, Policy], *, fewshot: Sequence[Example] = (), mesh=None,
                     metrics: MetricsWriter | None = None) -> dict:
    """Evaluates each of `config.eval.methods`: the prompting baselines ("base", "direct", "cot")
    prompt `base` after the `fewshot` examples (the paper's few-shot baselines); the trained methods
    are the policies in `trained`, fine-tuned on the format, choosing for themselves, zero-shot.
    Writes `eval_<method>.jsonl`; a rerun of the same config reuses the methods already written
    (training is deterministic: the same config trains the same params, `tests/test_kill_resume.py`).
    Returns summaries."""
    finished = FinishedEvaluations(run_dir, _settings(config))
    summaries = {}
    for name in config.eval.methods:
        method = METHODS[name]
        baseline = method.train is None
        records = finished.records(name)
        if records is not None:
            print(f"[eval] {name}: reusing eval_{name}.jsonl, written by an earlier run of this config")
        else:
            records = evaluate(base if baseline else trained[name], questions, prompting=method.prompting,
                               max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size,
                               fewshot=fewshot if baseline else (), mesh=mesh, desc=f"eval {name}")
            finished.finished(name, records)
        summaries[name] = summarize(records)
        if metrics is not None:
            scalars = {k: v for k, v in summaries[name].items() if not isinstance(v, dict)}
            scalars.update({f"failure/{kind}": rate for kind, rate in summaries[name]["failures"].items()})
            metrics.write(0, scalars, stage=f"eval/{name}")
    return summaries


def _settings(config: Config) -> str:
    """What decides a run's evaluations: its config (but where it writes) and the model files it
    starts from (a checkpoint replaced under the same path changes their sizes or times)."""
    if config.model.gguf is not None:
        from metajax.config import gguf_file
        files = [gguf_file(config.model.gguf)]
    else:
        files = sorted(p for p in model_dir(config).glob("*") if p.is_file())
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.dumps([{**dataclasses.asdict(config), "run_dir": None}, stats], default=str, sort_keys=True)


def _train_expert_iteration(config: Config, base: Policy, questions, out_dir: Path, *, filter: str, metrics,
                            fewshot, mesh) -> Policy:
    return run_expert_iteration(
        base, questions, dataclasses.replace(config.expert_iteration, filter=filter), config.train, out_dir,
        rng=jax.random.key(config.seed), seed=config.seed, metrics=metrics, fewshot=fewshot, mesh=mesh,
        remat=config.model.remat, compute_dtype=_dtype(config.model.compute_dtype))


def _train_grpo(config: Config, base: Policy, questions, out_dir: Path, *, metrics, fewshot, mesh) -> Policy:
    return run_grpo(base, list(questions)[:config.grpo.questions], config.grpo, config.train, out_dir,
                    seed=config.seed, metrics=metrics, fewshot=fewshot, mesh=mesh, remat=config.model.remat,
                    compute_dtype=_dtype(config.model.compute_dtype))


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of the results table.

    prompting: how its completions open (`metajax.data.formats.FORCED_OPENINGS`: "policy" lets the
      model choose). train: the loop that trains it from the base policy, or None for a prompting
      baseline of the base model itself. rollout_length: the config key of the training loop's
      generation length (checked against the model's context before a run).
    """

    prompting: str
    train: Callable[..., Policy] | None = None
    rollout_length: str | None = None


# The one registry of evaluation methods, in the order results tables list them.
METHODS: dict[str, Method] = {
    "base": Method("policy"),  # the base model left to itself
    "direct": Method("direct"),
    "cot": Method("cot"),
    "star": Method("policy", functools.partial(_train_expert_iteration, filter="star"),
                   "expert_iteration.max_new_tokens"),
    "ram": Method("policy", functools.partial(_train_expert_iteration, filter="ram"), "expert_iteration.max_new_tokens"),
    "grpo": Method("policy", _train_grpo, "grpo.max_completion_length"),
}


def _log_skipped_rows(metrics: MetricsWriter, skipped_rows: dict[str, int]) -> None:
    if skipped_rows:
        metrics.write(0, {f"skipped_rows/{split}": n for split, n in skipped_rows.items()}, stage="data")


def write_results(run_dir: Path, summaries: dict[str, dict], skipped_rows: dict[str, int] | None = None) -> dict:
    """results.md (the table, with a line counting the bad rows skipped where there were any),
    results.json and tokens_by_difficulty.png in the run directory."""
    table = results_table(summaries)
    if any((skipped_rows or {}).values()):
        table += "\n\nSkipped bad data rows (data.on_bad_row: skip): " + ", ".join(
            f"{n} in {split}" for split, n in skipped_rows.items()) + "; metrics.jsonl stage 'data' has the counts."
    write_text_atomic(run_dir / "results.md", table + "\n")
    write_text_atomic(run_dir / "results.json", json.dumps(summaries, indent=2, default=str) + "\n")
    plot_tokens_by_difficulty(summaries, run_dir / "tokens_by_difficulty.png")
    print(table)
    return summaries


def load_policy(config: Config, mesh=None) -> Policy:
    """The starting policy: the bundled toy model, an HF directory, or a converted GGUF file."""
    from transformers import AutoTokenizer

    directory = model_dir(config)
    if config.model.gguf is not None and not (directory / "config.json").is_file():
        from metajax.config import gguf_file
        from metajax.models.gguf import gguf_to_hf
        gguf_to_hf(gguf_file(config.model.gguf), directory)
    params, cfg = load_hf(directory, dtype=_dtype(config.model.dtype), mesh=mesh)
    cfg = dataclasses.replace(cfg, attention=config.model.attention)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)  # never run shipped code
    sample_dtype = None if config.model.compute_dtype == config.model.dtype else _dtype(config.model.compute_dtype)
    policy = Policy.of(params, cfg, tokenizer, chat=config.prompting.chat, system_prompt=config.prompting.system_prompt,
                       compute_dtype=sample_dtype)
    print(f"[model] {directory}: {'chat template' if policy.prompt.chat else 'base-model text format'}")
    return policy


class Questions(NamedTuple):
    """A run's questions, no question in two of the lists (train and eval may come from one file),
    and how many bad rows `data.on_bad_row: skip` skipped in each split read."""

    train: list[Example]
    eval: list[Example]
    fewshot: list[Example]
    skipped_rows: dict[str, int]


def load_questions(config: Config) -> Questions:
    """The configured dataset's train, eval and few-shot questions."""
    data = config.data
    if data.dataset == "toy":
        from metajax.data.toy import make_splits
        train, held_out = make_splits(data.toy)
        fewshot, train = train[:data.fewshot], train[data.fewshot:]
        return Questions(train, held_out[:data.num_eval], fewshot, {})
    from metajax.data.datasets import DatasetSpec, load_dataset, sample_examples
    skipped_rows = {}

    def read(path, split):
        spec = DatasetSpec(name=data.dataset, source=data.source, path=path, split=split, seed=config.seed,
                           on_bad_row=data.on_bad_row)
        skipped = []
        examples = load_dataset(spec, skipped=skipped)
        skipped_rows[split] = len(skipped)
        return examples

    train = read(data.train_path, "train") if data.train_path or data.source != "local" else []
    held_out = read(data.eval_path, "test")
    fewshot = select_fewshot(data.dataset, train, data.fewshot, where=f" in {data.train_path}" if data.train_path else "")
    # Compared by content: ids name the split they were read as, so one row read twice has two.
    def key(ex):
        return ex.question, ex.choices

    shots = {key(ex) for ex in fewshot}
    held_out = [ex for ex in held_out if key(ex) not in shots]
    evaluated = sample_examples(held_out, min(data.num_eval, len(held_out)), config.seed)
    excluded = shots | {key(ex) for ex in evaluated}
    return Questions([ex for ex in train if key(ex) not in excluded], evaluated, fewshot, skipped_rows)


def model_dir(config: Config) -> Path:
    """The HF directory the base policy is read from (a GGUF file is converted into the run dir)."""
    if config.model.gguf is not None:
        return Path(config.run_dir) / "base_model"
    return TOY_MODEL_DIRS.get(config.model.path, Path(config.model.path))


def _save_policy(config: Config, policy: Policy, directory: Path) -> None:
    """The policy as a Hugging Face directory with the base model's tokenizer, there for every
    process once this returns."""
    import shutil
    save_hf(policy.params, policy.cfg, directory)
    source = model_dir(config)
    if is_main_process():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, directory / name)
    sync(f"saved {directory}")


def _mesh(config: Config):
    if len(jax.devices()) == 1:
        return None
    from metajax.models.sharding import make_mesh
    return make_mesh(config.mesh)


# The config's dtype names (`model.dtype`, `model.compute_dtype`) and what they mean.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(name: str):
    return DTYPES[name]


def run_toy_pretrain_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: toy_pretrain`: train the toy world's model from scratch (`metajax.algorithms.toy_pretrain`)."""
    from metajax.algorithms.toy_pretrain import run_toy_pretrain
    pretrain = config.toy_pretrain
    if pretrain.init_from in TOY_MODEL_DIRS:
        pretrain = dataclasses.replace(pretrain, init_from=str(TOY_MODEL_DIRS[pretrain.init_from]))
    out = run_toy_pretrain(pretrain, run_dir=run_dir)
    return {"checkpoint": str(out)}


def run_roi_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: roi`: ROI-Reasoning on budgeted exams. MFT (`metajax.algorithms.mft`) and RARL
    (`metajax.algorithms.rarl`) train the base when the methods need them (unless `roi.train` is
    off), then every method sits the same test exams at each ordering and budget
    (`metajax.eval.roi_eval`); results.json, results.md and the plots go to the run directory."""
    from metajax.algorithms.mft import run_mft
    from metajax.algorithms.rarl import ExamTask
    from metajax.envs.exam import check_disjoint
    from metajax.envs.toy_exam import toy_exam_splits
    from metajax.eval.exam_report import plot_results, results_markdown
    from metajax.eval.roi_eval import evaluate_roi, load_tiers, test_sheets, training_sheets

    roi, mesh = config.roi, _mesh(config)
    if roi.test_tiers:
        test_tiers = load_tiers(roi.test_tiers, seed=config.seed)
        train_tiers = load_tiers(roi.train_tiers, seed=config.seed) if roi.train_tiers else [[] for _ in test_tiers]
    else:
        train_tiers, test_tiers = toy_exam_splits(config.data.toy, balanced=roi.balanced_toy_tiers)
    sheets = test_sheets(test_tiers, roi, seed=config.seed + 1)
    base = load_policy(config, mesh)
    policies = {"base": base}
    with MetricsWriter(run_dir) as metrics:
        if not roi.train:
            policies.update(mft=base, mft_rarl=base)
        elif set(roi.methods) & {"mft", "mft_knapsack", "mft_rarl", "oracle"}:
            if not all(train_tiers):
                raise ValueError("roi: training (roi.train) needs a question in every training tier; give "
                                 "roi.train_tiers, or set roi.train: false to evaluate the checkpoint as it is")
            labelled = _interleaved(train_tiers, config.mft.questions, config.seed)
            labelled_ids = {q.id for q in labelled}
            labelled_tiers = [[q for q in tier if q.id in labelled_ids] for tier in train_tiers]
            stage2 = training_sheets(labelled_tiers, config.mft.stage2_exams, roi, seed=config.seed, prefix="mft",
                                     budgets=config.mft.stage2_budgets)
            policies["mft"] = _trained(config, run_dir / "mft", base, lambda: run_mft(
                base, roi.rules, labelled, stage2, config.mft, config.train, run_dir / "mft", budgets=roi.budgets,
                seed=config.seed, metrics=metrics, mesh=mesh, remat=config.model.remat,
                compute_dtype=_dtype(config.model.compute_dtype))[0], mesh)
            if set(roi.methods) & {"mft_rarl", "oracle"}:
                rarl = training_sheets(train_tiers, roi.train_exams, roi, seed=config.seed + 2, prefix="rarl")
                check_disjoint([e for e, _ in rarl + stage2], sheets["easy_first"])
                mft = policies["mft"]
                policies["mft_rarl"] = _trained(config, run_dir / "mft_rarl", base, lambda: run_grpo(
                    mft, ExamTask(mft, roi.rules, rarl), config.grpo, config.train, run_dir / "mft_rarl",
                    seed=config.seed, metrics=metrics, mesh=mesh, remat=config.model.remat,
                    compute_dtype=_dtype(config.model.compute_dtype), desc="rarl"), mesh)
        results = evaluate_roi(roi, policies, train_tiers, sheets, mesh=mesh, records_dir=run_dir / "exams")
    write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    table = results_markdown(results)
    write_text_atomic(run_dir / "results.md", table + "\n")
    plot_results(results, run_dir)
    print(table)
    return results


def _interleaved(tiers: Sequence[Sequence[Example]], count: int, seed: int) -> list[Example]:
    """Up to `count` questions taken from the tiers in turn (each shuffled), so every tier is
    labelled even when one tier is far larger than another."""
    rng = np.random.default_rng(seed)
    shuffled = [[tier[i] for i in rng.permutation(len(tier))] for tier in tiers]
    turns = itertools.zip_longest(*shuffled)
    return [q for turn in turns for q in turn if q is not None][:count]


def _trained(config: Config, out_dir: Path, base: Policy, train: Callable[[], Policy], mesh=None) -> Policy:
    """The policy saved in `out_dir/final` by an earlier run of this config, else `train()`'s, saved there."""
    final = out_dir / "final"
    if (final / "config.json").is_file():
        print(f"[roi] reusing {final}")
        params, _ = load_hf(final, dtype=_dtype(config.model.dtype), mesh=mesh)
        return base.with_params(params)
    policy = train()
    _save_policy(config, policy, final)
    return policy


def run_convert_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: convert`: write `model.gguf` as a Hugging Face checkpoint directory `run_dir/hf_model`."""
    from metajax.config import gguf_file
    from metajax.models.gguf import gguf_to_hf
    if config.model.gguf is None:
        raise ValueError("task convert needs model.gguf: the GGUF file to convert")
    out = gguf_to_hf(gguf_file(config.model.gguf), run_dir / "hf_model")
    print(f"wrote {out}")
    return {"checkpoint": str(out)}


TASKS: dict[str, Callable[[Config, Path], dict]] = {
    "ram": run_training_pipeline,
    "star": run_training_pipeline,
    "grpo": run_training_pipeline,
    "eval": run_eval_pipeline,
    "roi": run_roi_pipeline,
    "toy_pretrain": run_toy_pretrain_pipeline,
    "convert": run_convert_pipeline,
}
