"""Orbax checkpoints of a training state, with JSON metadata, keep-last-k and resume.

Orbax writes each step into a temporary directory and renames it into place only once complete,
so a crash in the middle of a save leaves the earlier checkpoints untouched: the next run's
`latest_step` ignores the unfinished one.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from metajax.files import write_error


class CheckpointNotFoundError(FileNotFoundError):
    """The directory holds no checkpoint at the requested step."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read back."""


class Checkpointer:
    """Saves and restores (state pytree, metadata dict) pairs under `directory/<step>/`.

    Args:
      directory: created if missing.
      max_to_keep: keep only the newest this many steps (None: keep all).
      save_interval_steps: `save` skips steps that are not a multiple of this unless forced.
    """

    def __init__(self, directory, *, max_to_keep: int | None = 3, save_interval_steps: int = 1):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep} must be >= 1, or None to keep every checkpoint")
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(f"checkpoint directory {self.directory} is a file")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
            # A synchronous save returns only once the step is complete and renamed into place.
            enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata"))

    def save(self, step: int, state, *, metadata: dict | None = None, force: bool = False) -> bool:
        """Writes `state` (any pytree of arrays) and JSON-serialisable `metadata` as `step`, and
        waits for it. Returns whether it saved (False when `save_interval_steps` skips the step)."""
        try:
            saved = self._manager.save(
                int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    metadata=ocp.args.JsonSave(dict(metadata or {}))),
                force=force)
            self._manager.wait_until_finished()
        except Exception as exc:
            code = _os_error_code(exc)
            if code is None:
                raise
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else os.strerror(code)
            raise write_error(
                os.path.join(self.directory, str(step)), code, reason, "checkpoint step",
                f"the steps saved before ({self.all_steps() or 'none'}) are kept and a rerun resumes from the "
                f"newest") from exc
        return saved

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every complete step still kept, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None = None, *, like: Any = None) -> tuple[Any, dict]:
        """(state, metadata) saved at `step` (default: the latest).

        Args:
          like: a pytree of arrays or `jax.ShapeDtypeStruct`s shaped like the saved state (a
            `TrainState`, say): the restored state takes its structure, dtypes and shardings. Without
            it, the state comes back as nested dicts of arrays.
        """
        steps = self.all_steps()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointNotFoundError(f"no checkpoint in {self.directory}")
        elif step not in steps:
            raise CheckpointNotFoundError(f"no checkpoint for step {step} in {self.directory}; it holds steps {steps}")
        target = None if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._manager.restore(
                int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                   metadata=ocp.args.JsonRestore()))
        except Exception as exc:  # orbax raises many types; the path is what the user needs
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {os.path.join(self.directory, str(step))} could not be restored "
                f"({type(exc).__name__}: {exc}); it is corrupt or `like` does not match it. Delete it to "
                f"fall back to an earlier step ({[s for s in steps if s != step]}).") from exc
        return restored.state, dict(restored.metadata or {})

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _os_error_code(exc: BaseException) -> int | None:
    """The errno behind a failed save: an `OSError`'s, or the one tensorstore writes into its message
    (orbax raises those as `ValueError`s)."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno is not None else errno.EIO
    found = re.search(r"os_error_code='(\d+)'", str(exc))
    return int(found.group(1)) if found else None
