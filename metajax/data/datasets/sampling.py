"""Deterministic splits and samples of examples, stable across processes and Python versions.

Each example's rank is a SHA-256 of (seed, dataset, id) rather than Python's `hash()`, which is
salted per process; so the same seed picks the same examples on every machine, and an example's
rank does not depend on which other examples are present.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Sequence

from metajax.data.example import Example


def split_examples(examples: Sequence[Example], fractions: Sequence[float],
                   seed: int) -> tuple[list[Example], ...]:
    """Partitions `examples` into len(fractions) disjoint parts of the given sizes.

    Sizes are exact: floor(fraction * n), with the leftover examples going to the parts with the
    largest remainders. Each part keeps the input order.

    Args:
      examples: examples with (dataset, id) unique.
      fractions: positive fractions summing to 1, e.g. (0.8, 0.1, 0.1).
      seed: which partition; the same seed gives the same partition everywhere.
    """
    if not fractions or any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be positive and sum to 1, got {list(fractions)}")
    sizes = _part_sizes(len(examples), fractions)
    ranked = _ranked(examples, seed)
    parts, start = [], 0
    for size in sizes:
        chosen = set(ranked[start:start + size])
        parts.append([ex for position, ex in enumerate(examples) if position in chosen])
        start += size
    return tuple(parts)


def sample_examples(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """`n` examples chosen by seed, in input order; a sample of n is contained in that of n + 1."""
    if not 0 <= n <= len(examples):
        raise ValueError(f"cannot sample {n} examples from {len(examples)}")
    chosen = set(_ranked(examples, seed)[:n])
    return [ex for position, ex in enumerate(examples) if position in chosen]


def _ranked(examples: Sequence[Example], seed: int) -> list[int]:
    """Positions of `examples` ordered by their seeded hash."""
    keys = [(ex.dataset, ex.id) for ex in examples]
    if len(set(keys)) != len(keys):
        duplicates = sorted(key for key, count in collections.Counter(keys).items() if count > 1)[:5]
        raise ValueError(f"(dataset, id) pairs must be unique to split or sample; repeated: "
                         f"{duplicates}")
    digests = [hashlib.sha256(f"{seed}\0{dataset}\0{id_}".encode()).digest()
               for dataset, id_ in keys]
    return sorted(range(len(examples)), key=digests.__getitem__)


def _part_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    exact = [f * n for f in fractions]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (sizes[i] - exact[i], i))
    for i in by_remainder[:n - sum(sizes)]:
        sizes[i] += 1
    return sizes
