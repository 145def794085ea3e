"""Sampling throughput: metajax's jitted `generate` against transformers' `generate`, and decode cost growth.

Throughput: both systems continue the same random prompts greedily with the same weights, every row
generating exactly `--new-tokens` tokens (metajax: temperature 0, no stop tokens; transformers:
`do_sample=False, min_new_tokens=max_new_tokens, use_cache=True`), at each of `--batches`. The
greedy tokens are compared first; each system's first call per batch size is that check (metajax
compiles there) and is not timed. Reported: generated tokens per second (prefill included, as a
user sees it) and the ratio metajax / transformers.

Cost growth: metajax's time per decode step with `--batch` rows of `c`-token prompts, for each
context `c` of `--contexts`: (time(generate n) - time(generate 1)) / (n - 1) with n = `--new-tokens`,
so the prompt's prefill cancels out. A step attends to the prompt's `c` keys and the generated
cache, so a KV cache should make the step cost grow at most linearly in `c`.

Few-shot prompts (`--few-shot`): the shape of RaM's few-shot rollouts and baselines, a SmolLM2-shaped
Llama (163M untied) continuing 8 prompts of 896 tokens by 64 greedy tokens in both systems. Prefill
(time(generate 1)) and decode (per step, as above) are reported apart, prefill also as a fraction of
this machine's measured matmul rate (`benchmarks.common.matmul_flops_per_second`), counting the useful
work: the layers over every prompt token with causal attention, and the vocabulary projection once
per row.

RaM rollouts (`--rollouts`): 64 prompts of 128 random tokens, K = 3 continuations of 128 tokens each
(one greedy, two at temperature 0.5 with top-p 0.9, as RaM samples), as one metajax `generate` call
(`n_samples=3`, the prompt's keys and values shared by its three samples) against transformers'
greedy `generate` plus its sampled `generate(num_return_sequences=2)`. No row may stop early.

CPU roofline (`--roofline`): metajax's decode-step time of the 124.7M Llama at each of `--batches`
(default 16) against this machine's memory roofline: the bytes a step must read (every weight once,
each row's keys and values so far) over the read rate of a jitted 1 GiB `jnp.sum`.

GPU report (`--gpu-report`): decode tokens per second of a ~1B Llama (Llama-3.2-1B shapes, random
weights, bf16) at batch 1 and 64, and the fraction of the HBM-bandwidth roofline reached: a decode
step must read every matmul weight once plus each row's keys and values so far, at `--hbm-gbps`.

    python benchmarks/sample.py                     # ~100M Llama, fp32, batches 1, 16, 64 (~8 min on 2 cores)
    python benchmarks/sample.py --small             # smoke run in seconds
    python benchmarks/sample.py --few-shot          # SmolLM2 shape, 8 x 896-token prompts (~6 min on 2 cores)
    python benchmarks/sample.py --rollouts          # 124.7M Llama, 64 prompts x K = 3 (~6 min on 2 cores)
    python benchmarks/sample.py --roofline          # 124.7M Llama fp32 decode step against this machine's roofline
    python benchmarks/sample.py --gpu-report        # on a GPU: ~1B Llama bf16 against the roofline
    python benchmarks/sample.py --gpu-report --small  # the same path, tiny, on CPU
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (DTYPES, GPU_LLAMA, SMALL_LLAMA, benchmark_parser, build_twin_models, check_args, format_table,
                               machine_summary, matmul_flops_per_second, read_bytes_per_second, reference_config,
                               time_calls, torch_device, use_all_cores)
from metajax.models import ModelConfig, init_params
from metajax.sampling import generate

# SmolLM2-135M's shapes, untied (as a fine-tuned copy is): the few-shot comparison's model.
SMOLLM2_LLAMA = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                     num_kv_heads=3, tie_word_embeddings=False)
# Greedy tokens compared over this many leading tokens of each row. Random weights give flat
# distributions, so float32 rounding differences may flip a late argmax; bfloat16 flips early.
AGREEMENT_PREFIX = {"float32": 16, "bfloat16": 1}
# Fraction of rows that must agree over that prefix before anything is timed.
MIN_AGREEING_ROWS = 0.9
# Batch sizes above this get `--large-batch-repeats` timed calls: transformers takes minutes per
# call there on two CPU cores.
LARGE_BATCH = 16


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], batch=1, seq=32, repeats=2)
    parser.set_defaults(dtype=None)  # float32 for the comparison, bfloat16 for --gpu-report
    parser.add_argument("--batches", type=_int_list, default=None,
                        help="comma-separated batch sizes (default 1,16,64; 1,4 with --small; 1,64 with --gpu-report)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row (default 128; 32 with --small)")
    parser.add_argument("--contexts", type=_int_list, default=None,
                        help="prompt lengths for the cost-growth runs (default 128,512,2048; 32,128 with --small)")
    parser.add_argument("--large-batch-repeats", type=int, default=1,
                        help=f"timed calls per system for batches above {LARGE_BATCH}")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: one per core, as XLA uses); on a loaded "
                             "machine 1 can be far faster, as torch's threads wait on each other")
    parser.add_argument("--few-shot", action="store_true",
                        help="SmolLM2-shaped Llama, 8 prompts of 896 tokens, 64 new tokens: prefill and decode apart")
    parser.add_argument("--rollouts", action="store_true",
                        help="RaM's rollouts: 64 prompts x K = 3 (one greedy, two at T 0.5 / top-p 0.9), 128 new tokens")
    parser.add_argument("--roofline", action="store_true",
                        help="metajax alone: decode-step time against this machine's memory roofline (bytes a "
                             "step reads over the measured read rate of a 1 GiB sum), at each of --batches")
    parser.add_argument("--gpu-report", action="store_true",
                        help="metajax alone: ~1B Llama decode tokens/s and fraction of the HBM roofline")
    parser.add_argument("--hbm-gbps", type=float, default=3350.0,
                        help="peak memory bandwidth in GB/s for --gpu-report (default: H100 SXM)")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.gpu_report else "float32")
    args.batches = args.batches or ((1, 64) if args.gpu_report else (1, 4) if args.small else
                                    (16,) if args.roofline else (1, 16, 64))
    args.new_tokens = args.new_tokens or (32 if args.small else 128)
    args.contexts = args.contexts or ((32, 128) if args.small else (128, 512, 2048))
    check_args(args)
    for name in ("new_tokens", "large_batch_repeats", "hbm_gbps", "torch_threads"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.new_tokens < 2:
        raise ValueError(f"--new-tokens must be at least 2 (a decode step is timed as generate(n) - "
                         f"generate(1)), got {args.new_tokens}")

    print(machine_summary())
    if args.gpu_report:
        gpu_report(args)
        return
    if args.roofline:
        cpu_roofline(args)
        return
    import torch

    threads = use_all_cores()
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
        threads = torch.get_num_threads()
    max_context = max(max(args.contexts), args.seq) + args.new_tokens
    if args.few_shot:
        cfg = ModelConfig.of("llama", **(dict(SMALL_LLAMA) if args.small else SMOLLM2_LLAMA),
                             max_position_embeddings=2048)
    else:
        cfg = reference_config(small=args.small, size=args.size, max_position_embeddings=max(2048, max_context))
    hf_model, params, cfg = build_twin_models(cfg, args.dtype, seed=args.seed)
    print(f"torch {torch.__version__} on {torch_device()}, torch.get_num_threads() = {threads}; "
          f"XLA_FLAGS = {os.environ.get('XLA_FLAGS', '(unset)')!r}")
    print(_describe(cfg, args.dtype))
    if args.few_shot:
        few_shot(hf_model, params, cfg, args)
        return
    if args.rollouts:
        rollouts(hf_model, params, cfg, args)
        return
    throughput(hf_model, params, cfg, args)
    cost_growth(params, cfg, args)


def throughput(hf_model, params, cfg: ModelConfig, args) -> None:
    """Prints greedy agreement and generated tokens/s of both systems at each of `args.batches`."""
    n = args.new_tokens
    print(f"\nthroughput: prompts of {args.seq} random tokens, {n} greedy new tokens per row, "
          f"{args.repeats} timed calls per system ({args.large_batch_repeats} above batch {LARGE_BATCH}), "
          "interleaved, median")
    rows, ratios = [], {}
    shown = sorted({min(32, n), n})  # agreement reported over these leading tokens
    for batch in args.batches:
        prompts = np.random.default_rng(args.seed + batch).integers(0, cfg.vocab_size, (batch, args.seq),
                                                                      dtype=np.int32)

        def run_metajax():
            return metajax_generate(params, cfg, prompts, n)

        def run_transformers():
            return transformers_generate(hf_model, prompts, n)

        ours, theirs = run_metajax(), run_transformers()  # metajax compiles this shape here
        prefix = min(AGREEMENT_PREFIX[args.dtype], n)
        agree = {k: float(np.mean(np.all(ours[:, :k] == theirs[:, :k], axis=1))) for k in (prefix, *shown)}
        if agree[prefix] < MIN_AGREEING_ROWS:
            raise SystemExit(f"batch {batch}: only {agree[prefix]:.0%} of rows generate the same first {prefix} "
                             "greedy tokens in metajax and transformers; not timing")
        repeats = args.repeats if batch <= LARGE_BATCH else args.large_batch_repeats
        timings = time_calls({"metajax": run_metajax, "transformers": run_transformers},
                             warmup=args.warmup, repeats=repeats)
        ours_s, theirs_s = timings["metajax"].median, timings["transformers"].median
        ratios[batch] = theirs_s / ours_s
        rows.append((batch, repeats, *(f"{agree[k]:.0%}" for k in shown), ours_s, theirs_s,
                     batch * n / ours_s, batch * n / theirs_s, f"{ratios[batch]:.3g}x",
                     f"{max(t.spread for t in timings.values()):.0%}", f"{os.getloadavg()[0]:.1f}"))
    print(format_table(("batch", "calls", *(f"same@{k}" for k in shown), "metajax s", "transformers s",
                        "metajax tok/s", "transformers tok/s", "ratio", "spread", "load"), rows))
    print("same@k: fraction of rows whose first k greedy tokens are identical in both systems; "
          "spread: worst (max - min) / median of either system")
    print("ratio (metajax / transformers tokens/s): "
          + ", ".join(f"batch {b}: {r:.3g}x" for b, r in ratios.items())
          + "; target >= 1.5x (and >= 1.2x Tunix's sampler)")


def few_shot(hf_model, params, cfg: ModelConfig, args) -> None:
    """Prints both systems' prefill and decode-step times on few-shot-length prompts, and the ratios."""
    batch, prompt_len, n = (4, 96, 16) if args.small else (8, 896, 64)
    prompts = np.random.default_rng(args.seed).integers(0, cfg.vocab_size, (batch, prompt_len), dtype=np.int32)
    systems = {
        "metajax": lambda tokens: lambda: metajax_generate(params, cfg, prompts, tokens),
        "transformers": lambda tokens: lambda: transformers_generate(hf_model, prompts, tokens),
    }
    ours, theirs = systems["metajax"](n)(), systems["transformers"](n)()  # metajax compiles here
    systems["metajax"](1)()
    prefix = min(AGREEMENT_PREFIX[args.dtype], n)
    agree = float(np.mean(np.all(ours[:, :prefix] == theirs[:, :prefix], axis=1)))
    if agree < MIN_AGREEING_ROWS:
        raise SystemExit(f"only {agree:.0%} of rows generate the same first {prefix} greedy tokens; not timing")
    calls = {f"{name} {tokens}": make(tokens) for name, make in systems.items() for tokens in (n, 1)}
    timings = time_calls(calls, warmup=args.warmup, repeats=args.repeats)
    peak = matmul_flops_per_second(args.dtype, size=256 if args.small else 2048)
    projection = 2.0 * cfg.hidden_size * cfg.vocab_size
    prefill_flops = (cfg.flops_per_token((prompt_len + 1) / 2) - projection) * batch * prompt_len + projection * batch
    print(f"\nfew-shot: {batch} prompts of {prompt_len} random tokens, {n} greedy new tokens; prefill = "
          f"time(generate 1), decode step = (time(generate {n}) - time(generate 1)) / {n - 1}; median of "
          f"{args.repeats} interleaved calls; same first {prefix} tokens in {agree:.0%} of rows; matmul probe "
          f"{peak / 1e9:.4g} GFLOP/s, prefill work {prefill_flops / 1e9:.4g} GFLOP")
    rows, figures = [], {}
    for name in systems:
        total, prefill_s = timings[f"{name} {n}"].median, timings[f"{name} 1"].median
        figures[name] = (total, prefill_s, (total - prefill_s) / (n - 1))
        rows.append((name, total, batch * n / total, prefill_s, f"{prefill_flops / prefill_s / peak:.1%}",
                     figures[name][2] * 1e3, f"{max(timings[f'{name} {t}'].spread for t in (n, 1)):.0%}"))
    print(format_table(("system", "total s", "tok/s", "prefill s", "prefill of matmul peak", "decode ms / step",
                        "spread"), rows))
    ratios = [figures["transformers"][i] / figures["metajax"][i] for i in range(3)]
    print(f"ratio (transformers time / metajax time): total {ratios[0]:.3g}x, prefill {ratios[1]:.3g}x, "
          f"decode step {ratios[2]:.3g}x; target total >= 1.3x, prefill >= 60% of the matmul peak; "
          f"load {os.getloadavg()[0]:.1f}")


