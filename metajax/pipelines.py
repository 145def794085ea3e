"""The runs `metajax.main` can start, one function per `task`.

Data flows one way: config -> data -> policy -> expert iteration (sample, score, select, train) ->
checkpoint -> evaluation -> results in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from metajax.algorithms.expert_iteration import (ExpertIterationConfig, group_statistics, sample_rollouts,
                                                 save_rows, score_rollouts, select_rows, training_sequences)
from metajax.algorithms.policy import Policy
from metajax.config import Config
from metajax.data.example import Example
from metajax.eval.evaluate import evaluate, plot_tokens_by_difficulty, results_table, summarize, write_records
from metajax.files import write_text_atomic
from metajax.models import load_hf, save_hf
from metajax.train.checkpoint import Checkpointer
from metajax.train.metrics import MetricsWriter
from metajax.train.optim import OptimizerConfig
from metajax.train.sft import train_sft

TOY_MODEL_DIR = Path(__file__).parent / "assets" / "toy_model"
# Evaluation methods that prompt the base model (few-shot, a forced opening); the others are trained policies.
BASELINE_METHODS = ("direct", "cot")


def run(config: Config) -> dict:
    """Runs `config.task`; returns its summary."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
    task = TASKS[config.task]
    return task(config, run_dir)


def run_expert_iteration_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: ram` / `task: star`: train the named method(s), then evaluate every method in
    `config.eval.methods` on the held-out split and write the results table and plot."""
    mesh = _mesh(config)
    base = load_policy(config, mesh)
    train_questions, eval_questions, fewshot = load_questions(config)
    trained: dict[str, Policy] = {}
    methods = [m for m in ("star", "ram") if m in config.eval.methods or m == config.task]
    with MetricsWriter(run_dir) as metrics:
        for method in methods:
            ei = dataclasses.replace(config.expert_iteration, filter=method)
            trained[method] = run_expert_iteration(
                base, train_questions, ei, config.train, run_dir / method, rng=jax.random.key(config.seed),
                seed=config.seed, metrics=metrics, fewshot=fewshot, mesh=mesh, remat=config.model.remat,
                compute_dtype=_dtype(config.model.compute_dtype))
            save_hf(trained[method].params, trained[method].cfg, run_dir / method / "final")
            _copy_tokenizer(config, run_dir / method / "final")
        summaries = evaluate_methods(config, run_dir, eval_questions, base, trained, fewshot=fewshot, mesh=mesh,
                                     metrics=metrics)
    return write_results(run_dir, summaries)


def run_eval_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: eval`: evaluate the configured checkpoint with each method's prompting."""
    mesh = _mesh(config)
    policy = load_policy(config, mesh)
    _, eval_questions, fewshot = load_questions(config)
    trained = {m: policy for m in config.eval.methods if m not in BASELINE_METHODS}
    return write_results(run_dir, evaluate_methods(config, run_dir, eval_questions, policy, trained, fewshot=fewshot,
                                                   mesh=mesh))


def evaluate_methods(config: Config, run_dir: Path, questions: Sequence[Example], base: Policy,
                     trained: dict[str, Policy], *, fewshot: Sequence[Example] = (), mesh=None,
                     metrics: MetricsWriter | None = None) -> dict:
    """Evaluates each of `config.eval.methods`: "direct" and "cot" prompt `base` after the `fewshot`
    examples (the paper's few-shot baselines), the others are the policies in `trained`, which were
    fine-tuned on the format and choose for themselves, zero-shot. Writes `eval_<method>.jsonl`;
    returns summaries."""
    summaries = {}
    for method in config.eval.methods:
        baseline = method in BASELINE_METHODS
        policy, prompting = (base, method) if baseline else (trained[method], "policy")
        records = evaluate(policy, questions, prompting=prompting, max_new_tokens=config.eval.max_new_tokens,
                           batch_size=config.eval.batch_size, fewshot=fewshot if baseline else (), mesh=mesh)
        write_records(run_dir / f"eval_{method}.jsonl", records)
        summaries[method] = summarize(records)
        if metrics is not None:
            metrics.write(0, {k: v for k, v in summaries[method].items() if k != "by_difficulty"},
                          stage=f"eval/{method}")
    return summaries


