"""Answer extraction and grading for every answer type a dataset loader produces.

A completion is graded in three steps: `final_answer_span` cuts out the part that holds the answer
(RaM's `[Assistant] {answer}` line, an `Answer:` line, or the whole text, with ROI's level tags
removed); an extractor per answer type reads a canonical answer from that span; a comparison per
answer type decides whether it equals the gold answer. LaTeX equivalence (fractions, radicals,
intervals, sets) is Hugging Face's `math-verify`; nothing here writes a CAS or calls `eval`.

Model output is untrusted. Every call is bounded in time: the text is cut to its last
`MAX_TEXT_CHARS` characters, the regexes are linear (no nested or adjacent overlapping
quantifiers), an over-long number or a LaTeX answer that is too long, too deeply nested or holds an
exponent tower or a huge factorial is "no answer", and math-verify runs under a `MATH_TIMEOUT_S`
wall-clock deadline. The deadline uses SIGALRM, which Python only delivers to the main thread; in
other threads the guards alone bound the work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import decimal
import functools
import logging
import re
import signal
import string
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import math_verify

from metajax.data.example import ANSWER_TYPES, Example
from metajax.data.prompts import ANSWER_MARKER, THOUGHT_CLOSE, THOUGHT_OPEN, USER_MARKER

# A completion longer than this is graded on its tail: the final answer is at the end, and every
# regex below then runs on a bounded string.
MAX_TEXT_CHARS = 32_768
# Longer digit strings (sign, commas and point included) are junk, not answers; this also keeps
# `int`/`Decimal` conversions trivially cheap.
MAX_NUMBER_CHARS = 48
# Guards on a LaTeX answer before it reaches math-verify. MATH and AIME answers are short and
# shallow; `\frac{` nested thousands deep or `9^{9^9}` are attacks on the CAS, not answers.
# math-verify's parser slows down with every level of (round or square) brackets and every
# superscript, so those get tighter limits than braces.
MAX_MATH_CHARS = 300
MAX_MATH_NESTING = 12
MAX_MATH_BRACKET_NESTING = 4
MAX_MATH_SUPERSCRIPTS = 12
# Generous: a legitimate comparison takes milliseconds, but a loaded machine stretches that.
MATH_TIMEOUT_S = 2.0
# Only the last few "the answer is" phrases of a completion are read: one that says something
# readable is never far from the end, and a text repeating the phrase cannot multiply the work.
MAX_ANSWER_PHRASES = 8
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
    text = _LEVEL_TAG.sub(" ", _tail(text)).partition(USER_MARKER)[0]
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
    match = _LEVEL_TAG.search(_tail(text))
    return None if match is None else int(match.group(1))


def is_skip(text: str) -> bool:
    """Whether the completion's last `\\boxed{}` is ROI-Reasoning's skip, `\\boxed{NA}`."""
    _check_text(text)
    boxed = _last_boxed(_tail(text))
    return boxed is not None and _SKIP.fullmatch(_unwrap_text(boxed)) is not None


# ---------------------------------------------------------------------------------------------
# Shared reading helpers. Every regex is linear in its input: no nested quantifiers, no two
# adjacent quantifiers over overlapping characters, lazy quantifiers only with a bound.

Candidates = Iterator[str | None]


@dataclasses.dataclass(frozen=True)
class _AnswerType:
    """How one answer type is read and compared.

    Attributes:
      candidates: (span, choices) -> readings of the answer span, most explicit first; the first
        that is not None is the answer.
      gold: (gold, choices) -> the gold answer in canonical form, or None if it is not one.
      equal: (gold, answer, timeout_s) -> whether two canonical answers agree.
    """

    candidates: Callable[[str, tuple[str, ...]], Candidates]
    gold: Callable[[str, tuple[str, ...]], str | None]
    equal: Callable[[str, str, float], bool] = lambda gold, answer, timeout_s: gold == answer


_LEVEL_TAG = re.compile(r"<predicted_level>\s{0,8}Level[-_ ]?(\d{1,2})\s{0,8}</predicted_level>",
                        re.IGNORECASE)
_SKIP = re.compile(r"\s*N/?A\s*", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^[ \t*#>]*(?:final[ \t]+)?answer[ \t*]*:", re.IGNORECASE | re.MULTILINE)
# "answer is", "answer:", "final answer would be" ...: an answer is read right after the match.
_ANSWER_PHRASE = re.compile(r"\banswer\b(?:\s+(?:is|was|would be|should be|will be))?\s?[:=]?",
                            re.IGNORECASE)
_PHRASE_WINDOW = MAX_MATH_CHARS + 100
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit)\s?\{([^{}]*)\}")
# What may sit between "the answer is" and the answer itself.
_MARKUP = " \t\n*_:=\"'`$"
# A decimal with optional thousands commas. A minus sign is a sign only where it cannot be a
# subtraction ("10-3" is not "-3").
_NUMBER = re.compile(
    r"(?:(?<![\w).])[-−])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\w.])\.\d+")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(
            f"a completion must be a str, got {type(text).__name__}; decode tokens first")


def _answer_type(name: str) -> _AnswerType:
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


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (braces balanced) or `\\boxed x`; None if there is none.

    A box that is unclosed, longer than MAX_MATH_CHARS or nested deeper than MAX_MATH_NESTING
    reads as an empty one: the model did box an answer, so nothing else in the text stands in.
    """
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    if text.startswith("\\boxed ", start):
        token = text[start + 7:start + 7 + MAX_MATH_CHARS].split(None, 1)
        return token[0].rstrip("$.") if token else None
    opening = text.find("{", start)
    if opening < 0 or text[start:opening].strip() not in _BOX_COMMANDS:
        return ""
    depth = 0
    for position in range(opening, min(len(text), opening + MAX_MATH_CHARS + 2)):
        if text[position] == "{":
            depth += 1
            if depth > MAX_MATH_NESTING:
                return ""
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[opening + 1:position].strip()
    return ""