def rollouts(hf_model, params, cfg: ModelConfig, args) -> None:
    """Prints both systems' time for RaM's K = 3 rollouts of the same prompts, and the ratio."""
    import torch

    num_prompts, prompt_len, n = (4, 16, 8) if args.small else (64, 128, 128)
    prompts = np.random.default_rng(args.seed).integers(0, cfg.vocab_size, (num_prompts, prompt_len), dtype=np.int32)
    calls = iter(range(1 << 30))  # a fresh key per call, as a run draws them

    def run_metajax():
        samples = generate(params, cfg, prompts, max_new_tokens=n, n_samples=3, temperature=[0.0, 0.5, 0.5],
                           top_p=0.9, rng=jax.random.key(next(calls)))
        return np.asarray(samples.lengths)

    def run_transformers():
        tokens = torch.from_numpy(prompts).long().to(hf_model.device)
        common = dict(attention_mask=torch.ones_like(tokens), use_cache=True, max_new_tokens=n, min_new_tokens=n,
                      pad_token_id=0)
        with torch.inference_mode():
            greedy = hf_model.generate(tokens, do_sample=False, **common)
            sampled = hf_model.generate(tokens, do_sample=True, temperature=0.5, top_p=0.9, top_k=0,
                                        num_return_sequences=2, **common)
        return greedy.shape[0] + sampled.shape[0]

    lengths = run_metajax()  # compiles
    if not (lengths == n).all():
        raise SystemExit(f"some metajax rows stopped before {n} tokens; not timing")
    run_transformers()
    timings = time_calls({"metajax": run_metajax, "transformers": run_transformers}, warmup=args.warmup,
                         repeats=args.repeats)
    rows = [(name, t.median, 3 * num_prompts * n / t.median, f"{t.spread:.0%}") for name, t in timings.items()]
    print(f"\nrollouts: {num_prompts} prompts of {prompt_len} random tokens, K = 3 x {n} new tokens (one greedy, two "
          f"at T 0.5 / top-p 0.9); median of {args.repeats} interleaved calls")
    print(format_table(("system", "median s", "tok/s", "spread"), rows))
    ratio = timings["transformers"].median / timings["metajax"].median
    print(f"ratio (transformers time / metajax time): {ratio:.3g}x; target >= 2x (and >= 1.5x Tunix); "
          f"load {os.getloadavg()[0]:.1f}")


