"""Stop strings in the compiled loop, against a reference that searches the decoded text."""

import dataclasses

import jax
import numpy as np
import pytest

from metajax.host import to_host
from metajax.models import load_hf
from metajax.sampling import StopReason, generate
from metajax.sampling.stop_text import advance, after, compile_stop_text, initial_state

MARKER, USER = "[Assistant]", "[User]"
# Pieces that split the patterns at every seam, join them with neighbours, and put newlines before,
# inside and after them; "[Assistant] 42\n[User]" in one token completes both in one step.
PIECES = ["[", "Ass", "istant", "]", "[Assistant]", " 4", "2", "\n", "2\n", "x", "[User]", "Us", "er]", "]\n[",
          "<thought>", " ok ", "</thought>\n", "\n[", "[Assistant] 42\n[User]", "é", "Assistant]", "r"]


def reference_stop(texts, tokens, opening=""):
    """Index of the token where the text first completes "[User]" or holds the first newline after
    the end of the first "[Assistant]" (the opening's text counts), else None."""
    text, ends = opening, []
    for t in tokens:
        text += texts[t]
        ends.append(len(text))
    candidates = []
    user = text.find(USER, 0)
    while user >= 0 and user + len(USER) <= len(opening):  # only occurrences completed by generated text
        user = text.find(USER, user + 1)
    if user >= 0:
        candidates.append(user + len(USER) - 1)
    marker = text.find(MARKER)
    if marker >= 0:
        newline = text.find("\n", max(marker + len(MARKER), len(opening)))
        if newline >= 0:
            candidates.append(newline)
    if not candidates:
        return None
    stop_char = min(candidates)
    return next(i for i, end in enumerate(ends) if end > stop_char)


@pytest.mark.parametrize("opening", [(), ("<thought>",), (MARKER,), ("[", "Ass", "istant", "]", " 4")])
def test_advance_matches_the_text_reference(opening):
    stop = after(compile_stop_text(PIECES, stop_strings=(USER,), line_markers=(MARKER,)),
                 [PIECES.index(piece) for piece in opening])
    opening = "".join(opening)
    step = jax.jit(advance)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, len(PIECES), (64, 24)).astype(np.int32)
    tail, armed = initial_state(stop, (64,))
    first = np.full(64, -1)
    for i in range(tokens.shape[1]):
        tail, armed, stopped = step(stop, tail, armed, tokens[:, i])
        first = np.where((first < 0) & np.asarray(stopped), i, first)
    expected = [reference_stop(PIECES, row.tolist(), opening) for row in tokens]
    assert first.tolist() == [-1 if e is None else e for e in expected]
    assert sum(e is not None for e in expected) > 40  # the sequences do exercise the rules


def test_generate_stops_where_the_text_ends(hf_checkpoint):
    params, cfg = load_hf(hf_checkpoint("llama3").path)
    prompts = [[1, 5, 9], [1, 17, 33, 4, 8, 60, 61], [1, *range(10, 23)], [1, *range(40, 60)]]

    def run(**kwargs):
        samples = generate(params, cfg, prompts, max_new_tokens=40, temperature=0.0, **kwargs)
        return to_host({f.name: getattr(samples, f.name) for f in dataclasses.fields(samples)})

    free = run()
    rows = [row[:n].tolist() for row, n in zip(free["tokens"], free["lengths"])]
    # Give the generated token ids texts (seeded pieces) until some rows stop, by either rule, and
    # some run on: the compiled loop must end each row exactly where the text search says.
    for seed in range(100):
        pieces = np.random.default_rng(seed).choice(PIECES + ["x", "y z", "1"] * 4, cfg.vocab_size).tolist()
        expected = [reference_stop(pieces, row) for row in rows]
        if 0 < sum(e is not None and e > 0 for e in expected) < len(rows):
            break
    else:
        pytest.fail("no seed gave a mix of stopping and running rows")
    texts = pieces
    stopped = run(stop_text=compile_stop_text(texts, stop_strings=(USER,), line_markers=(MARKER,)))
    for i, row in enumerate(rows):
        n = len(row) if expected[i] is None else expected[i] + 1
        assert stopped["lengths"][i] == n
        assert stopped["tokens"][i, :n].tolist() == row[:n]
        want = free["stop_reason"][i] if expected[i] is None else StopReason.STOP_STRING
        assert stopped["stop_reason"][i] == want


def test_bad_patterns_are_rejected():
    with pytest.raises(ValueError, match="non-empty and without newlines"):
        compile_stop_text(["a"], stop_strings=("a\n",))
    with pytest.raises(ValueError, match="non-empty"):
        compile_stop_text(["a"])