def _unwrap_text(latex: str) -> str:
    """`\\text{B}` -> `B`: the wrappers models put around words and letters."""
    return _TEXT_WRAPPER.sub(r"\1", latex)


def _phrase_windows(span: str) -> list[str]:
    """What follows each of the last MAX_ANSWER_PHRASES "answer is"/"answer:" phrases, last
    first, each cut to a window."""
    ends = [match.end() for match in _ANSWER_PHRASE.finditer(span)][-MAX_ANSWER_PHRASES:]
    return [span[end:end + _PHRASE_WINDOW] for end in reversed(ends)]


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):
        pass
    return last


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
        yield _number_at_start(span[hashes + 4:hashes + 4 + _PHRASE_WINDOW])
        return
    boxed = _last_boxed(span)
    if boxed is not None:
        yield _last_number(boxed)
        return
    for window in _phrase_windows(span):
        yield _number_after_phrase(window)
    yield _last_number(span)


def _number_after_phrase(window: str) -> str | None:
    """The number opening the phrase's sentence, or the one after its last "=" if it has one."""
    sentence = _SENTENCE_END.split(window.split("\n", 1)[0], 1)[0]
    return _number_at_start(sentence[sentence.rfind("=") + 1:])


def _numeric_gold(gold: str, choices: tuple[str, ...]) -> str | None:
    del choices
    match = _NUMBER.fullmatch(gold.lstrip("$").replace("{,}", ","))
    return None if match is None else _canonical_number(match.group())


def _number_at_start(text: str) -> str | None:
    match = _NUMBER.match(text.lstrip(_MARKUP + "\\(["))
    return None if match is None else _canonical_number(match.group())


def _last_number(text: str) -> str | None:
    match = _last(_NUMBER, text)
    return None if match is None else _canonical_number(match.group())


def _canonical_number(number: str) -> str | None:
    """"1,234.50" -> "1234.5", "-0" -> "0"; None for digit strings too long to be an answer."""
    if len(number) > MAX_NUMBER_CHARS:
        return None
    value = decimal.Decimal(number.replace(",", "").replace("−", "-")).normalize()
    return format(value if value != 0 else decimal.Decimal(0), "f")


# ---------------------------------------------------------------------------------------------
# math: MATH/AIME LaTeX. \boxed{} wins, then "the answer is ...", then a span that is itself a
# formula, then the last inline formula, then the last number. An answer the CAS cannot afford
# (`_tractable_latex`) is no answer.

# Only ever run on a bounded window: `\(` starts scan ahead up to MAX_MATH_CHARS characters.
_INLINE_MATH = re.compile(
    r"\$\$?([^$]{1,%d})\$|\\\((.{1,%d}?)\\\)" % (MAX_MATH_CHARS, MAX_MATH_CHARS))
_TWO_WORDS = re.compile(r"(?<![\\\w])[A-Za-z]{2,}\s+[A-Za-z]{2,}")
_EXPONENT_TOWER = re.compile(r"\^\s*(?:\{[^}]*|\([^)]*|\\?\w+\s*)\^")
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*\d{5}")
_BIG_FACTORIAL = re.compile(r"(?:\d{4}|\))\s*!")
_BINOMIAL = re.compile(r"\\[dt]?binom|\\choose")
_FOUR_DIGITS = re.compile(r"\d{4}")
_LONG_DIGITS = re.compile(r"\d{41}")


