"""A full or read-only disk: every run output fails with a message naming its path and the fix, and
nothing already written is lost.

The full disk is real: a child process runs under a file-size limit (RLIMIT_FSIZE, with SIGXFSZ
ignored), so its writes past the limit fail inside the OS as they would on a full disk (EFBIG).
"""

import errno
import json
import os
import subprocess
import sys
import tempfile

import pytest

from metajax.files import OutputWriteError, write_text_atomic

LIMIT = 64 * 1024

CHILD = r"""
import json, resource, signal, sys
from pathlib import Path
import jax, numpy as np
from metajax.files import OutputWriteError, write_text_atomic
from metajax.models import ModelConfig, init_params, load_hf, save_hf
from metajax.train.checkpoint import Checkpointer
from metajax.train.metrics import MetricsWriter, read_metrics

root, limit = Path(sys.argv[1]), int(sys.argv[2])
cfg = ModelConfig.of("llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_position_embeddings=64)
params = init_params(cfg, jax.random.key(0))
save_hf(params, cfg, root / "model")
checkpoints = Checkpointer(root / "checkpoints")
checkpoints.save(1, {"w": np.zeros(4, np.float32)})
write_text_atomic(root / "results.json", '{"ram": 1}\n')
metrics = MetricsWriter(root, tensorboard=False)
metrics.write(0, {"loss": 1.0}, stage="sft")
metrics.close()
filler = '{"step": 0, "stage": "pad", "metrics": {}, "time": 0, "attempt": 1}\n'
with open(root / "metrics.jsonl", "a") as f:
    f.write(filler * ((limit - (root / "metrics.jsonl").stat().st_size) // len(filler)))

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # the soft limit, which the child may raise again
big = np.random.default_rng(0).random(4 * limit).astype(np.float32)  # incompressible
failures = {}
def attempt(name, write):
    try:
        write()
        failures[name] = None
    except OutputWriteError as e:
        failures[name] = {"message": str(e), "errno": e.errno}
attempt("results", lambda: write_text_atomic(root / "results.json", "x" * (2 * limit)))
attempt("checkpoint", lambda: checkpoints.save(2, {"w": big}))
attempt("model", lambda: save_hf(jax.tree.map(lambda p: p * 2, params), cfg, root / "model"))
def log():
    metrics = MetricsWriter(root, tensorboard=False)
    for step in range(1, 200):
        metrics.write(step, {"loss": 0.5}, stage="sft")
attempt("metrics", log)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))

restored, _ = checkpoints.restore()
reloaded, _ = load_hf(root / "model")
same_model = all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)))
print(json.dumps({"failures": failures, "checkpoint_steps": checkpoints.all_steps(),
                  "restored": np.asarray(restored["w"]).tolist(), "same_model": same_model,
                  "results": (root / "results.json").read_text(),
                  "metric_steps": [r["step"] for r in read_metrics(root / "metrics.jsonl") if r["stage"] == "sft"],
                  "files": sorted(p.name for p in root.iterdir())}))
"""


@pytest.fixture(scope="module")
def full_disk_run():
    with tempfile.TemporaryDirectory() as root:
        done = subprocess.run([sys.executable, "-c", CHILD, root, str(LIMIT)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        yield root, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("output, named", [("results", "results.json"), ("checkpoint", "checkpoints/2"),
                                           ("model", "model"), ("metrics", "metrics.jsonl")])
def test_a_full_disk_names_the_output_and_the_fix(full_disk_run, output, named):
    root, seen = full_disk_run
    failure = seen["failures"][output]
    assert failure is not None, f"writing {output} past the limit did not fail"
    assert failure["errno"] == errno.EFBIG
    assert os.path.join(root, named) in failure["message"]
    assert "File too large" in failure["message"] and "ulimit -f" in failure["message"]
    assert "\n" not in failure["message"]


def test_a_full_disk_loses_nothing_already_written(full_disk_run):
    _, seen = full_disk_run
    assert seen["results"] == '{"ram": 1}\n'
    assert seen["checkpoint_steps"] == [1] and seen["restored"] == [0.0] * 4
    assert seen["same_model"]
    assert seen["metric_steps"][0] == 0  # the lines logged before the disk filled
    assert not [name for name in seen["files"] if name.endswith(".tmp")], seen["files"]
    assert "kept" in seen["failures"]["checkpoint"]["message"]


@pytest.mark.parametrize("error, fix", [(errno.EACCES, "make its directory writable"),
                                        (errno.EROFS, "mounted read-only"), (errno.ENOSPC, "free space")])
def test_a_read_only_or_full_disk_says_what_to_do(tmp_path, monkeypatch, error, fix):
    # As root (CI) a chmod-ed directory stays writable, so the refusal is injected where the OS gives it.
    (tmp_path / "results.json").write_text("old\n")

    def refuse(*args, **kwargs):
        raise OSError(error, os.strerror(error), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputWriteError, match=fix) as caught:
        write_text_atomic(tmp_path / "results.json", "new\n")
    assert str(tmp_path / "results.json") in str(caught.value)
    assert (tmp_path / "results.json").read_text() == "old\n"


def test_the_command_line_reports_a_failed_write_in_one_line_with_status_1(tmp_path, monkeypatch, capsys):
    from metajax import pipelines
    from metajax.main import main

    def run(config):
        write_text_atomic(tmp_path / "file" / "results.json", "x")  # its directory is a file

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(pipelines, "run", run)
    assert main(["--set", f"run_dir={tmp_path / 'run'}", "--set", "eval.max_new_tokens=48",
                 "--set", "expert_iteration.max_new_tokens=48"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("metajax: cannot write ") and str(tmp_path / "file" / "results.json") in err
    assert len(err.splitlines()) == 1
