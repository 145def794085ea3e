"""The TPU slices `metajax.aot` compiles for: the names users type, mapped to libtpu topologies.

A slice name is `<generation>-<N>` as Cloud TPU spells it: N counts chips on v5e and v6e, and
TensorCores on v4 and v5p (two per chip, fused into one "megacore" device). Raw
`jax.experimental.topologies` names (`v5e:2x2`, `v5:2x4x4`, ...) work too.
"""

from __future__ import annotations

import dataclasses
import functools
import os


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: its libtpu topology prefix, chip configuration and per-device numbers."""

    prefix: str  # "v5e" -> topologies "v5e:AxB"
    chip_config: str  # "megacore" fuses a v4/v5p chip's two TensorCores into one device
    hbm_gib: float  # per device
    bf16_tflops: float  # peak dense bf16 per device
    cores_in_name: int  # what the N of "v5p-N" counts per device


CHIPS = {
    "v4": Chip("v4", "megacore", 32.0, 275.0, cores_in_name=2),
    "v5e": Chip("v5e", "default", 16.0, 197.0, cores_in_name=1),
    "v5p": Chip("v5", "megacore", 95.0, 459.0, cores_in_name=2),
    "v6e": Chip("v6e", "default", 32.0, 918.0, cores_in_name=1),
}

# slice name -> (chip, topology bounds). The shapes are Cloud TPU's for these slice sizes.
SLICES = {
    "v4-8": ("v4", "2x2x1"), "v4-16": ("v4", "2x2x2"), "v4-32": ("v4", "2x2x4"), "v4-64": ("v4", "2x4x4"),
    "v5e-1": ("v5e", "1x1"), "v5e-4": ("v5e", "2x2"), "v5e-8": ("v5e", "2x4"), "v5e-16": ("v5e", "4x4"),
    "v5e-32": ("v5e", "4x8"), "v5e-64": ("v5e", "8x8"), "v5e-256": ("v5e", "16x16"),
    "v5p-8": ("v5p", "2x2x1"), "v5p-16": ("v5p", "2x2x2"), "v5p-32": ("v5p", "2x2x4"), "v5p-64": ("v5p", "2x4x4"),
    "v5p-128": ("v5p", "4x4x4"),
    "v6e-1": ("v6e", "1x1"), "v6e-4": ("v6e", "2x2"), "v6e-8": ("v6e", "2x4"), "v6e-16": ("v6e", "4x4"),
    "v6e-64": ("v6e", "8x8"), "v6e-256": ("v6e", "16x16"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    chip: Chip
    bounds: str  # "2x4x4"

    @property
    def topology_name(self) -> str:
        return f"{self.chip.prefix}:{self.bounds}"

    @property
    def num_devices(self) -> int:
        count = 1
        for size in self.bounds.split("x"):
            count *= int(size)
        return count


def parse_slice(name: str) -> Slice:
    """A `Slice` from "v5p-64" or "v5:2x4x4"; a clear error naming the known slices otherwise."""
    if name in SLICES:
        chip, bounds = SLICES[name]
        return Slice(name, CHIPS[chip], bounds)
    if ":" in name:
        prefix, bounds = name.split(":", 1)
        chips = [key for key, chip in CHIPS.items() if chip.prefix == prefix]
        if chips and all(part.isdigit() for part in bounds.split("x")):
            return Slice(name, CHIPS[chips[0]], bounds)
    raise ValueError(f"unknown TPU slice {name!r}; use one of {', '.join(SLICES)}, or a libtpu topology such as "
                     f"v5e:2x2 ({', '.join(sorted(c.prefix for c in CHIPS.values()))} generations)")


@functools.cache
def slice_devices(name: str) -> tuple:
    """The slice's devices, described by libtpu on this (CPU) machine: for compiling, not running."""
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - jax always ships it
        raise RuntimeError(f"this jax has no jax.experimental.topologies: {e}") from e
    spec = parse_slice(name)
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off a TPU VM
    # libtpu's lockfile keeps two processes off one machine's TPU chips; describing a slice uses no
    # chip, so reports (and a test run beside one) may run side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    bounds = [int(s) for s in spec.bounds.split("x")] + [1]
    host_bounds = tuple(min(2, b) for b in bounds[:2]) + (1,)
    try:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=spec.topology_name,
                                                chip_config_name=spec.chip.chip_config,
                                                chips_per_host_bounds=host_bounds, num_slices=1)
    except Exception as e:
        hint = ("install libtpu: pip install -e '.[aot]'" if "libtpu" in str(e).lower() or "tpu" in str(e).lower()
                else "check the topology name")
        raise RuntimeError(f"cannot describe TPU topology {spec.topology_name} ({e}); {hint}") from e
    return tuple(topology.devices)


def libtpu_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("libtpu") is not None
