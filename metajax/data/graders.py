"""Answer extraction and grading for every answer type a dataset loader produces.

A completion is graded in three steps: `final_answer_span` cuts out the part that holds the answer
(RaM's `[Assistant] {answer}` line, an `Answer:` line, or the whole text, with ROI's level tags
removed); an extractor per answer type reads a canonical answer from that span; a comparison per
answer type decides whether it equals the gold answer. This module reads the "numeric", "choice",
"yes_no" and "true_false_unknown" types; "math" is `metajax.data.math_answers` (LaTeX equivalence
is Hugging Face's `math-verify`; nothing here writes a CAS or calls `eval`). Both build on the
shared readers of `metajax.data.answer_reading`, and the markers they look for are defined in
`metajax.data.formats`.

Model output is untrusted. Every call is bounded in time: the text is cut to its last
`MAX_TEXT_CHARS` characters, the regexes are linear (no nested or adjacent overlapping
quantifiers), an over-long number or a LaTeX answer that is too long, too deeply nested or holds an
exponent tower or a huge factorial is "no answer", and math-verify runs under a `MATH_TIMEOUT_S`
wall-clock deadline (main thread only: see `metajax.data.math_answers`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import string
from collections.abc import Mapping, Sequence

from metajax.data.answer_reading import (MARKUP, NUMBER, PHRASE_WINDOW, SENTENCE_END, AnswerType,
                                         Candidates, canonical_number, last_boxed, last_match,
                                         last_number, phrase_windows, unwrap_text)
from metajax.data.example import ANSWER_TYPES, Example
from metajax.data.formats import (ANSWER_MARKER, LEVEL_TAG_PATTERN, SKIP_PATTERN, THOUGHT_CLOSE,
                                  THOUGHT_OPEN, USER_MARKER)
from metajax.data.math_answers import MATH, MATH_TIMEOUT_S

# A completion longer than this is graded on its tail: the final answer is at the end, and every
# regex below then runs on a bounded string.
MAX_TEXT_CHARS = 32_768
# Letters a multiple-choice answer may use when the caller does not pass the option texts.
MAX_UNLISTED_CHOICES = 10


def extract_answer(text: str, answer_type: str, *, choices: Sequence[str] = ()) -> str | None:
    """The model's final answer in canonical form, or None when it gave none (or skipped).

    Canonical forms: "numeric" a plain decimal ("1234.5"); "math" the LaTeX of the answer as
    written ("\\frac{1}{2}"); "choice" an upper-case letter ("B"); "yes_no" "yes"/"no";
    "true_false_unknown" "True"/"False"/"Unknown".

    Args:
      text: a model completion (untrusted).
      answer_type: one of `ANSWER_TYPES`.
      choices: option texts in letter order, for "choice": they bound the letters and let an
        answer name an option by its text. Ignored by the other types.
    """
    kind = _answer_type(answer_type)
    _check_text(text)
    span = final_answer_span(text)
    if span is None or is_skip(span):
        return None
    readings = kind.candidates(span, tuple(choices))
    return next((answer for answer in readings if answer is not None), None)


def grade(text: str, gold: str, answer_type: str, *, choices: Sequence[str] = (),
          timeout_s: float = MATH_TIMEOUT_S) -> bool:
    """Whether the completion's final answer equals `gold`; no extractable answer is wrong.

    Args:
      text: a model completion (untrusted).
      gold: the gold answer in the canonical form `Example.answer` documents (trusted).
      answer_type: one of `ANSWER_TYPES`.
      choices: option texts in letter order, for "choice".
      timeout_s: wall-clock bound on the LaTeX comparison of a "math" answer (main thread only).

    Raises:
      ValueError: unknown `answer_type`, a gold answer that is not of that type, or a
        non-positive `timeout_s`.
    """
    kind = _answer_type(answer_type)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold answer must be a non-empty str, got {gold!r}")
    gold_answer = kind.gold(gold.strip(), tuple(choices))
    if gold_answer is None:
        raise ValueError(f"gold answer {gold!r} is not a valid {answer_type!r} answer"
                         + (f" for choices {tuple(choices)}" if answer_type == "choice" else "")
                         + "; see Example.answer for the canonical forms")
    answer = extract_answer(text, answer_type, choices=choices)
    return answer is not None and kind.equal(gold_answer, answer, timeout_s)


def grade_example(text: str, example: Example) -> bool:
    """`grade` against an `Example`'s gold answer, answer type and choices."""
    return grade(text, example.answer, example.answer_type, choices=example.choices)


