"""Chain-scoring throughput: metajax's jitted `sequence_logprobs` against transformers.

Both systems score the same batch with the same weights: transformers' PyTorch forward under
`torch.inference_mode()`, then `log_softmax` and a gather of the target tokens (what RaM's reward
code does), against `metajax.models.sequence_logprobs` (compiled). The results are
compared before anything is timed.

Reported: target tokens scored per second, the ratio metajax / transformers, and model FLOP
utilisation: `cfg.flops_per_token(seq) * batch * seq / seconds` over the machine's measured matmul
rate in the same dtype. The FLOP count takes every position (the forward and the vocabulary
projection run over all of them, targets or not) and attention over all `seq` keys, without
discounting the causal half (dense masked attention computes it anyway).

    python benchmarks/score.py                  # ~100M Llama, fp32, 8 x 512, on this machine
    python benchmarks/score.py --small          # smoke run in seconds
    python benchmarks/score.py --dtype bfloat16 # on a GPU: bf16 against a bf16 matmul probe
    python benchmarks/score.py --gpu-report --batch 16 --seq 1024  # on a GPU: ~1B Llama, bf16 MFU
    python benchmarks/score.py --ram-workload   # RaM's VOC scoring: shared prompts, against full sequences

RaM workload (`--ram-workload`): what one expert-iteration round scores per question, for
`--batch` questions (default 16): a few-shot prompt of ~400 tokens, K = 3 sampled chains of ~100
tokens and an answer of 8, each answer scored after its chain and after no chain (4 distinct
sequences a question). metajax's `chain_logprobs` runs each prompt once and its 4 continuations after
it (`metajax.models.score_continuations`); transformers scores the 4 full sequences, 16 to a batch,
right-padded.

GPU report (`--gpu-report`): metajax alone scores chains with a ~1B Llama (Llama-3.2-1B shapes,
random weights, bf16) and prints its model FLOP utilisation against the measured matmul probe and,
with `--peak-tflops`, against the chip's datasheet peak.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (DTYPES, GPU_LLAMA, SMALL_LLAMA, benchmark_parser, build_twin_models, check_args,
                               format_table, machine_summary, matmul_flops_per_second, reference_config, time_calls,
                               torch_device, use_all_cores)
from metajax.batching import pad_rows
from metajax.models import ModelConfig, init_params
from metajax.models.logprobs import chain_logprobs, sequence_logprobs

# Largest |metajax - transformers| tolerated, relative to the largest |score|: float32 sums of a
# few hundred log-probs agree to ~1e-6; bfloat16 activations round at ~4e-3 per op.
AGREEMENT = {"float32": 1e-4, "bfloat16": 5e-2}


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], batch=8, seq=512)
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the square matmul probe (default 2048 on CPU, 8192 elsewhere)")
    parser.add_argument("--gpu-report", action="store_true",
                        help="metajax alone: ~1B Llama bf16 chain scoring and its model FLOP utilisation")
    parser.add_argument("--ram-workload", action="store_true",
                        help="RaM's scoring: --batch questions x (K = 3 chains + the direct answer), shared prompts")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the chip's peak in the benchmark dtype, for --gpu-report (H100 SXM bf16 dense: 989)")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if args.gpu_report and "--dtype" not in given:
        args.dtype = "bfloat16"
    if args.ram_workload and "--batch" not in given:
        args.batch = 16  # questions
    check_args(args)
    if args.seq < 2:
        raise ValueError(f"--seq must be at least 2 (position 0 cannot be a target), got {args.seq}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise ValueError(f"--peak-tflops must be positive, got {args.peak_tflops}")
    if args.gpu_report:
        print(machine_summary())
        gpu_report(args)
        return

    if args.ram_workload:
        ram_workload(args)
        return
    import torch

    threads = use_all_cores()
    cfg = reference_config(small=args.small, size=args.size, max_position_embeddings=max(2048, args.seq))
    hf_model, params, cfg = build_twin_models(cfg, args.dtype, seed=args.seed)
    tokens, target_mask = scoring_batch(cfg.vocab_size, args.batch, args.seq, seed=args.seed)
    attention_mask = np.ones_like(target_mask)

    print(machine_summary())
    print(f"torch {torch.__version__} on {torch_device()}, torch.get_num_threads() = {threads}; "
          f"XLA_FLAGS = {os.environ.get('XLA_FLAGS', '(unset)')!r}")
    print(f"model: Llama, {cfg.num_params:,} parameters (hidden {cfg.hidden_size}, {cfg.num_layers} layers, "
          f"{cfg.num_heads} heads / {cfg.num_kv_heads} kv heads, intermediate {cfg.intermediate_size}, "
          f"vocab {cfg.vocab_size}), {args.dtype}")
    print(f"batch: {args.batch} x {args.seq} tokens, {int(target_mask.sum())} targets "
          f"(the last {args.seq - args.seq // 2} positions of each row)")

    # As `score_sequences` does: vocabulary logits only where a target is predicted.
    max_targets = int(target_mask.sum(axis=1).max())
    device = torch_device()
    torch_tokens = torch.from_numpy(tokens).to(device)
    torch_targets = torch.from_numpy(target_mask).to(device)
    torch_attention = torch.from_numpy(attention_mask).to(device)

    def run_metajax():
        return jax.block_until_ready(sequence_logprobs(params, cfg, tokens, target_mask, attention_mask=attention_mask,
                                           max_targets=max_targets))

    def run_transformers():
        return transformers_sequence_logprobs(hf_model, torch_tokens, torch_targets, torch_attention)

    check_agreement(np.asarray(run_metajax()), run_transformers(), args.dtype)  # also compiles metajax

    # The agreement check above was each system's first call (metajax compiled there).
    timings = time_calls({"metajax": run_metajax, "transformers": run_transformers},
                         warmup=args.warmup, repeats=args.repeats)
    matmul_size = args.matmul_size or (2048 if jax.default_backend() == "cpu" else 8192)
    peak = matmul_flops_per_second(args.dtype, size=matmul_size)
    targets = int(target_mask.sum())
    # Useful work: the whole stack over every position, the vocabulary projection only where a
    # target is scored (transformers computes it everywhere; that surplus is not counted for it).
    flops = useful_flops(cfg, args.batch, args.seq, targets)

    rows = []
    for name, timing in timings.items():
        achieved = flops / timing.median
        rows.append((name, timing.median, f"{timing.spread:.1%}", targets / timing.median,
                     achieved / 1e9, f"{achieved / peak:.1%}"))
    print(f"\nmatmul probe: {matmul_size}^3 {args.dtype} jnp.dot = {peak / 1e9:.4g} GFLOP/s; useful model work "
          f"= {flops / 1e9:.4g} GFLOP per call ({args.batch * args.seq} tokens, {targets} scored)")
    print(format_table(
        ("system", "median s", "spread", "target tok/s", "model GFLOP/s", "MFU"), rows))
    ratio = timings["transformers"].median / timings["metajax"].median
    print(f"\nmetajax / transformers throughput: {ratio:.3g}x "
          f"(median of {args.repeats} interleaved calls each)")


def ram_workload(args, *, prompt_len: int = 400, chain_len: int = 100, answer_len: int = 8, k: int = 3,
                 torch_batch: int = 16) -> None:
    """RaM's VOC scoring of `args.batch` questions (see the module docstring), metajax against
    transformers on the same weights and sequences."""
    import torch

    threads = use_all_cores()
    cfg = reference_config(small=args.small, size=args.size)
    hf_model, params, cfg = build_twin_models(cfg, args.dtype, seed=args.seed)
    rng = np.random.default_rng(args.seed)

    def draw(mean):  # a ragged length within 10% of `mean`
        return rng.integers(1, cfg.vocab_size, int(rng.integers(mean * 9 // 10, mean * 11 // 10 + 1))).tolist()

    questions = [(draw(prompt_len), [draw(chain_len) for _ in range(k)], draw(answer_len)) for _ in range(args.batch)]
    prompts = [prompt for prompt, chains, _ in questions for _ in chains]
    thoughts = [chain for _, chains, _ in questions for chain in chains]
    answers = [answer for _, chains, answer in questions for _ in chains]
    # The distinct sequences RaM needs: each chain's, and each question's direct answer once.
    sequences = [(prompt + chain + answer, len(prompt) + len(chain)) for prompt, chains, answer in questions
                 for chain in chains] + [(prompt + answer, len(prompt)) for prompt, _, answer in questions]

    print(machine_summary())
    print(f"torch {torch.__version__} on {torch_device()}, torch.get_num_threads() = {threads}")
    print(f"model: Llama, {cfg.num_params:,} parameters (hidden {cfg.hidden_size}, {cfg.num_layers} layers, "
          f"vocab {cfg.vocab_size}), {args.dtype}")
    print(f"workload: {args.batch} questions x (K = {k} chains + the direct answer): prompts ~{prompt_len}, chains "
          f"~{chain_len}, answers ~{answer_len} tokens; {len(sequences)} sequences, "
          f"{sum(len(t) for t, _ in sequences):,} tokens in all")

    def run_metajax():
        return chain_logprobs(params, cfg, prompts, thoughts, answers, batch_size=64)  # numpy: waits

    def run_transformers():
        scores = []
        for start in range(0, len(sequences), torch_batch):
            chunk = sequences[start:start + torch_batch]
            length = max(len(t) for t, _ in chunk)
            tokens, attention = pad_rows([t for t, _ in chunk], length=length)
            targets, _ = pad_rows([[0] * context + [1] * (len(t) - context) for t, context in chunk], length=length)
            scores.append(transformers_sequence_logprobs(hf_model, torch.from_numpy(tokens), torch.from_numpy(targets),
                                                         torch.from_numpy(attention)))
        return np.concatenate(scores)

    with_chain, direct = run_metajax()  # also compiles metajax
    check_agreement(np.concatenate([with_chain, direct[::k]]), run_transformers(), args.dtype,
                    detail=f" ({len(thoughts)} with a chain, {args.batch} direct)")
    timings = time_calls({"metajax": run_metajax, "transformers": run_transformers},
                         warmup=args.warmup, repeats=args.repeats)
    print(format_table(("system", "median s", "spread", "questions/s"),
                       [(name, t.median, f"{t.spread:.1%}", args.batch / t.median) for name, t in timings.items()]))
    ratio = timings["transformers"].median / timings["metajax"].median
    print(f"\nmetajax / transformers, RaM scoring workload: {ratio:.3g}x (target >= 2x; median of {args.repeats} "
          f"interleaved calls each)")


def check_agreement(ours: np.ndarray, theirs: np.ndarray, dtype: str, *, detail: str = "") -> None:
    """Prints how far metajax's scores are from transformers' and stops before timing if too far."""
    diff = float(np.max(np.abs(ours - theirs)))
    print(f"agreement: max |metajax - transformers| = {diff:.3g} over scores of magnitude up to "
          f"{np.max(np.abs(theirs)):.4g}{detail}")
    if not diff <= AGREEMENT[dtype] * np.max(np.abs(theirs)):
        raise SystemExit(f"metajax and transformers disagree (max abs diff {diff:.3g}); not timing")


def useful_flops(cfg: ModelConfig, batch: int, seq: int, targets: int) -> float:
    """The whole stack over every position, the vocabulary projection only where a target is scored
    (transformers computes it everywhere; that surplus is not counted for it)."""
    projection = 2.0 * cfg.hidden_size * cfg.vocab_size
    return (cfg.flops_per_token(seq) - projection) * batch * seq + projection * targets


def gpu_report(args) -> None:
    """Prints metajax's chain-scoring time and model FLOP utilisation for a ~1B Llama."""
    sizes = dict(SMALL_LLAMA, tie_word_embeddings=True) if args.small else GPU_LLAMA
    cfg = ModelConfig.of("llama", **sizes, max_position_embeddings=max(2048, args.seq))
    params = init_params(cfg, jax.random.key(args.seed), dtype=DTYPES[args.dtype])
    tokens, target_mask = scoring_batch(cfg.vocab_size, args.batch, args.seq, seed=args.seed)
    max_targets = int(target_mask.sum(axis=1).max())

    def run():
        return jax.block_until_ready(sequence_logprobs(params, cfg, tokens, target_mask, max_targets=max_targets))

    run()  # compiles
    timing = time_calls({"metajax": run}, warmup=args.warmup, repeats=args.repeats)["metajax"]
    matmul_size = args.matmul_size or (256 if args.small else 8192)
    probe = matmul_flops_per_second(args.dtype, size=matmul_size)
    flops = useful_flops(cfg, args.batch, args.seq, int(target_mask.sum()))
    achieved = flops / timing.median
    print(f"model: Llama, {cfg.num_params:,} parameters (hidden {cfg.hidden_size}, {cfg.num_layers} layers, "
          f"vocab {cfg.vocab_size}), {args.dtype}; {args.batch} x {args.seq} tokens, {int(target_mask.sum())} "
          f"scored; {flops / 1e12:.4g} TFLOP of useful work per call")
    peak = "" if args.peak_tflops is None else f"{achieved / (args.peak_tflops * 1e12):.1%}"
    print(format_table(("median s", "spread", "target tok/s", "TFLOP/s", f"MFU vs {matmul_size}^3 probe "
                        f"({probe / 1e12:.4g} TFLOP/s)", "MFU vs --peak-tflops"),
                       [(timing.median, f"{timing.spread:.1%}", target_mask.sum() / timing.median, achieved / 1e12,
                         f"{achieved / probe:.1%}", peak or "-")]))
    print("target: >= 50% MFU (bf16, ~1B Llama)")


def scoring_batch(vocab_size: int, batch: int, seq: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens int32[batch, seq] and a target mask bool[batch, seq] over each row's second half:
    a prompt and chain of thought as context, an answer of about the same length to score."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, size=(batch, seq), dtype=np.int32)
    target_mask = np.zeros((batch, seq), bool)
    target_mask[:, seq // 2:] = True
    return tokens, target_mask


def transformers_sequence_logprobs(model, tokens, target_mask, attention_mask) -> np.ndarray:
    """float32[batch]: sum of log p(tokens[t] | tokens[:t]) over `target_mask`, the usual PyTorch way
    (full-vocabulary log_softmax in float32, then a gather)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=tokens.long(), attention_mask=attention_mask.long()).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logprobs.gather(-1, tokens[:, 1:, None].long())[..., 0]
        return (picked * target_mask[:, 1:]).sum(-1).cpu().numpy()


if __name__ == "__main__":
    main()
