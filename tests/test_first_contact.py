"""What a user meets around a run: the run-directory lock, the closing list of outputs, `--help`,
and a quiet start-up."""

import json
import os
import subprocess
import sys

import pytest

from metajax.files import LOCK_NAME, RunDirInUseError, run_lock
from metajax.main import describe_outputs, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_run_on_a_run_dir_in_use_is_refused_naming_the_process(tmp_path, capsys):
    with run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(RunDirInUseError, match=f"in use by process {os.getpid()}"):
            with run_lock(tmp_path):
                pass
        # The command line refuses too, with status 2, before writing anything.
        assert main(["--set", f"run_dir={tmp_path}", "--set", "eval.methods=[base]",
                     "--set", "eval.max_new_tokens=48", "--set", "expert_iteration.max_new_tokens=48"]) == 2
        assert f"in use by process {os.getpid()}" in capsys.readouterr().err
        assert not (tmp_path / "config.json").exists()
    assert not (tmp_path / LOCK_NAME).exists()  # released on exit


def test_a_killed_runs_lock_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename}))
    with run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    # A lock held from another host is never taken over: that run may be alive.
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": "another-host"}))
    with pytest.raises(RunDirInUseError, match="another-host"):
        with run_lock(tmp_path):
            pass


def test_a_finished_run_says_where_its_outputs_are(tmp_path):
    for name in ("results.md", "results.json", "tokens_by_difficulty.png", "metrics.jsonl", "eval_ram.jsonl",
                 "config.json", LOCK_NAME):
        (tmp_path / name).write_text("x")
    (tmp_path / "ram").mkdir()
    (tmp_path / "exams").mkdir()  # a ROI run's exam records
    lines = describe_outputs("ram", tmp_path, 125.0)
    assert lines[0] == f"[metajax] ram finished in 2.1 min; its outputs are in {tmp_path}/:"
    listed = {line.split()[0]: line for line in lines[1:-1]}
    assert set(listed) == {"config.json", "eval_ram.jsonl", "exams/", "metrics.jsonl", "ram/", "results.json",
                           "results.md", "tokens_by_difficulty.png"}  # the lock file is not an output
    assert "results table" in listed["results.md"] and "final policy" in listed["ram/"]
    assert "every exam sat" in listed["exams/"]
    assert "resumes" in lines[-1]


def test_help_lists_tasks_configs_outputs_and_resuming(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for expected in ("ram, star, grpo, eval, roi", "ram_toy.yaml", "roi_qwen2.5-1.5b-instruct_medium_512.yaml",
                     "results.md", "metrics.jsonl", "resumes"):
        assert expected in text, expected


def test_start_up_does_not_advise_installing_pytorch():
    """transformers advises "PyTorch was not found" at import when torch is missing (hidden here)."""
    hide_torch = "import sys; sys.modules['torch'] = None; "
    plain = subprocess.run([sys.executable, "-c", hide_torch + "import transformers"], capture_output=True, text=True,
                           cwd=REPO, env={**os.environ, "TRANSFORMERS_NO_ADVISORY_WARNINGS": ""})
    assert "PyTorch was not found" in plain.stderr  # the check below can fail
    quiet = subprocess.run([sys.executable, "-c", hide_torch + "import metajax.pipelines"], capture_output=True,
                           text=True, cwd=REPO, env={k: v for k, v in os.environ.items()
                                                     if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"})
    assert quiet.returncode == 0, quiet.stderr
    assert "PyTorch was not found" not in quiet.stderr


def test_start_up_keeps_libtpus_no_chip_warnings_off_the_console():
    """With libtpu installed (the aot extra) on a machine without TPU chips, jax's first device query
    makes libtpu print warnings about TPU environment variables; the command line starts quietly."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    plain = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, text=True,
                           cwd=REPO, env=env)
    if "TPU_" not in plain.stderr:
        pytest.skip("libtpu prints nothing here (not installed, or a TPU machine)")
    quiet = subprocess.run([sys.executable, "-c", "import sys; from metajax.host import start_backends; "
                            "print(start_backends()); print('kept', file=sys.stderr)"],
                           capture_output=True, text=True, cwd=REPO, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "CpuDevice" in quiet.stdout
    assert quiet.stderr == "kept\n"
