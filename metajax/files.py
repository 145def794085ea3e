"""Writing run outputs so that a reader never sees half a file and a crash never loses the old one.

In a multi-process run every process computes the same outputs, and only process 0 writes them: on
the others these functions write nothing and return the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path

from metajax.host import is_main_process


class OutputWriteError(OSError):
    """A run output could not be written (a read-only or full disk, say). Whatever was at its path
    before is unchanged, since every output is written beside it and renamed into place."""


_WRITE_FIXES = {
    errno.ENOSPC: "free space on its disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
    errno.EACCES: "make its directory writable, or give the run another run_dir",
    errno.EPERM: "make its directory writable, or give the run another run_dir",
    errno.EROFS: "the disk is mounted read-only: give the run a run_dir on a writable disk",
}


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "", kept: str = ""):
    """Turns an `OSError` raised inside into an `OutputWriteError` naming `path` and the fix.

    Args:
      what: what is being written, for the message ("checkpoint step 20", say).
      kept: what the failure leaves intact, if more than `path`'s previous contents.
    """
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as e:
        raise write_error(path, e.errno, e.strerror or str(e), what, kept) from e


def write_error(path, code: int | None, reason: str, what: str = "", kept: str = "") -> OutputWriteError:
    """The error of a failed write of `path` (errno `code`), its message one line: what failed,
    why, the fix, and what is kept."""
    fix = _WRITE_FIXES.get(code, "check that its directory exists and is writable and that its disk has room")
    kept = kept or f"whatever was at {path} before is unchanged"
    error = OutputWriteError(f"cannot write {what + ' ' if what else ''}{path}: {reason}; {fix}. Nothing is "
                             f"half-written: {kept}")
    error.errno = code
    return error


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`; an `OSError`
    (a full or read-only disk) comes out as an `OutputWriteError` naming `path`."""
    path = Path(path)
    if not is_main_process():
        return path
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; outputs are meant to be shared
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    return path


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """One JSON object a line, written with `write_text_atomic`."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class RunDirInUseError(RuntimeError):
    """Another live process is running in this run directory."""


LOCK_NAME = ".metajax.lock"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike):
    """Holds `run_dir/.metajax.lock` (this process's id and host) while a run writes there.

    A second run on the same directory raises `RunDirInUseError` at once, naming the running one's
    process id. A lock left by a killed run is taken over once its process is gone. In a
    multi-process run process 0 holds it for all.
    """
    path = Path(run_dir) / LOCK_NAME
    if not is_main_process():
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None and _alive(holder, me["host"]):
                raise RunDirInUseError(
                    f"run directory {path.parent} is in use by process {holder['pid']} on {holder['host']}; wait "
                    f"for it to finish or stop it, or give this run another run_dir. If that process is gone, "
                    f"delete {path}") from None
            path.unlink(missing_ok=True)  # a killed run's lock
            continue
        with os.fdopen(handle, "w") as out:
            json.dump(me, out)
        break
    else:
        raise RunDirInUseError(f"could not take the lock {path}: another run keeps creating it")
    try:
        yield path
    finally:
        if _lock_holder(path) == me:
            path.unlink(missing_ok=True)


def _lock_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(holder: dict, this_host: str) -> bool:
    """Whether the lock's process still runs; a process on another host is assumed to."""
    if holder.get("host") != this_host:
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def staging_dir(target: Path) -> Path:
    """An empty directory beside `target` to build it in, with the permissions a plain mkdir would
    give (mkdtemp makes it owner-only)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Moves `staging` to `target`; an existing `target` is set aside first and only deleted once
    the new directory is in place."""
    if not is_main_process():
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
