"""The command line: `python -m metajax.main --config configs/ram_toy.yaml [--set key.sub=value ...]`.

It reads the config and runs the pipeline its `task` names (`metajax.pipelines.TASKS`). A config
error exits with status 2 and a one-line message, before anything is compiled or written.
"""

from __future__ import annotations

import argparse
import sys

from metajax.config import ConfigError, check_generation_fits, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metajax.main", description=__doc__.splitlines()[0],
                                     epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (without one: metajax's built-in settings, the papers' 512-token "
                             "generations on the bundled toy model; configs/ram_toy.yaml is the toy RaM run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set expert_iteration.iterations=2 (repeatable)")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-host run (TPU pod slice or multi-node GPU): jax.distributed.initialize()")
    args = parser.parse_args(argv)
    from metajax.host import start_backends
    if args.distributed:  # first: the config's mesh is checked against every process's devices
        _join_distributed()
    else:
        start_backends()
    try:
        config = load_config(args.config, args.set)
        check_generation_fits(config)
    except ConfigError as e:
        print(f"metajax: config error: {e}", file=sys.stderr)
        return 2
    import time

    from metajax import pipelines
    from metajax.files import OutputWriteError, RunDirInUseError
    started = time.time()
    try:
        pipelines.run(config)
    except RunDirInUseError as e:
        print(f"metajax: {e}", file=sys.stderr)
        return 2
    except OutputWriteError as e:
        print(f"metajax: {e}", file=sys.stderr)
        return 1
    print("\n".join(describe_outputs(config.task, config.run_dir, time.time() - started)))
    return 0


def _join_distributed() -> None:
    import os

    import jax

    from metajax.host import is_main_process, start_backends
    # On TPU VMs initialize() discovers its peers; GPU launchers export the coordinator address.
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator:
        jax.distributed.initialize(coordinator, int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    start_backends()
    if not is_main_process():
        # Every process runs the same program; the console shows process 0's (errors still show).
        sys.stdout = open(os.devnull, "w")
    elif jax.default_backend() == "cpu" and jax.local_device_count() > 1:
        print(f"metajax: warning: {jax.local_device_count()} CPU devices per process; XLA:CPU's gloo collectives "
              "deadlocked a long run in this setting on the FSDP mesh (README, Multi-host). One device per process, "
              "or mesh.fsdp=1 with mesh.data=-1, finished it.", file=sys.stderr)


def _epilog() -> str:
    from pathlib import Path

    from metajax.pipelines import TASKS
    configs = Path(__file__).resolve().parent.parent / "configs"
    shipped = sorted(p.name for p in configs.glob("*.yaml")) if configs.is_dir() else []
    lines = ["tasks (the config's `task`): " + ", ".join(TASKS),
             "  ram, star: expert iteration (RaM's VOC filter, STaR's correctness filter), then evaluation",
             "  grpo: GRPO / Dr. GRPO; roi: ROI-Reasoning's budgeted exams (MFT, RARL, baselines); eval: evaluation",
             "  toy_pretrain: pretrain the toy world's model; convert: a GGUF file to a Hugging Face directory",
             "",
             "a run writes into its run_dir: results.md and results.json (the table), figures, metrics.jsonl,",
             "each evaluated completion, and one directory per trained method (checkpoints, rows, final policy).",
             "Rerunning the same command resumes from the checkpoints there and keeps the evaluations already",
             "finished; a second run on a run_dir in use is refused."]
    if shipped:
        lines += ["", f"shipped configs ({configs}/):"] + [f"  {name}" for name in shipped]
    return "\n".join(lines)


# What a run directory's entries hold, by file name pattern (the first match wins).
_OUTPUTS = [("results.md", "the results table"), ("results.json", "the results, machine-readable"),
            ("*.png", "a figure of the results"), ("metrics.jsonl", "every step's metrics (metajax.train.read_metrics)"),
            ("eval_*.jsonl", "every evaluated completion, graded"), ("config.json", "the config this run used"),
            ("tensorboard", "TensorBoard event files"), ("base_model", "the converted GGUF model"),
            ("hf_model", "the converted model, a Hugging Face directory"),
            ("exams", "every exam sat, per ordering, budget and method: completions and per-question scores")]


def describe_outputs(task: str, run_dir, seconds: float) -> list[str]:
    """The lines a finished run ends with: how long it took and what it wrote where."""
    import fnmatch
    from pathlib import Path
    run_dir = Path(run_dir)
    lines = [f"[metajax] {task} finished in {seconds / 60:.1f} min; its outputs are in {run_dir}/:"]
    for entry in sorted(p for p in run_dir.iterdir() if not p.name.startswith(".")):
        note = next((text for pattern, text in _OUTPUTS if fnmatch.fnmatch(entry.name, pattern)), None)
        if note is None and entry.is_dir():
            note = "a trained method: its checkpoints, training rows and final policy (Hugging Face format)"
        lines.append(f"  {entry.name + ('/' if entry.is_dir() else ''):<28} {note or ''}".rstrip())
    lines.append("Rerunning the same command resumes from the checkpoints there.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