def split_ram_completion(text: str) -> tuple[str | None, str | None]:
    """Split a RaM-format completion (`<thought> z </thought>\\n[Assistant] y\\n`) into (z, y).

    Everything from a `[User]` on is the model inventing the next turn and is ignored. The
    thought is the body of the `<thought>` block before the first `[Assistant]` (None when there
    is no block; a block whose opener was in the prompt counts). The answer is the first line
    after that `[Assistant]`; with no `[Assistant]`, the first line after a closed `</thought>`.
    An unclosed thought with no `[Assistant]` (the budget ran out mid-thought) has no answer.
    """
    head, marker, tail = text.partition(USER_MARKER)[0].partition(ANSWER_MARKER)
    thought, after_thought = None, None
    if THOUGHT_OPEN in head or THOUGHT_CLOSE in head:
        body = head.split(THOUGHT_OPEN, 1)[-1]
        thought, closed, after_thought = body.partition(THOUGHT_CLOSE)
        thought = thought.strip()
        if not closed:
            after_thought = None
    if marker:
        return thought, _first_line(tail)
    if after_thought is not None:
        return thought, _first_line(after_thought)
    return thought, None


def final_answer_span(text: str) -> str | None:
    """The part of a completion that holds its final answer, or None if it gave none.

    In order: RaM's answer (`split_ram_completion`); nothing, if a thought was opened and never
    answered; the first `Answer:` line; the whole text up to an invented `[User]` turn. ROI's
    `<predicted_level>` tags are removed so their digits never read as answers; an over-long text
    is cut to its tail first.
    """
    text = LEVEL_TAG_PATTERN.sub(" ", _tail(text)).partition(USER_MARKER)[0]
    thought, answer = split_ram_completion(text)
    if answer is not None or thought is not None:
        return answer
    line = _ANSWER_LINE.search(text)
    if line is not None:
        return _first_line(text[line.end():])
    return text.strip() or None


def parse_predicted_level(text: str) -> int | None:
    """k of the first `<predicted_level>Level-k</predicted_level>` tag (ROI-Reasoning), or None."""
    _check_text(text)
    match = LEVEL_TAG_PATTERN.search(_tail(text))
    return None if match is None else int(match.group(1))


def is_skip(text: str) -> bool:
    """Whether the completion's last `\\boxed{}` is ROI-Reasoning's skip, `\\boxed{NA}`."""
    _check_text(text)
    boxed = last_boxed(_tail(text))
    return boxed is not None and SKIP_PATTERN.fullmatch(unwrap_text(boxed)) is not None


# ---------------------------------------------------------------------------------------------
# Reading helpers (those the "math" type shares are in `metajax.data.answer_reading`). Every regex
# is linear in its input: no nested quantifiers, no two adjacent quantifiers over overlapping
# characters, lazy quantifiers only with a bound.

_ANSWER_LINE = re.compile(r"^[ \t*#>]*(?:final[ \t]+)?answer[ \t*]*:", re.IGNORECASE | re.MULTILINE)


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(
            f"a completion must be a str, got {type(text).__name__}; decode tokens first")


def _answer_type(name: str) -> AnswerType:
    try:
        return _ANSWER_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown answer_type {name!r}; use one of {ANSWER_TYPES}") from None


def _tail(text: str) -> str:
    """The last MAX_TEXT_CHARS characters, from a line start (a token cut in two is junk)."""
    if len(text) <= MAX_TEXT_CHARS:
        return text
    tail = text[-MAX_TEXT_CHARS:]
    newline = tail.find("\n")
    return tail[newline + 1:] if newline >= 0 else ""


