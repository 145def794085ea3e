"""Progress lines for the phases of a run that take more than a few seconds."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from tqdm.auto import tqdm

from metajax.host import is_main_process


def bar(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm progress bar, shown by process 0 only: every process of a multi-process run goes
    through the same loop, and one bar is what a user wants to read."""
    return tqdm(iterable, disable=disable or not is_main_process(), **kwargs)


@contextlib.contextmanager
def phase(label: str, what: str) -> Iterator[None]:
    """Prints `[label] what ...` when the phase starts and `[label] what: done in S s` when it ends,
    in the `[label]` style of the run's other console lines."""
    print(f"[{label}] {what} ...", flush=True)
    started = time.perf_counter()
    yield
    print(f"[{label}] {what}: done in {time.perf_counter() - started:.1f} s", flush=True)