def cost_growth(params, cfg: ModelConfig, args) -> None:
    """Prints metajax's time per decode step at each of `args.contexts` and its growth."""
    n = args.new_tokens
    print(f"\ncost growth: batch {args.batch}, prompts of c tokens, time per decode step = "
          f"(time(generate {n}) - time(generate 1)) / {n - 1}, median of {args.repeats} interleaved calls")
    steps = {}
    for context in args.contexts:
        prompts = np.random.default_rng(args.seed + context).integers(0, cfg.vocab_size, (args.batch, context),
                                                                        dtype=np.int32)
        steps[context] = decode_step_seconds(params, cfg, prompts, n, warmup=args.warmup, repeats=args.repeats)
    base_context = args.contexts[0]
    base = steps[base_context]
    rows, previous = [], None
    for context, seconds in steps.items():
        marginal = "" if previous is None else (seconds - steps[previous]) / (context - previous) * 1e9
        rows.append((context, seconds * 1e3, args.batch / seconds, f"{seconds / base:.3g}x",
                     f"{context / base_context:.3g}x", marginal))
        previous = context
    print(format_table(("context", "ms / step", "decode tok/s", "step ratio", "context ratio",
                        "marginal ns / step / context token"), rows))
    linear = all(steps[c] / base <= c / base_context for c in args.contexts)
    print(f"growth from context {base_context} to {args.contexts[-1]}: step time x{steps[args.contexts[-1]] / base:.3g} "
          f"for context x{args.contexts[-1] / base_context:.3g}: "
          + ("at most linear" if linear else "FASTER than linear"))


