"""Ahead-of-time compile reports: `python -m metajax.aot --config CFG --topology v5p-64`.

On a CPU machine with libtpu installed (`pip install -e '.[aot]'`), this compiles a configured
run's programs (rollouts, chain scoring, the SFT and policy-gradient steps) for a TPU slice from
abstract shapes, as MaxText's train_compile does, and reports each one's memory per device against
the chip's HBM, its FLOPs and its collectives, with a mesh or remat change when it does not fit.
"""

from metajax.aot.programs import Program, run_programs
from metajax.aot.report import Result, compile_program
from metajax.aot.topologies import SLICES, parse_slice, slice_devices

__all__ = ["Program", "Result", "SLICES", "compile_program", "parse_slice", "run_programs", "slice_devices"]
