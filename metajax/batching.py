"""Padding token lists into bucketed arrays, so jitted functions compile once per bucket."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket(n: int, *, minimum: int = 16) -> int:
    """The smallest power of two >= max(n, minimum): a run sees a handful of distinct shapes."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def length_bucket(n: int, *, minimum: int = 16) -> int:
    """A padded sequence length >= max(n, minimum): a power of two up to 128, then four steps per
    octave (160, 192, 224, 256, 320, ...), so a padded prompt or cache wastes at most a fifth of its
    work, not up to half, for at most four compiled lengths per doubling."""
    n = max(int(n), minimum)
    if n <= 128:
        return bucket(n, minimum=minimum)
    step = bucket(n) // 8  # a quarter of the octave below bucket(n)
    return -(-n // step) * step


def pad_rows(rows: Sequence[Sequence[int]], *, length: int, pad_id: int = 0, left: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """Stacks token lists into (tokens int32[len(rows), length], mask bool[len(rows), length]).

    Args:
      left: pad on the left (prompts for generation) instead of the right.
    """
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the padded length {length}")
        span = slice(length - len(row), length) if left else slice(0, len(row))
        tokens[i, span] = row
        mask[i, span] = True
    return tokens, mask