def run_expert_iteration(base: Policy, questions: Sequence[Example], config: ExpertIterationConfig,
                         optim: OptimizerConfig, out_dir: Path, *, rng: jax.Array, seed: int = 0,
                         metrics: MetricsWriter | None = None, fewshot: Sequence[Example] = (), mesh=None,
                         remat: bool = False, compute_dtype=None) -> Policy:
    """Expert iteration over a growing pool of `questions`; returns the final policy.

    Each iteration's policy is checkpointed (`out_dir/checkpoints`, step = iterations done): a rerun
    with the same arguments resumes after the last finished iteration and ends with the same params.
    """
    needed = config.iterations * config.questions_per_iteration
    if len(questions) < needed:
        raise ValueError(f"expert iteration needs {needed} training questions ({config.iterations} iterations x "
                         f"{config.questions_per_iteration}); only {len(questions)} were loaded")
    out_dir.mkdir(parents=True, exist_ok=True)
    policy = base
    with Checkpointer(out_dir / "checkpoints", max_to_keep=2) as checkpointer:
        done = checkpointer.latest_step() or 0
        if done:
            params, _ = checkpointer.restore(done, like=base.params)
            policy = base.with_params(params)
            print(f"[{config.filter}] resuming after iteration {done}")
        for iteration in range(done, config.iterations):
            started = time.time()
            pool = list(questions[:(iteration + 1) * config.questions_per_iteration])
            key = jax.random.fold_in(rng, iteration)
            rollouts = sample_rollouts(policy, pool, config, key, fewshot=fewshot, mesh=mesh)
            groups = score_rollouts(policy, pool, rollouts, config, fewshot=fewshot)
            rows = select_rows(groups, config)
            save_rows(out_dir / f"rows_iter{iteration + 1}.jsonl", pool, rows)
            stats = group_statistics(groups, rows)
            if not rows:
                raise RuntimeError(f"[{config.filter}] iteration {iteration + 1} kept no training rows: no question "
                                   "had a correct rollout. Check the prompts, the grader and max_new_tokens.")
            start_params = base.params if config.reset_to_base else policy.params
            params, history = train_sft(
                start_params, base.cfg, training_sequences(policy, pool, rows), optim=optim,
                batch_size=config.batch_size, epochs=config.epochs, seed=seed + iteration, mesh=mesh, remat=remat,
                compute_dtype=compute_dtype, desc=f"{config.filter} sft {iteration + 1}")
            policy = policy.with_params(params)
            checkpointer.save(iteration + 1, params, metadata={"iteration": iteration + 1, **stats}, force=True)
            stats.update(sft_loss_first=history[0]["loss"], sft_loss_last=history[-1]["loss"],
                         seconds=time.time() - started, pool=len(pool))
            print(f"[{config.filter}] iteration {iteration + 1}/{config.iterations}: " +
                  ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
            if metrics is not None:
                metrics.write(iteration + 1, stats, stage=f"{config.filter}/iteration")
    return policy


def write_results(run_dir: Path, summaries: dict[str, dict]) -> dict:
    """results.md (the table), results.json and tokens_by_difficulty.png in the run directory."""
    table = results_table(summaries)
    write_text_atomic(run_dir / "results.md", table + "\n")
    write_text_atomic(run_dir / "results.json", json.dumps(summaries, indent=2, default=str) + "\n")
    plot_tokens_by_difficulty(summaries, run_dir / "tokens_by_difficulty.png")
    print(table)
    return summaries


def load_policy(config: Config, mesh=None) -> Policy:
    """The starting policy: the bundled toy model, an HF directory, or a converted GGUF file."""
    from transformers import AutoTokenizer

    directory = _model_dir(config)
    if config.model.gguf is not None and not (directory / "config.json").is_file():
        from metajax.models.gguf import gguf_to_hf
        gguf_to_hf(config.model.gguf, directory)
    params, cfg = load_hf(directory, dtype=_dtype(config.model.dtype), mesh=mesh)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return Policy.of(params, cfg, tokenizer)


def load_questions(config: Config) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, eval, few-shot) questions for the configured dataset."""
    data = config.data
    if data.dataset == "toy":
        from metajax.data.toy import make_splits
        train, held_out = make_splits(data.toy)
        fewshot, train = train[:data.fewshot], train[data.fewshot:]
        return train, held_out[:data.num_eval], fewshot
    from metajax.data.datasets import DatasetSpec, load_dataset, sample_examples
    def spec(path, split):
        return DatasetSpec(name=data.dataset, source=data.source, path=path, split=split, seed=config.seed,
                           on_bad_row=data.on_bad_row)
    train = load_dataset(spec(data.train_path, "train")) if data.train_path or data.source != "local" else []
    held_out = load_dataset(spec(data.eval_path, "test"))
    fewshot = [ex for ex in train[:data.fewshot] if ex.rationale]
    return train[data.fewshot:], sample_examples(held_out, min(data.num_eval, len(held_out)), config.seed), fewshot


def _model_dir(config: Config) -> Path:
    """The HF directory the base policy is read from (a GGUF file is converted into the run dir)."""
    if config.model.gguf is not None:
        return Path(config.run_dir) / "base_model"
    return TOY_MODEL_DIR if config.model.path == "toy" else Path(config.model.path)


def _copy_tokenizer(config: Config, directory: Path) -> None:
    import shutil
    source = _model_dir(config)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, directory / name)


def _mesh(config: Config):
    if len(jax.devices()) == 1:
        return None
    from metajax.models.sharding import make_mesh
    return make_mesh(config.mesh)


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def run_toy_pretrain_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: toy_pretrain`: train the toy world's model from scratch (`metajax.algorithms.toy_pretrain`)."""
    from metajax.algorithms.toy_pretrain import run_toy_pretrain
    out = run_toy_pretrain(config.toy_pretrain, run_dir=run_dir)
    return {"checkpoint": str(out)}


def run_convert_pipeline(config: Config, run_dir: Path) -> dict:
    """`task: convert`: write `model.gguf` as a Hugging Face checkpoint directory `run_dir/hf_model`."""
    from metajax.models.gguf import gguf_to_hf
    if config.model.gguf is None:
        raise ValueError("task convert needs model.gguf: the GGUF file to convert")
    out = gguf_to_hf(config.model.gguf, run_dir / "hf_model")
    print(f"wrote {out}")
    return {"checkpoint": str(out)}


TASKS = {
    "ram": run_expert_iteration_pipeline,
    "convert": run_convert_pipeline,
    "star": run_expert_iteration_pipeline,
    "eval": run_eval_pipeline,
    "toy_pretrain": run_toy_pretrain_pipeline,
}
