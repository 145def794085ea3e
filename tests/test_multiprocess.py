"""Multi-process runs: 2 processes x 2 CPU devices, joined by `jax.distributed` over gloo exactly as
the workers of a pod slice are (`launch/local.sh`), give what 1 process x 4 devices gives.

Both runs are real subprocesses of the command line. One small RaM run covers the paths a pod uses:
sharded rollouts read on the host (`metajax.host.to_host`), VOC scoring, the SFT step, collective
orbax checkpoints, the Hugging Face export, greedy evaluation, and process-0-only outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/ram_toy.yaml"
RAM_RUN = ["--set", "expert_iteration.iterations=1",
           "--set", "expert_iteration.questions_per_iteration=16", "--set", "eval.methods=[base,ram]",
           "--set", "data.num_eval=16"]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", DEVICES_PER_PROCESS=str(devices))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run(command: list[str], env: dict) -> str:
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(run_dir / "ram" / "final" / "model.safetensors")


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one_process", tmp_path / "two_processes"
    _run([sys.executable, "-m", "metajax.main", "--config", CONFIG, *RAM_RUN, "--set", f"run_dir={one}"], _env(4))
    console = _run(["launch/local.sh", "2", CONFIG, *RAM_RUN, "--set", f"run_dir={two}"], _env(2))

    assert json.loads((two / "results.json").read_text()) == json.loads((one / "results.json").read_text())
    for name in ("eval_base.jsonl", "eval_ram.jsonl", "ram/rows_iter1.jsonl"):
        assert (two / name).read_text() == (one / name).read_text(), name
    # Cross-process reductions may sum in another order: params agree to fp32 rounding.
    expected, got = _weights(one), _weights(two)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    # Process 0 alone writes and prints: one results table, no file from another process.
    assert console.count("| method |") == 1 and "[1] |" not in console
    assert not list(two.rglob("*.tmp*"))


def test_local_launcher_dry_run_prints_one_command_per_process():
    done = subprocess.run(["launch/local.sh", "--dry-run", "3", "configs/ram_toy.yaml", "--set", "seed=1"],
                          cwd=REPO, env=dict(os.environ, PORT="23456"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert f"JAX_PROCESS_ID={i} " in line and "JAX_NUM_PROCESSES=3 " in line
        assert "JAX_COORDINATOR_ADDRESS=127.0.0.1:23456 " in line
        assert line.endswith("python3 -m metajax.main --distributed --config configs/ram_toy.yaml --set seed=1")


def test_local_launcher_refuses_a_bad_process_count():
    done = subprocess.run(["launch/local.sh", "zero", "configs/ram_toy.yaml"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
