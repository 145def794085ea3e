"""Run metrics: one JSON object per line in `run_dir/metrics.jsonl`, and TensorBoard if installed."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np

from metajax.files import writing
from metajax.host import is_main_process

_KEPT = "the lines logged before are kept"


class MetricsWriter:
    """Appends `{"step", "stage", "metrics", "time", "attempt"}` lines to `run_dir/metrics.jsonl`.

    Each line is flushed as it is written, so a crashed run keeps everything logged before the
    crash, and a resumed run appends to the same file with the next `attempt` number (1 for the
    first run): a step redone after a resume is logged again, and `read_metrics` keeps its last
    attempt. Non-finite values are written as null (JSON
    has no NaN). Scalars also go to TensorBoard event files in `run_dir/tensorboard` as
    "<stage>/<name>" when `tensorboardX` or TensorFlow is importable.

    In a multi-process run only process 0 writes; on the others `write` does nothing.

    Args:
      tensorboard: True requires a TensorBoard writer, False disables it, None uses one if available.
    """

    def __init__(self, run_dir, *, tensorboard: bool | None = None):
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, "metrics.jsonl")
        self._file = self._tensorboard = None
        if not is_main_process():
            return
        previous = read_metrics(self.path, all_attempts=True) if os.path.exists(self.path) else []
        self.attempt = 1 + max((r.get("attempt", 1) for r in previous), default=0)
        with writing(self.path, kept=_KEPT):
            os.makedirs(self.run_dir, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            if self._file.tell() and not _ends_with_newline(self.path):
                self._file.write("\n")  # a killed run's torn last line stays on its own line
        self._tensorboard = None if tensorboard is False else _tensorboard_writer(
            os.path.join(self.run_dir, "tensorboard"))
        if tensorboard and self._tensorboard is None:
            raise ImportError("tensorboard=True needs `tensorboardX` or `tensorflow`: pip install tensorboardX")

    def write(self, step: int, metrics: dict[str, Any], *, stage: str) -> None:
        """Logs scalar `metrics` (Python, numpy or JAX numbers) at `step` of `stage`."""
        values = {name: _scalar(name, value) for name, value in metrics.items()}
        if self._file is None:
            return
        line = {"step": int(step), "stage": stage,
                "metrics": {k: v if math.isfinite(v) else None for k, v in values.items()},
                "time": time.time(), "attempt": self.attempt}
        with writing(self.path, kept=_KEPT):
            self._file.write(json.dumps(line, allow_nan=False) + "\n")
            self._file.flush()
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.scalar(f"{stage}/{name}", value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(path, *, all_attempts: bool = False) -> list[dict]:
    """The records of a metrics.jsonl file (or of `run_dir/metrics.jsonl` given the run dir), in
    the order they were first logged: one per (stage, step), from the last attempt that logged it
    (a resumed run redoes the steps after its checkpoint), or every line with `all_attempts`.

    A line cut short by a crash mid-write is skipped."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # blank, or the torn last line of a killed run
    if all_attempts:
        return records
    latest: dict[tuple, dict] = {}
    for record in records:
        latest[(record.get("stage"), record.get("step"))] = record
    return list(latest.values())


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _scalar(name: str, value) -> float:
    array = np.asarray(value)
    if array.size != 1 or not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise ValueError(f"metric {name!r} must be a single number, got {type(value).__name__} "
                         f"of shape {array.shape} and dtype {array.dtype}")
    return float(array.reshape(()))


def _tensorboard_writer(log_dir: str):
    """A TensorBoard scalar writer over whichever library is installed, or None."""
    try:
        from tensorboardX import SummaryWriter
        return _TensorBoardX(SummaryWriter(log_dir))
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return _TensorFlowSummary(tf, tf.summary.create_file_writer(log_dir))


class _TensorBoardX:
    def __init__(self, writer):
        self._writer = writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _TensorFlowSummary:
    def __init__(self, tf, writer):
        self._tf, self._writer = tf, writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.scalar(tag, value, step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
