"""One GRPO step: metajax against Tunix 0.1.7's GRPOLearner on the same weights, prompts, G and lengths.

A step is what `metajax.algorithms.grpo.run_grpo` does each iteration, minus grading: sample G
completions of every prompt (`rollout`, the prompt's keys and values shared by its group), compute a
cheap reward and the group advantages, and run one clipped policy-gradient update over all
prompts x G completions (`PolicyGradientLoss` in the shared train step, old log-probs from the
sampler). Both systems get a random ~125M Llama (`benchmarks.common.REFERENCE_LLAMA`), the same
token-id prompts, temperature 1, beta 0 (no reference pass), one PPO epoch, and no reachable stop
token, so every completion runs to `--new-tokens`. Tunix runs in its own venv
(`benchmarks/tunix_grpo_step.py`, which documents what its step does); its figure is the median
wall time of its steps after a warm-up step, ours the same.

Reported: seconds for sampling, scoring (reward, advantages, batch) and updating, the whole step,
and the ratio Tunix / metajax (above 1: metajax is faster).

    python3.11 -m venv /work/tunix-venv && /work/tunix-venv/bin/pip install google-tunix==0.1.7
    python benchmarks/grpo_step.py --tunix-python /work/tunix-venv/bin/python   # ~125M Llama, fp32
    python benchmarks/grpo_step.py --small --tunix-python ...                    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import DTYPES, format_table, machine_summary, reference_config
from metajax.algorithms.grpo import GRPOConfig, policy_gradient_batch
from metajax.host import to_host
from metajax.models import init_params, save_hf
from metajax.rewards import group_advantages
from metajax.sampling import Policy, rollout
from metajax.train import OptimizerConfig, PolicyGradientLoss, init_train_state, make_optimizer, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="steps per system; the first (compiling) is not timed")
    parser.add_argument("--micro-prompts", type=int, default=2,
                        help="prompts per gradient-accumulation micro-batch in both systems (x G sequences): "
                             "the ~125M update on all 128 sequences at once needs ~37 GB")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--small", action="store_true", help="a tiny model: a smoke run in seconds")
    parser.add_argument("--tunix-python", help="python of a venv with google-tunix==0.1.7 (omit: metajax only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.prompts, args.generations, args.prompt_len, args.new_tokens, args.micro_prompts) < 1 or args.steps < 2:
        raise SystemExit("sizes must be >= 1 and --steps >= 2 (the first step compiles)")
    if args.prompts % args.micro_prompts:
        raise SystemExit(f"--micro-prompts {args.micro_prompts} must divide --prompts {args.prompts}")

    cfg = reference_config(small=args.small, max_position_embeddings=max(2048, args.prompt_len + args.new_tokens))
    params = init_params(cfg, jax.random.key(args.seed), dtype=DTYPES[args.dtype])
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(3, cfg.vocab_size, (args.prompts, args.prompt_len)).tolist()
    print(machine_summary())
    print(f"model: Llama, {cfg.num_params:,} parameters (hidden {cfg.hidden_size}, {cfg.num_layers} layers, vocab "
          f"{cfg.vocab_size}), {args.dtype}; {args.prompts} prompts x G={args.generations}, {args.prompt_len}-token "
          f"prompts, {args.new_tokens} new tokens; one update per step, accumulated over micro-batches of "
          f"{args.micro_prompts * args.generations} sequences")

    ours = metajax_steps(params, cfg, prompts, args)
    rows = [["metajax", *(statistics.median(ours[k]) for k in ("sample", "score", "update", "step"))]]
    tunix = None
    if args.tunix_python:
        load_before = os.getloadavg()[0]
        tunix = tunix_steps(params, cfg, prompts, args)
        rows.append(["tunix 0.1.7", statistics.median(tunix["rollout_seconds"]), "-",
                     statistics.median(tunix["update_seconds"]), tunix["median_step_seconds"]])
        print(f"load average before / after the Tunix run: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print(format_table(["system", "sample s", "score s", "update s", "step s (median)"], rows))
    if tunix is not None:
        print(f"step time ratio tunix / metajax: {tunix['median_step_seconds'] / statistics.median(ours['step']):.2f}x")
        print(f"tunix notes: {tunix['notes']}")


def metajax_steps(params, cfg, prompts, args) -> dict[str, list[float]]:
    """Seconds of each phase of `--steps` GRPO steps (the first, compiling, dropped)."""
    policy = Policy(params=params, cfg=cfg, tokenizer=None, stop_ids=(), pad_id=0)
    grpo = GRPOConfig(prompts_per_step=args.prompts, num_generations=args.generations,
                      max_completion_length=args.new_tokens)
    optim = OptimizerConfig(learning_rate=1e-6, schedule="constant", warmup_fraction=0.0)
    optimizer = make_optimizer(optim)
    step_fn = make_train_step(cfg, optimizer, PolicyGradientLoss(kind="dr_grpo", max_tokens=args.new_tokens),
                              grad_accum=args.prompts // args.micro_prompts)
    state = init_train_state(params, optimizer, jax.random.key(args.seed))
    times = {k: [] for k in ("sample", "score", "update", "step")}
    for step in range(args.steps):
        started = time.perf_counter()
        rows = rollout(policy.with_params(state.params), prompts, max_new_tokens=args.new_tokens,
                       n_samples=args.generations, temperature=1.0, rng=jax.random.key(step))
        jax.block_until_ready(rows.tokens)
        sampled = time.perf_counter()
        lengths = to_host(rows.lengths)
        rewards = (lengths % 3).astype(np.float32)  # as cheap as Tunix's; never constant within a group
        advantages = np.asarray(group_advantages(rewards.reshape(args.prompts, args.generations), kind="dr_grpo"))
        batch = policy_gradient_batch(policy, state.params, rows, advantages.reshape(-1), grpo)
        scored = time.perf_counter()
        state, metrics = step_fn(state, batch, 1e-6)
        jax.block_until_ready(metrics["loss"])
        updated = time.perf_counter()
        if step:  # the first step compiles
            for name, seconds in (("sample", sampled - started), ("score", scored - sampled),
                                  ("update", updated - scored), ("step", updated - started)):
                times[name].append(seconds)
    return times


def tunix_steps(params, cfg, prompts, args) -> dict:
    """Runs benchmarks/tunix_grpo_step.py on the same weights and prompts; returns its JSON report."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tunix_grpo_step.py")
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(params, cfg, os.path.join(tmp, "model"))
        with open(os.path.join(tmp, "prompts.json"), "w") as f:
            json.dump(prompts, f)
        # No reachable stop token: Tunix needs an id, so give it one the prompts never use and a
        # random model samples with probability 1 / vocab per token.
        command = [args.tunix_python, script, "--model-dir", os.path.join(tmp, "model"),
                   "--prompts", os.path.join(tmp, "prompts.json"), "--num-generations", str(args.generations),
                   "--max-new-tokens", str(args.new_tokens), "--steps", str(args.steps), "--pad-id", "0",
                   "--eos-id", "1", "--temperature", "1.0", "--micro-prompts", str(args.micro_prompts)]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"the Tunix run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