def gpu_report(args) -> None:
    """Prints metajax decode tokens/s and the fraction of the HBM-bandwidth roofline reached."""
    sizes = dict(SMALL_LLAMA, tie_word_embeddings=True) if args.small else GPU_LLAMA
    cfg = ModelConfig.of("llama", **sizes, max_position_embeddings=max(2048, args.seq + args.new_tokens))
    params = init_params(cfg, jax.random.key(args.seed), dtype=DTYPES[args.dtype])
    print(_describe(cfg, args.dtype))
    roofline_table(params, cfg, args, args.hbm_gbps * 1e9, f"{args.hbm_gbps:g} GB/s (--hbm-gbps)")


def cpu_roofline(args) -> None:
    """Prints the reference Llama's decode-step time against this machine's measured read rate."""
    cfg = reference_config(small=args.small, size=args.size,
                           max_position_embeddings=max(2048, args.seq + args.new_tokens))
    params = init_params(cfg, jax.random.key(args.seed), dtype=DTYPES[args.dtype])
    print(_describe(cfg, args.dtype))
    mib = 16 if args.small else 1024
    roofline_table(params, cfg, args, read_bytes_per_second(size_bytes=mib << 20), f"a jnp.sum over {mib} MiB")


def roofline_table(params, cfg: ModelConfig, args, bytes_per_second: float, source: str) -> None:
    """Prints metajax's decode-step time at each of `args.batches` against the memory roofline: the
    bytes a step must read (every weight once, and each row's keys and values so far) at
    `bytes_per_second`."""
    n = args.new_tokens
    itemsize = np.dtype(DTYPES[args.dtype]).itemsize
    # The input embedding is a gather of `batch` rows; every other weight is read whole each step.
    weight_bytes = (cfg.num_params - (not cfg.tie_word_embeddings) * cfg.vocab_size * cfg.hidden_size) * itemsize
    kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
    mean_context = args.seq + (n - 1) / 2  # keys a step needs, averaged over the steps timed
    print(f"decode: prompts of {args.seq} tokens, step time = (time(generate {n}) - time(generate 1)) / {n - 1}, "
          f"median of {args.repeats}; roofline at {bytes_per_second / 1e9:.4g} GB/s from {source}: weights "
          f"{weight_bytes / 1e9:.4g} GB + KV cache {kv_bytes_per_token / 1e3:.4g} kB per row and context token "
          f"(mean context {mean_context:g})")
    rows = []
    for batch in args.batches:
        prompts = np.random.default_rng(args.seed + batch).integers(0, cfg.vocab_size, (batch, args.seq),
                                                                      dtype=np.int32)
        seconds = decode_step_seconds(params, cfg, prompts, n, warmup=args.warmup, repeats=args.repeats)
        step_bytes = weight_bytes + batch * kv_bytes_per_token * mean_context
        roofline = step_bytes / bytes_per_second
        rows.append((batch, seconds * 1e3, batch / seconds, step_bytes / 1e9, roofline * 1e3,
                     f"{roofline / seconds:.1%}"))
    print(format_table(("batch", "ms / step", "decode tok/s", "GB / step", "roofline ms", "of roofline"), rows))


