"""Reading and comparing LaTeX answers (MATH, AIME): `metajax.data.graders`' "math" answer type.

An answer is read from `\\boxed{}` first, then after "the answer is ...", then from a span that is
itself a formula, then from the last inline formula, then as the last number. Equivalence
(fractions, radicals, intervals, sets) is Hugging Face's `math-verify`; nothing here writes a CAS
or calls `eval`.

Model output is untrusted. A LaTeX answer that is too long, too deeply nested or holds an exponent
tower or a huge factorial is no answer (`_tractable_latex`), and math-verify runs under a
`MATH_TIMEOUT_S` wall-clock deadline. The deadline uses SIGALRM, which Python only delivers to the
main thread; in other threads the guards alone bound the work.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator

import math_verify

from metajax.data.answer_reading import (MAX_MATH_CHARS, MAX_MATH_NESTING, MAX_NUMBER_CHARS, NUMBER,
                                         SENTENCE_END, AnswerType, Candidates, last_boxed,
                                         last_number, phrase_windows, unwrap_text)

# math-verify's parser slows down with every level of (round or square) brackets and every
# superscript, so those get tighter limits than braces (`MAX_MATH_NESTING`).
MAX_MATH_BRACKET_NESTING = 4
MAX_MATH_SUPERSCRIPTS = 12
# Generous: a legitimate comparison takes milliseconds, but a loaded machine stretches that.
MATH_TIMEOUT_S = 2.0

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
    boxed = last_boxed(span)
    if boxed is not None:
        yield _tractable_latex(_strip_math_delimiters(boxed))
        return
    for window in phrase_windows(span):
        yield _tractable_latex(_formula_at_start(window))
    yield _tractable_latex(_whole_formula(span))
    yield _tractable_latex(_last_inline_math(span))
    yield last_number(span)


def _math_gold(gold: str, choices: tuple[str, ...]) -> str | None:
    del choices
    return _strip_math_delimiters(last_boxed(gold) or gold)


def _formula_at_start(window: str) -> str | None:
    line = window.split("\n", 1)[0]
    inline = _INLINE_MATH.search(line)
    if inline is not None:
        return _strip_math_delimiters(inline.group(1) or inline.group(2))
    return _strip_math_delimiters(SENTENCE_END.split(line, 1)[0])


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
    latex = unwrap_text(latex).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _LATEX_NOISE.sub("", latex.replace("{,}", ","))


def _plain_number(key: str) -> decimal.Decimal | None:
    if len(key) > MAX_NUMBER_CHARS or NUMBER.fullmatch(key) is None:
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


# The "math" answer type of `metajax.data.graders`.
MATH = AnswerType(_math_candidates, _math_gold, _math_equal)
