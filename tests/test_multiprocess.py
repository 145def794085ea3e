"""Multi-process runs: 2 processes x 2 CPU devices, joined by `jax.distributed` over gloo exactly as
the workers of a pod slice are (`launch/local.sh`), give what 1 process x 4 devices gives.

Every run is a real subprocess of the command line. One small RaM run (two iterations) covers the
paths a pod uses: sharded rollouts read on the host (`metajax.host.to_host`), VOC scoring, the SFT
step, collective orbax checkpoints, the Hugging Face export, greedy evaluation, and
process-0-only outputs; killed with SIGKILL (both processes) mid-run, it resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/ram_toy.yaml"
RAM_RUN = ["--set", "expert_iteration.iterations=2",
           "--set", "expert_iteration.questions_per_iteration=8", "--set", "eval.methods=[base,ram]",
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


def _two_process_command(run_dir: Path) -> list[str]:
    return ["launch/local.sh", "2", CONFIG, *RAM_RUN, "--set", f"run_dir={run_dir}"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted 2-process run: its directory and its console output."""
    run_dir = tmp_path_factory.mktemp("multiprocess") / "two_processes"
    return run_dir, _run(_two_process_command(run_dir), _env(2))


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, two_process_run):
    one = tmp_path / "one_process"
    two, console = two_process_run
    _run([sys.executable, "-m", "metajax.main", "--config", CONFIG, *RAM_RUN, "--set", f"run_dir={one}"], _env(4))

    assert json.loads((two / "results.json").read_text()) == json.loads((one / "results.json").read_text())
    for name in ("eval_base.jsonl", "eval_ram.jsonl", "ram/rows_iter1.jsonl", "ram/rows_iter2.jsonl"):
        assert (two / name).read_text() == (one / name).read_text(), name
    # Cross-process reductions may sum in another order: params agree to fp32 rounding.
    expected, got = _weights(one), _weights(two)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    # Process 0 alone writes and prints: one results table, no file from another process.
    assert console.count("| method |") == 1 and "[1] |" not in console
    assert not list(two.rglob("*.tmp*"))


@pytest.mark.slow
def test_two_process_run_killed_mid_run_resumes_bitwise(tmp_path, two_process_run):
    run_dir = tmp_path / "killed"
    first_checkpoint = run_dir / "ram" / "checkpoints" / "1" / "commit_success.txt"
    killed = subprocess.Popen(_two_process_command(run_dir), cwd=REPO, env=_env(2), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not first_checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)  # the launcher and both processes, in iteration 2
    killed.wait()
    assert first_checkpoint.exists() and not (run_dir / "results.json").exists(), "not killed mid-run"

    console = _run(_two_process_command(run_dir), _env(2))
    assert "resuming after iteration 1" in console
    uninterrupted = two_process_run[0]
    assert ((run_dir / "ram" / "final" / "model.safetensors").read_bytes()
            == (uninterrupted / "ram" / "final" / "model.safetensors").read_bytes())
    assert (run_dir / "results.json").read_text() == (uninterrupted / "results.json").read_text()


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


def test_pod_and_multinode_launchers_dry_run_print_their_commands():
    tpu = subprocess.run(["launch/tpu_pod.sh", "--dry-run", "my-tpu", "us-east5-a", "configs/ram_toy.yaml",
                          "--set", "eval.methods=[ram]"], cwd=REPO, capture_output=True, text=True)
    assert tpu.returncode == 0, tpu.stderr
    scp, setup, run = tpu.stdout.splitlines()
    assert scp == f"gcloud compute tpus tpu-vm scp --recurse --zone us-east5-a --worker=all {REPO} my-tpu:~/metajax"
    assert "--worker=all" in setup and "tpu_setup.sh" in setup
    # The remote shell gets the --set value quoted, brackets and all.
    assert run.endswith(r"--distributed\ --config\ configs/ram_toy.yaml\ --set\ eval.methods=\\\[ram\\\]")
    gpu = subprocess.run(["launch/gpu_multinode.sh", "--dry-run", "configs/ram_toy.yaml", "--set", "seed=1"],
                         cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, COORDINATOR="10.0.0.1:1234", NUM_NODES="2", NODE_RANK="1"))
    assert gpu.returncode == 0, gpu.stderr
    assert gpu.stdout.strip() == (f"cd {REPO} && JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 "
                                  "JAX_PROCESS_ID=1 python3 -m metajax.main --distributed --config "
                                  "configs/ram_toy.yaml --set seed=1")


def test_local_launcher_refuses_a_bad_process_count():
    done = subprocess.run(["launch/local.sh", "zero", "configs/ram_toy.yaml"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
