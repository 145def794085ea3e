"""Compiling one program for a TPU slice and reading what the compiler says about it."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import jax

from metajax.aot.estimate import flops, memory_bytes
from metajax.aot.programs import Program
from metajax.aot.topologies import Slice

GIB = 2.0 ** 30
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_OP = re.compile(r"\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


@dataclasses.dataclass
class Result:
    """What one compile gave. Bytes are per device; `peak` is the compiler's figure when it gives
    one, else arguments + outputs - aliased + temporaries."""

    program: str
    what: str
    estimate: float
    flops: float
    hbm: float
    compiled: bool = False
    error: str | None = None
    argument: int = 0
    output: int = 0
    alias: int = 0
    temp: int = 0
    peak: int = 0
    compiler_flops: float | None = None
    collectives: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.compiled and self.peak <= self.hbm


def compile_program(program: Program, cfg, target: Slice, mesh_shape: dict[str, int]) -> Result:
    """Lowers and compiles `program`; an out-of-memory compile is a result, other errors raise."""
    result = Result(program.name, program.what, estimate=memory_bytes(cfg, program.dims, mesh_shape),
                    flops=flops(cfg, program.dims), hbm=target.chip.hbm_gib * GIB)
    lowered = program.lower()
    # A TPU executable compiled here cannot be loaded here: keep it out of the persistent cache.
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        compiled = lowered.compile()
    except Exception as e:  # XlaRuntimeError; its type moved between jax versions
        if not _out_of_memory(str(e)):
            raise
        result.error = str(e)
        return result
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    stats = compiled.memory_analysis()
    result.compiled = True
    result.argument, result.output = stats.argument_size_in_bytes, stats.output_size_in_bytes
    result.alias, result.temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    peak = getattr(stats, "peak_memory_in_bytes", 0) or 0
    result.peak = peak or result.argument + result.output - result.alias + result.temp
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    result.compiler_flops = (cost or {}).get("flops")
    result.collectives = count_collectives(compiled.as_text())
    return result


def count_collectives(hlo_text: str) -> dict[str, int]:
    """How many collective ops of each kind the optimised HLO holds (each op once, even inside a
    loop body that runs many times)."""
    counts = Counter(match.group(1) for match in _COLLECTIVE_OP.finditer(hlo_text))
    return {kind: counts[kind] for kind in COLLECTIVES if counts[kind]}


def _out_of_memory(message: str) -> bool:
    return any(s in message for s in ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory", "exceeds the"))


def describe(result: Result, num_devices: int, bf16_tflops: float) -> list[str]:
    """The report's lines for one program."""
    lines = [f"program {result.program}: {result.what}"]
    if not result.compiled:
        lines.append(f"  compile: out of memory (estimated {result.estimate / GIB:.2f} GiB per device of "
                     f"{result.hbm / GIB:.1f} GiB)")
        lines += ["  | " + line for line in result.error.strip().splitlines()[:12]]
        lines.append("  fits: no")
        return lines
    lines.append(f"  memory per device: arguments {result.argument / GIB:.2f} GiB, outputs {result.output / GIB:.2f} GiB "
                 f"(aliased {result.alias / GIB:.2f}), temporaries {result.temp / GIB:.2f} GiB")
    lines.append(f"  peak {result.peak / GIB:.2f} GiB of {result.hbm / GIB:.1f} GiB HBM ({100 * result.peak / result.hbm:.0f}%);"
                 f" analytic estimate {result.estimate / GIB:.2f} GiB")
    per_device = result.flops / num_devices
    compiler = "" if result.compiler_flops is None else (
        f"; the compiler's cost_analysis says {result.compiler_flops:.3g} per device (loop bodies counted once)")
    lines.append(f"  flops per call: {result.flops:.3g} analytic, {per_device:.3g} per device "
                 f"({per_device / (bf16_tflops * 1e12):.3g} s at the chip's bf16 peak){compiler}")
    collectives = ", ".join(f"{k} {v}" for k, v in result.collectives.items()) or "none"
    lines.append(f"  collectives: {collectives}")
    lines.append(f"  fits: {'yes' if result.fits else 'no'}")
    return lines
