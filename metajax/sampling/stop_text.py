"""Stop strings, matched token-exactly inside the compiled decode loop.

A stop token (EOS) ends a row, but a base-format completion ends in text: its answer line is done
at the first newline after "[Assistant]", and a row that starts a new "[User]" turn has left its
answer behind. Waiting for EOS lets one looping row keep a whole batch decoding to the budget, so
`generate` checks the text as it grows. Each token id maps to the characters it decodes to (a
table built once per tokenizer, on the host); the loop keeps, per row, the last few characters
generated so far and whether the answer marker has appeared. A row stops on the token that
completes a stop string, or on the token holding the first newline after the marker. Only the
characters of the patterns and the newline are told apart; every other character is one code, so
the table is small (uint8) and no pattern can match across an unknown character.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

MAX_TOKEN_CHARS = 48  # characters of a token that are matched; no real vocabulary token is longer
_OTHER, _NEWLINE = 0, 1


@partial(jax.tree_util.register_dataclass, data_fields=["table", "lengths", "patterns", "pattern_lengths",
                                                        "is_marker", "initial_tail", "initial_armed"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class StopText:
    """Stop strings compiled for one tokenizer, as arrays the decode loop reads.

    Attributes:
      table: uint8[vocab, MAX_TOKEN_CHARS], each token's characters as codes (0 other, 1 newline,
        2.. the pattern characters); lengths: int32[vocab], its number of characters.
      patterns: int32[num_patterns, width] codes, padded; pattern_lengths: int32[num_patterns].
      is_marker: bool[num_patterns]: a marker arms the line stop (stop at the next newline); any
        other pattern stops the row where it completes.
      initial_tail: int32[width - 1], the codes of the text before the first generated token (a
        forced opening: `after`), right-aligned, -1 where there is none; initial_armed: bool[],
        whether that text holds a marker.
    """

    table: jax.Array
    lengths: jax.Array
    patterns: jax.Array
    pattern_lengths: jax.Array
    is_marker: jax.Array
    initial_tail: jax.Array
    initial_armed: jax.Array

    @property
    def width(self) -> int:
        return self.patterns.shape[1]


def compile_stop_text(texts: Sequence[str], *, stop_strings: Sequence[str] = (), line_markers: Sequence[str] = ()
                      ) -> StopText:
    """Stop rules over the tokens whose texts are `texts` (index = token id), for rows whose text
    starts with the first generated token (see `after` for a forced opening).

    stop_strings: a row stops on the token that completes one (e.g. "[User]").
    line_markers: after one appears, the row stops on the token holding the next newline.
    """
    patterns = [*stop_strings, *line_markers]
    if not patterns or any(not p or "\n" in p for p in patterns):
        raise ValueError(f"stop strings and markers must be non-empty and without newlines; got {patterns}")
    alphabet = {c: i + 2 for i, c in enumerate(sorted({c for p in patterns for c in p}))}
    if len(alphabet) + 2 > 255:
        raise ValueError("stop strings use more than 253 distinct characters")

    def codes(text: str) -> list[int]:
        return [_NEWLINE if c == "\n" else alphabet.get(c, _OTHER) for c in text]

    table = np.zeros((len(texts), MAX_TOKEN_CHARS), np.uint8)
    lengths = np.zeros(len(texts), np.int32)
    for token, text in enumerate(texts):
        row = codes(text)[:MAX_TOKEN_CHARS]
        table[token, :len(row)] = row
        lengths[token] = len(row)
    width = max(map(len, patterns))
    padded = np.full((len(patterns), width), -1, np.int32)
    for i, p in enumerate(patterns):
        padded[i, :len(p)] = codes(p)
    return StopText(table=jnp.asarray(table), lengths=jnp.asarray(lengths), patterns=jnp.asarray(padded),
                    pattern_lengths=jnp.asarray([len(p) for p in patterns], jnp.int32),
                    is_marker=jnp.asarray([False] * len(stop_strings) + [True] * len(line_markers)),
                    initial_tail=jnp.full(width - 1, -1, jnp.int32), initial_armed=jnp.asarray(False))


def after(stop: StopText, opening: Sequence[int]) -> StopText:
    """`stop` for rows whose text starts after the forced tokens `opening` (int[n]): their text is
    read as the loop reads it, so a forced "[Assistant]" arms the line stop; nothing in the opening
    itself stops a row."""
    tail, armed = initial_state(stop, (1,))
    for token in opening:
        tail, armed, _ = advance(stop, tail, armed, jnp.asarray([token], jnp.int32))
    return dataclasses.replace(stop, initial_tail=tail[0], initial_armed=armed[0])


def initial_state(stop: StopText, grid: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(tail int32[*grid, width - 1], armed bool[*grid]) before the first generated token."""
    return (jnp.broadcast_to(stop.initial_tail, (*grid, stop.width - 1)),
            jnp.broadcast_to(stop.initial_armed, grid))


def advance(stop: StopText, tail: jax.Array, armed: jax.Array, token: jax.Array
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Appends `token` (int32[*grid]) to each row's text; returns (tail, armed, stopped bool[*grid]).

    `stopped`: this token completes a stop string, or holds a newline after a marker (one seen
    earlier, or one this very token completes before the newline)."""
    keep = stop.width - 1
    chars = stop.table[token].astype(jnp.int32)  # [*grid, C]
    n = stop.lengths[token]
    columns = jnp.arange(chars.shape[-1])
    chars = jnp.where(columns < n[..., None], chars, -2)  # -2 never matches a pattern code
    text = jnp.concatenate([tail, chars], axis=-1)  # [*grid, keep + C]: the last `keep` old chars, then the new
    span = text.shape[-1]
    starts = jnp.arange(span)
    window = _windows(text, stop.width)  # [*grid, span, width]: the characters from each start position
    inside = jnp.arange(stop.width) < stop.pattern_lengths[:, None]  # [P, width]
    equal = (window[..., None, :, :] == stop.patterns[:, None, :]) | ~inside[:, None, :]  # [*grid, P, span, width]
    ends = starts[None, :] + stop.pattern_lengths[:, None] - 1  # [P, span]
    new_end = (ends >= keep) & (ends < keep + n[..., None, None])
    found = jnp.all(equal, axis=-1) & new_end  # [*grid, P, span]: a pattern completed by this token
    stop_string = jnp.any(found & ~stop.is_marker[:, None], axis=(-1, -2))
    marker_end = jnp.min(jnp.where(found & stop.is_marker[:, None], ends, span), axis=(-1, -2))  # first new marker
    newline = (text == _NEWLINE) & (starts >= keep)
    line_done = jnp.any(newline & (armed[..., None] | (starts > marker_end[..., None])), axis=-1)
    new_tail = jnp.take_along_axis(text, n[..., None] + jnp.arange(keep), axis=-1)
    return new_tail, armed | (marker_end < span), stop_string | line_done


def _windows(text: jax.Array, width: int) -> jax.Array:
    """[..., span, width]: text[..., s:s + width] for every start s, padded past the end with -2."""
    span = text.shape[-1]
    padded = jnp.pad(text, [(0, 0)] * (text.ndim - 1) + [(0, width)], constant_values=-2)
    return jnp.stack([padded[..., i:i + span] for i in range(width)], axis=-1)
