"""Reading device arrays on the host, whatever process holds their shards.

A sharded `jax.Array` of a multi-process run spans devices that one process cannot address, and
`jax.device_get` of it raises. Every host read of run data goes through `to_host`, which gathers
such arrays across processes (a collective: every process must call it, in the same order) and is a
plain copy in a single process.
"""

from __future__ import annotations

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