def _math_candidates(span: str, choices: tuple[str, ...]) -> Candidates:
    del choices
    boxed = _last_boxed(span)
    if boxed is not None:
        yield _tractable_latex(_strip_math_delimiters(boxed))
        return
    for window in _phrase_windows(span):
        yield _tractable_latex(_formula_at_start(window))
    yield _tractable_latex(_whole_formula(span))
    yield _tractable_latex(_last_inline_math(span))
    yield _last_number(span)


def _math_gold(gold: str, choices: tuple[str, ...]) -> str | None:
    del choices
    return _strip_math_delimiters(_last_boxed(gold) or gold)


def _formula_at_start(window: str) -> str | None:
    line = window.split("\n", 1)[0]
    inline = _INLINE_MATH.search(line)
    if inline is not None:
        return _strip_math_delimiters(inline.group(1) or inline.group(2))
    return _strip_math_delimiters(_SENTENCE_END.split(line, 1)[0])


def _whole_formula(span: str) -> str | None:
    """The span itself when it is one line of formula, not prose ("\\frac12", "5 cm")."""
    if "\n" in span or len(span) > MAX_MATH_CHARS or _TWO_WORDS.search(span):
        return None
    return _strip_math_delimiters(span)


def _last_inline_math(span: str) -> str | None:
    """The last `$...$`, `$$...$$` or `\\(...\\)` formula, found from the end in linear time."""
    dollar_end = span.rfind("$")
    while dollar_end > 0 and span[dollar_end - 1] == "$":
        dollar_end -= 1
    dollar_start = span.rfind("$", 0, max(dollar_end, 0))
    paren_end = span.rfind("\\)")
    paren_start = span.rfind("\\(", 0, max(paren_end, 0))
    if dollar_start >= 0 and (paren_start < 0 or dollar_end > paren_end):
        return _strip_math_delimiters(span[dollar_start + 1:dollar_end])
    if paren_start >= 0:
        return _strip_math_delimiters(span[paren_start + 2:paren_end])
    return None


def _strip_math_delimiters(latex: str) -> str | None:
    latex = latex.strip().strip("$").strip()
    for opening, closing in (("\\(", "\\)"), ("\\[", "\\]")):
        if latex.startswith(opening) and latex.endswith(closing):
            latex = latex[len(opening):-len(closing)].strip()
    latex = latex.removeprefix("\\displaystyle").rstrip(" .,;").strip()
    return latex or None


def _tractable_latex(latex: str | None) -> str | None:
    """`latex` if the CAS can afford it, else None (so the answer grades as wrong)."""
    if latex is None or len(latex) > MAX_MATH_CHARS or latex.count("^") > MAX_MATH_SUPERSCRIPTS:
        return None
    if (_nesting(latex, "{", "}") > MAX_MATH_NESTING
            or _nesting(latex, "([", ")]") > MAX_MATH_BRACKET_NESTING):
        return None
    if any(pattern.search(latex) for pattern in (
            _EXPONENT_TOWER, _BIG_EXPONENT, _BIG_FACTORIAL, _LONG_DIGITS)):
        return None
    if _BINOMIAL.search(latex) and _FOUR_DIGITS.search(latex):
        return None
    return latex


def _nesting(latex: str, openers: str, closers: str) -> int:
    depth = deepest = 0
    for char in latex:
        if char in openers:
            depth += 1
            deepest = max(deepest, depth)
        elif char in closers:
            depth = max(depth - 1, 0)
    return deepest


def _math_equal(gold: str, answer: str, timeout_s: float) -> bool:
    """LaTeX equivalence: same normalised spelling, equal plain numbers, or math-verify."""
    gold_key, answer_key = _latex_key(gold), _latex_key(answer)
    if gold_key == answer_key:
        return True
    gold_number, answer_number = _plain_number(gold_key), _plain_number(answer_key)
    if gold_number is not None and answer_number is not None:
        return gold_number == answer_number
    _warm_up_math_verify()
    try:
        with _deadline(timeout_s):
            gold_parsed = _parse_latex(gold)
            if not gold_parsed:
                raise ValueError(f"gold answer {gold!r} is not LaTeX that math-verify can parse; "
                                 "fix or drop the example")
            return math_verify.verify(gold_parsed, _parse_latex(answer), timeout_seconds=None)
    except _DeadlineExceeded:
        return False


def _parse_latex(latex: str) -> list:
    """SymPy objects for `latex`; [] when it does not parse (no raw-string fallback: strings
    that match were already caught by `_latex_key`)."""
    return math_verify.parse(f"${latex}$", fallback_mode="no_fallback", parsing_timeout=None)