def _first_line(text: str) -> str | None:
    """The first non-empty line, cut where the model starts inventing a next turn."""
    line = text.lstrip().split("\n", 1)[0]
    for marker in (USER_MARKER, ANSWER_MARKER, THOUGHT_OPEN):
        line = line.split(marker, 1)[0]
    return line.strip() or None


def _normalise_words(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------------------------------------
# numeric: GSM8K-style numbers. "#### 42" wins, then \boxed{}, then "the answer is 42" (or the
# result of "the answer is 5 + 3 = 8"), then the last number in the span.

def _numeric_candidates(span: str, choices: tuple[str, ...]) -> Candidates:
    del choices
    span = span.replace("{,}", ",")
    hashes = span.rfind("####")
    if hashes >= 0:
        yield _number_at_start(span[hashes + 4:hashes + 4 + PHRASE_WINDOW])
        return
    boxed = last_boxed(span)
    if boxed is not None:
        yield last_number(boxed)
        return
    for window in phrase_windows(span):
        yield _number_after_phrase(window)
    yield last_number(span)


def _number_after_phrase(window: str) -> str | None:
    """The number opening the phrase's sentence, or the one after its last "=" if it has one."""
    sentence = SENTENCE_END.split(window.split("\n", 1)[0], 1)[0]
    return _number_at_start(sentence[sentence.rfind("=") + 1:])


def _numeric_gold(gold: str, choices: tuple[str, ...]) -> str | None:
    del choices
    match = NUMBER.fullmatch(gold.lstrip("$").replace("{,}", ","))
    return None if match is None else canonical_number(match.group())


def _number_at_start(text: str) -> str | None:
    match = NUMBER.match(text.lstrip(MARKUP + "\\(["))
    return None if match is None else canonical_number(match.group())


# ---------------------------------------------------------------------------------------------
# choice: ARC, CommonsenseQA, MMLU-CF. A letter ("B", "(b)", "The answer is B", "\boxed{C}") or
# an option's text ("The answer is Paris").

_LETTER = re.compile(r"[(\[]?([A-Za-z])[)\]]?(?![\w'’])")
_LETTER_INTRO = re.compile(r"(?:option|choice)\b\s?", re.IGNORECASE)
_BRACKETED_LETTER = re.compile(r"[(\[]([A-Za-z])[)\]]")
# A capital standing alone. "A" or "I" before a lower-case word is an article or a pronoun
# ("A dog", "I think"), unless the word is "is"/"was" ("A is correct").
_BARE_LETTER = re.compile(
    r"(?<![\w'’\\])([A-Z])(?![\w'’])(?!(?<=[AI])\s+(?!(?:is|was)\b)[a-z])")


def _choice_candidates(span: str, choices: tuple[str, ...]) -> Candidates:
    letters = string.ascii_uppercase[:len(choices) or MAX_UNLISTED_CHOICES]
    yield _whole_letter(span, letters)
    boxed = last_boxed(span)
    if boxed is not None:
        yield _whole_letter(boxed, letters) or _option_named(boxed, choices)
        return
    windows = phrase_windows(span)
    for window in windows:
        yield _letter_at_start(window, letters)
    for window in windows:
        yield _option_named(window.split("\n", 1)[0], choices)
    yield _last_letter(_BRACKETED_LETTER, span, letters)
    yield _option_named(span, choices)
    yield _last_letter(_BARE_LETTER, span, letters)


def _choice_gold(gold: str, choices: tuple[str, ...]) -> str | None:
    """A letter, or an option's exact text."""
    letters = string.ascii_uppercase[:len(choices) or MAX_UNLISTED_CHOICES]
    options = [_normalise_words(option) for option in choices]
    letter = _whole_letter(gold, letters)
    if letter is None and _normalise_words(gold) in options:
        letter = letters[options.index(_normalise_words(gold))]
    return letter


def _whole_letter(text: str, letters: str) -> str | None:
    """The letter when the text is nothing but one ("B", "(b)", "**C.**", "\\text{D}")."""
    bare = unwrap_text(text).strip(MARKUP + "\\()[]{}.!")
    return bare.upper() if len(bare) == 1 and bare.upper() in letters else None


def _letter_at_start(window: str, letters: str) -> str | None:
    window = unwrap_text(window).lstrip(MARKUP)
    intro = _LETTER_INTRO.match(window)
    if intro is not None:
        window = window[intro.end():]
    match = _LETTER.match(window)
    if match is None or match.group(1).upper() not in letters:
        return None
    # A lower-case letter before a word is an article ("the answer is a dog"), not option a.
    if match.group(1).islower() and re.match(r"\s+[a-z]", window[match.end():match.end() + 2]):
        return None
    return match.group(1).upper()


def _last_letter(pattern: re.Pattern[str], text: str, letters: str) -> str | None:
    found = None
    for match in pattern.finditer(text):
        if match.group(1).upper() in letters:
            found = match.group(1).upper()
    return found


def _option_named(text: str, choices: tuple[str, ...]) -> str | None:
    """The letter of the option whose text occurs last in `text`, the longest on a tie (so
    "dark red" beats "red")."""
    text = _normalise_words(unwrap_text(text))
    best, best_key = None, (-1, -1)
    for letter, option in zip(string.ascii_uppercase, choices):
        option = _normalise_words(option).rstrip(".")
        if not option:
            continue
        for match in re.finditer(r"(?<!\w)" + re.escape(option) + r"(?!\w)", text):
            if (match.end(), len(option)) > best_key:
                best, best_key = letter, (match.end(), len(option))
    return best


# ---------------------------------------------------------------------------------------------
# yes_no (StrategyQA) and true_false_unknown (ProofWriter): a closed vocabulary of labels.
# \boxed{} wins, then "the answer is ...", then a span that opens with a label, then the last
# label in the span.

@dataclasses.dataclass(frozen=True)
class _Labels:
    """The words a model may use for each canonical label, and a regex that finds any of them."""

    words: Mapping[str, str]
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, words: Mapping[str, str]) -> _Labels:
        alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
        pattern = rf"(?<![\w'’])(?:{alternatives})(?![\w'’])"
        return cls(words, re.compile(pattern, re.IGNORECASE))

    def canonical(self, word: str) -> str | None:
        return self.words.get(_normalise_words(word))


