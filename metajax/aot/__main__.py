"""`python -m metajax.aot --config CFG --topology v5p-64 [--set key=value ...]`: compile a run's
programs for a TPU slice on this machine and report whether each fits.

Exit status: 0 when every program fits, 1 when one does not (after its out-of-memory message and
a setting that fits), 2 for a bad config or topology.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

# Set before jax starts: the TPU devices are only described (by libtpu), nothing runs on them, and
# a local accelerator is not wanted either.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from metajax.config import ConfigError, load_config  # noqa: E402
from metajax.files import write_text_atomic  # noqa: E402

REMATS = ("none", "save_dots", "full")
HEADROOM = 0.9  # a candidate is chosen when its estimate is within this fraction of HBM


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metajax.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML run config (default: metajax's built-in settings)")
    parser.add_argument("--topology", required=True,
                        help="TPU slice (v5e-16, v5p-8, v5p-64, v6e-8, v4-32, ...) or a libtpu topology (v5e:2x2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--model", help="architecture: a hub id of the built-in table or a config.json path "
                                        "(default: model.path's config.json, else model.hub_id)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens (default: 1024, at most half the model's context)")
    parser.add_argument("--programs", help="comma-separated program names to compile (default: all of the task's)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    try:
        from metajax.aot.topologies import libtpu_available, parse_slice
        target = parse_slice(args.topology)
        config = load_config(args.config, args.set, check_local=False)
    except (ConfigError, ValueError) as e:
        print(f"metajax.aot: {e}", file=sys.stderr)
        return 2
    if not libtpu_available():
        print("metajax.aot: libtpu is not installed; install it with pip install -e '.[aot]'", file=sys.stderr)
        return 2
    from metajax.aot.architectures import model_config
    from metajax.aot.report import describe
    from metajax.aot.topologies import slice_devices
    from metajax.pipelines import model_dir
    try:
        cfg, source = model_config(model_dir(config), config.model.hub_id, args.model)
    except ValueError as e:
        print(f"metajax.aot: {e}", file=sys.stderr)
        return 2
    prompt_len = args.prompt_len if args.prompt_len is not None else min(1024, cfg.max_position_embeddings // 2)
    if prompt_len < 1:
        print(f"metajax.aot: --prompt-len {prompt_len} must be >= 1", file=sys.stderr)
        return 2
    devices = slice_devices(args.topology)
    print(f"target: {target.name} ({target.topology_name}, {len(devices)} devices of {target.chip.hbm_gib:g} GiB HBM); "
          f"model: {source}; task: {config.task}; dtype {config.model.dtype}, compute {config.model.compute_dtype}; "
          f"prompt {prompt_len} tokens")
    selected = None if args.programs is None else set(args.programs.split(","))
    try:
        results, mesh_shape = _compile_all(config, cfg, target, devices, prompt_len, selected)
    except (ConfigError, ValueError) as e:
        print(f"metajax.aot: {e}", file=sys.stderr)
        return 2
    print(f"mesh: {mesh_shape}")
    failed = []
    for result in results:
        print("\n".join(describe(result, len(devices), target.chip.bf16_tflops)))
        if not result.fits:
            failed.append(result)
    for result in failed:
        print("\n".join(_suggestion(args, config, result, cfg, target, devices, prompt_len)))
    if args.json:
        write_text_atomic(args.json, json.dumps([_record(r, target, mesh_shape) for r in results], indent=1) + "\n")
    print(f"fits: {'no' if failed else 'yes'}")
    return 1 if failed else 0


def _compile_all(config, cfg, target, devices, prompt_len, selected):
    from metajax.aot.programs import run_programs
    from metajax.aot.report import compile_program
    from metajax.models.sharding import make_mesh
    mesh = make_mesh(config.mesh, devices=devices)
    programs = run_programs(config, cfg, mesh, prompt_len=prompt_len)
    unknown = (selected or set()) - {p.name for p in programs}
    if unknown:
        raise ValueError(f"no program {sorted(unknown)} in task {config.task}; it has {[p.name for p in programs]}")
    mesh_shape = dict(mesh.shape)
    chosen = [p for p in programs if selected is None or p.name in selected]
    return [compile_program(p, cfg, target, mesh_shape) for p in chosen], mesh_shape


def _candidates(config, program, num_devices: int) -> list[list[str]]:
    """Overrides to try, least change first: a stronger remat, all devices on fsdp, more
    micro-batches (train) or fewer prompts per call (sampling, scoring), then tensor parallelism.
    None changes what the algorithm computes."""
    stronger = [[f"model.remat={r}"] for r in REMATS[REMATS.index(config.model.remat) + 1:]]
    all_fsdp = ["mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1"]
    tensor = [["mesh.data=1", "mesh.fsdp=-1", f"mesh.tensor={t}"] for t in (2, 4, 8) if num_devices % t == 0]
    if program.dims.kind == "train":
        key, accum = program.knobs["grad_accum"], program.dims.grad_accum
        accums = [[f"{key}={accum * f}"] for f in (2, 4, 8) if program.dims.batch % (accum * f) == 0]
        full = ["model.remat=full"]
        return (stronger + [all_fsdp + r for r in [[]] + stronger] + [all_fsdp + full + a for a in accums]
                + [t + full + a for t in tensor for a in [[]] + accums])
    smaller = []
    if "batch" in program.knobs:
        key = program.knobs["batch"]
        value = _config_value(config, key)
        smaller = [[f"{key}={value // f}"] for f in (2, 4, 8) if value // f >= 1]
    return [all_fsdp] + [all_fsdp + s for s in smaller] + tensor


def _suggestion(args, config, result, cfg, target, devices, prompt_len) -> list[str]:
    """A setting that fits: the first candidate whose analytic estimate leaves headroom, confirmed
    with one compile (not searched by compiling many)."""
    from metajax.aot.estimate import memory_bytes
    from metajax.aot.programs import run_programs
    from metajax.aot.report import GIB, compile_program
    from metajax.models.sharding import make_mesh

    def program_of(config):
        mesh = make_mesh(config.mesh, devices=devices)
        programs = run_programs(config, cfg, mesh, prompt_len=prompt_len)
        return next(p for p in programs if p.name == result.program), dict(mesh.shape)

    program, _ = program_of(config)
    lines = [f"{result.program} does not fit {target.name}'s {result.hbm / GIB:.1f} GiB per device"]
    tried = set()
    for overrides in _candidates(config, program, len(devices)):
        overrides = [o for o in overrides if not _already(config, o)]
        if not overrides or tuple(overrides) in tried:
            continue
        tried.add(tuple(overrides))
        try:
            candidate, mesh_shape = program_of(load_config(args.config, args.set + overrides, check_local=False))
        except (ConfigError, ValueError):  # a mesh the devices do not split into, a batch accumulation cannot
            continue
        estimate = memory_bytes(cfg, candidate.dims, mesh_shape)
        if estimate > HEADROOM * result.hbm:
            continue
        flags = " ".join(f"--set {o}" for o in overrides)
        confirmed = compile_program(candidate, cfg, target, mesh_shape)
        if confirmed.fits:
            lines.append(f"  suggested: {flags} (mesh {mesh_shape}; estimated {estimate / GIB:.2f} GiB, compiled "
                         f"peak {confirmed.peak / GIB:.2f} GiB: fits)")
        else:
            peak = f"peak {confirmed.peak / GIB:.2f} GiB" if confirmed.compiled else "out of memory"
            lines.append(f"  estimated to fit: {flags} ({estimate / GIB:.2f} GiB), but the compile says {peak}; "
                         "try it with a stronger remat or more micro-batches, or a larger slice")
        return lines
    lines.append("  no remat, mesh or micro-batch setting fits by the estimate: use a larger slice, a smaller "
                 "batch or shorter sequences")
    return lines


def _already(config, override: str) -> bool:
    """Whether `config` already has the value `key=value` sets."""
    import yaml
    key, _, value = override.partition("=")
    return _config_value(config, key) == yaml.safe_load(value)


def _config_value(config, key: str):
    """The value of a dotted config key ("mesh.fsdp")."""
    return functools.reduce(getattr, key.split("."), config)


def _record(result, target, mesh_shape) -> dict:
    return dict(program=result.program, what=result.what, topology=target.name, mesh=mesh_shape,
                fits=result.fits, peak_gib=result.peak / 2 ** 30, estimate_gib=result.estimate / 2 ** 30,
                hbm_gib=result.hbm / 2 ** 30, argument_gib=result.argument / 2 ** 30, temp_gib=result.temp / 2 ** 30,
                flops=result.flops, collectives=result.collectives, error=result.error)


if __name__ == "__main__":
    sys.exit(main())