# One expression of each kind whose first parse or comparison loads code lazily.
_WARM_UP_PAIRS = (("(x+1)^2", "x^2+2x+1"), ("\\frac{\\sqrt{2}}{2}", "0.5"),
                  ("[1,2)", "\\{1,2\\}"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "y=2x"))


@functools.cache
def _warm_up_math_verify() -> None:
    """Pay math-verify's cold start (grammar loading, first sympy paths: seconds in a fresh
    process) once, on trusted input and without a deadline, so the deadline measures answers."""
    for gold, answer in _WARM_UP_PAIRS:
        math_verify.verify(_parse_latex(gold), _parse_latex(answer), timeout_seconds=None)


_LATEX_NOISE = re.compile(r"\s|\\left|\\right|\\[!,;: ]|\\displaystyle|\^\{?\\circ\}?|\\?%|\\\$")


def _latex_key(latex: str) -> str:
    """A cheap canonical spelling, enough for the many answers written just like the gold."""
    latex = _unwrap_text(latex).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _LATEX_NOISE.sub("", latex.replace("{,}", ","))


def _plain_number(key: str) -> decimal.Decimal | None:
    if len(key) > MAX_NUMBER_CHARS or _NUMBER.fullmatch(key) is None:
        return None
    return decimal.Decimal(key.replace(",", "").replace("−", "-"))


class _DeadlineExceeded(BaseException):
    """Raised from SIGALRM. A BaseException, so the `except Exception` blocks inside sympy and
    math-verify cannot swallow it and compute on."""


_ALARM_REPEAT_S = 0.05


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the body with `_DeadlineExceeded` after `seconds` of wall-clock time.

    Signals reach only the main thread; elsewhere the body runs unbounded, behind the input
    guards. An enclosing SIGALRM timer (pytest-timeout, say) is re-armed with its remaining time.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise _DeadlineExceeded

    previous_unraisable_hook = sys.unraisablehook

    def drop_missed_alarms(unraisable):
        # An alarm that lands in a gc callback or a finaliser (JAX registers a gc callback) cannot
        # leave it: Python reports it here and carries on. It is expected, and the repeating alarm
        # tries again; anything else goes to the hook that was installed (pytest's, say).
        if not isinstance(unraisable.exc_value, _DeadlineExceeded):
            previous_unraisable_hook(unraisable)

    started = time.monotonic()
    sys.unraisablehook = drop_missed_alarms
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds, _ALARM_REPEAT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM,
                      signal.SIG_DFL if previous_handler is None else previous_handler)
        sys.unraisablehook = previous_unraisable_hook
        if previous_delay > 0:
            remaining = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), previous_interval)


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its own timeout is off; `_deadline` takes its place."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _logger_name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger_name).addFilter(_DropTimeoutDisabledWarning())


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
    boxed = _last_boxed(span)
    if boxed is not None:
        yield _whole_letter(boxed, letters) or _option_named(boxed, choices)
        return
    windows = _phrase_windows(span)
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
    bare = _unwrap_text(text).strip(_MARKUP + "\\()[]{}.!")
    return bare.upper() if len(bare) == 1 and bare.upper() in letters else None


def _letter_at_start(window: str, letters: str) -> str | None:
    window = _unwrap_text(window).lstrip(_MARKUP)
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
    text = _normalise_words(_unwrap_text(text))
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
    boxed = _last_boxed(span)
    if boxed is not None:
        yield _label_at_start(boxed, labels)
        return
    for window in _phrase_windows(span):
        yield _label_at_start(window, labels)
    yield _label_at_start(span[:_PHRASE_WINDOW], labels)
    last = _last(labels.pattern, span)
    yield None if last is None else labels.canonical(last.group())


def _label_gold(gold: str, choices: tuple[str, ...], *, labels: _Labels) -> str | None:
    del choices
    return labels.canonical(gold)


def _label_at_start(text: str, labels: _Labels) -> str | None:
    match = labels.pattern.match(_unwrap_text(text).lstrip(_MARKUP + "\\([{"))
    return None if match is None else labels.canonical(match.group())


_ANSWER_TYPES: dict[str, _AnswerType] = {
    "numeric": _AnswerType(_numeric_candidates, _numeric_gold),
    "math": _AnswerType(_math_candidates, _math_gold, _math_equal),
    "choice": _AnswerType(_choice_candidates, _choice_gold),
    "yes_no": _AnswerType(functools.partial(_label_candidates, labels=_YES_NO),
                          functools.partial(_label_gold, labels=_YES_NO)),
    "true_false_unknown": _AnswerType(
        functools.partial(_label_candidates, labels=_TRUE_FALSE_UNKNOWN),
        functools.partial(_label_gold, labels=_TRUE_FALSE_UNKNOWN)),
}
