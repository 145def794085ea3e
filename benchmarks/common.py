"""Shared pieces of the benchmarks: command-line options, a reference Llama built identically in
transformers and metajax, wall-clock timing, the machine's matmul FLOP/s, and a plain-text table.

Every benchmark measures metajax against transformers' PyTorch model on the same machine, in the
same process, with the same weights and the same number of CPU threads, so the ratio is the number
to read; absolute throughputs are for the machine at hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metajax.models import ModelConfig, config_to_hf, load_hf

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# About 100M parameters (the exact count is printed): big enough that matmuls dominate, small
# enough that a forward over 8 x 512 tokens takes seconds on two CPU cores.
REFERENCE_LLAMA = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12,
                       num_heads=12, num_kv_heads=4)
# The speed issue's small model (15.5M parameters): at this width attention and dispatch weigh more.
LLAMA_15M = dict(vocab_size=8000, hidden_size=384, intermediate_size=1024, num_layers=6, num_heads=6,
                 num_kv_heads=2)
SIZES = {"125m": REFERENCE_LLAMA, "15m": LLAMA_15M}
# Llama-3.2-1B's shapes (1.24B parameters, tied embeddings): the GPU reports' model.
GPU_LLAMA = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                 num_kv_heads=8, tie_word_embeddings=True)
# A few hundred thousand parameters: every code path runs, in seconds.
SMALL_LLAMA = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                   num_kv_heads=2)


def benchmark_parser(description: str, *, batch: int, seq: int, repeats: int = 3) -> argparse.ArgumentParser:
    """The options every benchmark takes: --dtype, --batch, --seq, --repeats, --warmup, --small, --seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="weights and activations dtype (bfloat16 is meant for GPU/TPU)")
    parser.add_argument("--batch", type=int, default=batch, help="rows per call")
    parser.add_argument("--seq", type=int, default=seq, help="tokens per row")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls per system (median reported)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed calls per system before timing, beyond the first (compiling) call")
    parser.add_argument("--size", choices=sorted(SIZES), default="125m",
                        help="the benchmark Llama: REFERENCE_LLAMA (124.7M) or LLAMA_15M")
    parser.add_argument("--small", action="store_true", help="a tiny model: a smoke run in seconds")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Rejects sizes no benchmark can run with."""
    for name in ("batch", "seq", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be non-negative, got {args.warmup}")


def reference_config(*, small: bool = False, size: str = "125m", max_position_embeddings: int = 2048) -> ModelConfig:
    """The benchmark Llama: `SIZES[size]`, or `SMALL_LLAMA` for smoke runs."""
    sizes = SMALL_LLAMA if small else SIZES[size]
    return ModelConfig.of("llama", **sizes, max_position_embeddings=max_position_embeddings)


def torch_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def use_all_cores() -> int:
    """Gives torch one intra-op thread per core (XLA's CPU client already uses every core) and
    returns that count, so both systems compute with the same threads."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()


def build_twin_models(cfg: ModelConfig, dtype: str, *, seed: int = 0):
    """The same random weights in transformers and in metajax.

    The model is initialised by transformers (its own init), written with `save_pretrained` and read
    back with `metajax.models.load_hf`, so the comparison also exercises the checkpoint path.

    Returns:
      (hf_model in eval mode on `torch_device()`, params, cfg as read back from config.json).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    hf_config = AutoConfig.for_model(**config_to_hf(cfg))
    model = AutoModelForCausalLM.from_config(hf_config)  # float32: torch's default dtype
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        params, loaded_cfg = load_hf(tmp, dtype=DTYPES[dtype])
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = model.to(device=torch_device(), dtype=torch_dtype).eval()
    return model, params, loaded_cfg


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the timed calls."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the machine was."""
        return (max(self.seconds) - min(self.seconds)) / self.median


def time_calls(fns: Mapping[str, Callable[[], object]], *, warmup: int, repeats: int) -> dict[str, Timing]:
    """Times `repeats` calls of each function after `warmup` untimed ones.

    The calls are interleaved (a, b, a, b, ...) so that load from other processes on a shared
    machine lands on every system alike and their ratio stays meaningful. Each function must
    return only once its work is done: block on JAX results (`jax.block_until_ready`), synchronise
    CUDA, or copy to host.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(s)) for name, s in seconds.items()}


def matmul_flops_per_second(dtype: str, *, size: int, repeats: int = 5) -> float:
    """The machine's dense matmul rate in `dtype`: a jitted [size, size] @ [size, size] `jnp.dot`,
    2 * size**3 FLOPs, fastest of `repeats` calls. The denominator of model FLOP utilisation: the
    attainable peak, which other load can only lower (a median of 3 read 80 GFLOP/s on a machine
    that does 136, and the model then ran at "126%" of it)."""
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(DTYPES[dtype]) for k in keys)
    # Default precision, as the model's own matmuls use (on GPU that may mean tf32 passes for fp32).
    matmul = jax.jit(jnp.dot)
    jax.block_until_ready(matmul(a, b))
    timing = time_calls({"matmul": lambda: jax.block_until_ready(matmul(a, b))}, warmup=1, repeats=repeats)
    return 2.0 * size**3 / min(timing["matmul"].seconds)


def read_bytes_per_second(*, size_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """The machine's streaming read rate: a jitted `jnp.sum` over a float32 array of `size_bytes`,
    fastest of `repeats` calls. The denominator of a memory roofline (a decode step must read every
    weight once); 1 GiB so that no cache holds it."""
    x = jnp.ones((size_bytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(x))
    timing = time_calls({"sum": lambda: jax.block_until_ready(total(x))}, warmup=1, repeats=repeats)
    return size_bytes / min(timing["sum"].seconds)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned plain-text table; floats are printed with 4 significant digits."""
    cells = [[_cell(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def machine_summary() -> str:
    """One line naming the backend, its devices, the CPU (model and vector extensions: the sessions'
    machines differ) and the load (timings taken while other processes compete are slower and noisier)."""
    devices = jax.devices()
    return (f"jax {jax.__version__} on {devices[0].platform} ({len(devices)} x {devices[0].device_kind}), "
            f"{cpu_summary()}, load average {os.getloadavg()[0]:.1f}")


def cpu_summary() -> str:
    """The CPU model, core count and the vector flags that decide matmul speed (from /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    vector = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags {' '.join(vector) or 'none of avx/avx2/avx512/amx'}"