def decode_step_seconds(params, cfg: ModelConfig, prompts: np.ndarray, n: int, *, warmup: int,
                        repeats: int) -> float:
    """Seconds per greedy decode step of metajax's `generate` on prompts int32[batch, prompt_len]:
    (time(n new tokens) - time(1 new token)) / (n - 1), each the median of `repeats` interleaved calls
    after one compiling call per shape (plus `warmup`)."""
    def run(tokens):
        return lambda: metajax_generate(params, cfg, prompts, tokens)

    timings = time_calls({"n": run(n), "1": run(1)}, warmup=1 + warmup, repeats=repeats)
    return (timings["n"].median - timings["1"].median) / (n - 1)


def metajax_generate(params, cfg: ModelConfig, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
    """int32[batch, new_tokens]: metajax's greedy continuation, copied to the host. `generate` returns
    device arrays as soon as the program is dispatched; a timing must wait for the tokens."""
    return np.asarray(generate(params, cfg, prompts, max_new_tokens=new_tokens, temperature=0.0).tokens)


def transformers_generate(model, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
    """int[batch, new_tokens]: transformers' greedy KV-cache continuation of prompts int32[batch, prompt_len]."""
    import torch

    tokens = torch.from_numpy(prompts).long().to(model.device)
    with torch.inference_mode():
        out = model.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False, use_cache=True,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return out[:, prompts.shape[1]:].cpu().numpy()


def _describe(cfg: ModelConfig, dtype: str) -> str:
    return (f"model: Llama, {cfg.num_params:,} parameters (hidden {cfg.hidden_size}, {cfg.num_layers} layers, "
            f"{cfg.num_heads} heads / {cfg.num_kv_heads} kv heads, intermediate {cfg.intermediate_size}, "
            f"vocab {cfg.vocab_size}), {dtype}")


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(","))
    if any(v < 1 for v in values):
        raise ValueError(f"expected positive integers separated by commas, got {text!r}")
    return values


if __name__ == "__main__":
    main()
