"""The readers every answer type shares: the answer-type interface, `\\boxed{}` answers, the text
after "the answer is", and numbers.

`metajax.data.graders` and the LaTeX readers of `metajax.data.math_answers` are built on these.
Model output is untrusted: every regex here is linear in its input (no nested quantifiers, no two
adjacent quantifiers over overlapping characters, lazy quantifiers only with a bound), and every
reader looks at a bounded window.
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from collections.abc import Callable, Iterator

# Longer digit strings (sign, commas and point included) are junk, not answers; this also keeps
# `int`/`Decimal` conversions trivially cheap.
MAX_NUMBER_CHARS = 48
# Bounds on a boxed or LaTeX answer (the box reader and `metajax.data.math_answers`' guards use
# them). MATH and AIME answers are short and shallow; `\frac{` nested thousands deep or `9^{9^9}`
# are attacks on the CAS, not answers.
MAX_MATH_CHARS = 300
MAX_MATH_NESTING = 12
# Only the last few "the answer is" phrases of a completion are read: one that says something
# readable is never far from the end, and a text repeating the phrase cannot multiply the work.
MAX_ANSWER_PHRASES = 8

Candidates = Iterator[str | None]


@dataclasses.dataclass(frozen=True)
class AnswerType:
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


# What may sit between "the answer is" and the answer itself.
MARKUP = " \t\n*_:=\"'`$"
# A decimal with optional thousands commas. A minus sign is a sign only where it cannot be a
# subtraction ("10-3" is not "-3").
NUMBER = re.compile(
    r"(?:(?<![\w).])[-−])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\w.])\.\d+")
SENTENCE_END = re.compile(r"\.(?:\s|$)")
# How much of the text after an "answer is" phrase is read: room for the longest LaTeX answer.
PHRASE_WINDOW = MAX_MATH_CHARS + 100
# "answer is", "answer:", "final answer would be" ...: an answer is read right after the match.
_ANSWER_PHRASE = re.compile(r"\banswer\b(?:\s+(?:is|was|would be|should be|will be))?\s?[:=]?",
                            re.IGNORECASE)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit)\s?\{([^{}]*)\}")
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
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


def unwrap_text(latex: str) -> str:
    """`\\text{B}` -> `B`: the wrappers models put around words and letters."""
    return _TEXT_WRAPPER.sub(r"\1", latex)


def phrase_windows(span: str) -> list[str]:
    """What follows each of the last MAX_ANSWER_PHRASES "answer is"/"answer:" phrases, last
    first, each cut to a window."""
    ends = [match.end() for match in _ANSWER_PHRASE.finditer(span)][-MAX_ANSWER_PHRASES:]
    return [span[end:end + PHRASE_WINDOW] for end in reversed(ends)]


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match of `pattern` in `text` (found in one pass), or None."""
    last = None
    for last in pattern.finditer(text):
        pass
    return last


def last_number(text: str) -> str | None:
    """The last number in `text`, canonical (`canonical_number`), or None."""
    match = last_match(NUMBER, text)
    return None if match is None else canonical_number(match.group())


def canonical_number(number: str) -> str | None:
    """"1,234.50" -> "1234.5", "-0" -> "0"; None for digit strings too long to be an answer."""
    if len(number) > MAX_NUMBER_CHARS:
        return None
    value = decimal.Decimal(number.replace(",", "").replace("−", "-")).normalize()
    return format(value if value != 0 else decimal.Decimal(0), "f")
