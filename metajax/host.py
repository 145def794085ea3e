"""Reading device arrays on the host, whatever process holds their shards.

A sharded `jax.Array` of a multi-process run spans devices that one process cannot address, and
`jax.device_get` of it raises. Every host read of run data goes through `to_host`, which gathers
such arrays across processes (a collective: every process must call it, in the same order) and is a
plain copy in a single process.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

import jax
import numpy as np
from jax.experimental import multihost_utils


def to_host(tree):
    """numpy copies of every array leaf of `tree`, gathered from all processes when sharded."""
    def read(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(read, tree)


def sync(name: str) -> None:
    """Waits until every process reaches this point (a no-op in a single process): what one process
    wrote to the shared run directory before it is then there for all."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def is_main_process() -> bool:
    """Whether this process writes run outputs (results, plots, exports): process 0 only."""
    return jax.process_index() == 0


# What libtpu writes to the process's stderr when it is installed (the aot extra) on a machine with
# no TPU chip, before jax falls back to the devices there are.
_LIBTPU_NO_CHIP_NOISE = re.compile(
    r"TPU_ACCELERATOR_TYPE|TPU_WORKER_HOSTNAMES|Logging before InitGoogle|Source Location Trace|libtpu_init_utils")


def start_backends() -> list:
    """`jax.devices()`, started with libtpu's no-chip warnings kept off the console.

    jax tries the TPU backend wherever libtpu is installed; on a CPU or GPU machine libtpu then
    prints a screen of warnings about TPU environment variables, which say nothing to a user there.
    They are written by C++ to file descriptor 2, so they are caught there, and shown after all if a
    TPU did start.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            devices = jax.devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        text = caught.read().decode(errors="replace")
    on_tpu = any(d.platform == "tpu" for d in devices)
    kept = [line for line in text.splitlines(keepends=True) if on_tpu or not _LIBTPU_NO_CHIP_NOISE.search(line)]
    sys.stderr.write("".join(kept))
    return devices