_YES_NO = _Labels.of({"yes": "yes", "no": "no", "true": "yes", "false": "no"})
_TRUE_FALSE_UNKNOWN = _Labels.of({
    "true": "True", "false": "False", "unknown": "Unknown", "uncertain": "Unknown",
    "undetermined": "Unknown", "cannot be determined": "Unknown",
    "can't be determined": "Unknown", "not enough information": "Unknown"})


def _label_candidates(span: str, choices: tuple[str, ...], *, labels: _Labels) -> Candidates:
    del choices
    boxed = last_boxed(span)
    if boxed is not None:
        yield _label_at_start(boxed, labels)
        return
    for window in phrase_windows(span):
        yield _label_at_start(window, labels)
    yield _label_at_start(span[:PHRASE_WINDOW], labels)
    last = last_match(labels.pattern, span)
    yield None if last is None else labels.canonical(last.group())


def _label_gold(gold: str, choices: tuple[str, ...], *, labels: _Labels) -> str | None:
    del choices
    return labels.canonical(gold)


def _label_at_start(text: str, labels: _Labels) -> str | None:
    match = labels.pattern.match(unwrap_text(text).lstrip(MARKUP + "\\([{"))
    return None if match is None else labels.canonical(match.group())


_ANSWER_TYPES: dict[str, AnswerType] = {
    "numeric": AnswerType(_numeric_candidates, _numeric_gold),
    "math": MATH,
    "choice": AnswerType(_choice_candidates, _choice_gold),
    "yes_no": AnswerType(functools.partial(_label_candidates, labels=_YES_NO),
                         functools.partial(_label_gold, labels=_YES_NO)),
    "true_false_unknown": AnswerType(
        functools.partial(_label_candidates, labels=_TRUE_FALSE_UNKNOWN),
        functools.partial(_label_gold, labels=_TRUE_FALSE_UNKNOWN)),
}
