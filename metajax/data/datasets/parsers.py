"""Row parsers: one row in a dataset's own published layout -> one `Example`.

Every parser has the signature `parse(row, dataset, fallback_id) -> Example`: `row` is a mapping in
the dataset's schema, `dataset` the name the example is filed under (ARC easy and challenge share a
parser), and `fallback_id` the id for rows that carry none. A row that does not fit raises
`RowError` naming the field; the loader adds the file and line.

Layouts accepted (field names exactly as published):
  gsm8k        {"question", "answer": "...#### 42"}                  (openai/gsm8k, TFDS gsm8k)
  math         {"problem", "level": "Level 3", "type", "solution"}   (gold = last \\boxed{} of solution)
               {"problem", "solution", "answer", "subject", "level": 3, "unique_id"}   (MATH-500)
  aime         {"id"|"ID", "problem"|"question"|"Problem", "answer"|"Answer", "year"?, "solution"?}
  choice       {"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}  (ARC, CSQA)
               {"id", "question", "choices": {"text": [], "label": []}, "answerKey"}     (HF, TFDS)
               {"question", "subject", "choices": [], "answer": 0}                       (MMLU)
               {"Question", "A", "B", "C", "D", "Answer": "B"}                            (MMLU-CF)
  strategyqa   {"input", "target_scores": {"Yes": 1, "No": 0}, "target"}   (BIG-bench task.json)
               {"qid", "question", "answer": true, "facts": []}            (HF)
  proofwriter  {"id", "theory"|"context", "question", "answer": "True"|"False"|"Unknown", "QDep"}
  champ        {"identifier", "_text", "_answer", "category"}             (CHAMP problems)
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from metajax.data.example import Example

LETTERS = string.ascii_uppercase


class RowError(ValueError):
    """A row that does not fit its dataset's layout; `field` names the offending field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason


def parse_gsm8k(row: Mapping[str, Any], dataset: str, fallback_id: str) -> Example:
    """GSM8K: the gold number follows '####'; the text before it is the reference rationale."""
    question = _text(row, "question")
    solution = _text(row, "answer")
    rationale, marker, final = solution.rpartition("####")
    if not marker:
        raise RowError("answer", "has no '#### <number>' final answer")
    answer = final.strip().replace(",", "")
    if not _is_number(answer):
        raise RowError("answer", f"final answer {final.strip()!r} after '####' is not a number")
    # "<<16-3-4=9>>" calculator annotations are tool calls for the original verifier, not prose.
    rationale = _CALCULATOR.sub("", rationale).strip()
    return Example(_row_id(row, ("id",), fallback_id), question, answer, "numeric", dataset,
                   rationale=rationale or None)


def parse_math(row: Mapping[str, Any], dataset: str, fallback_id: str) -> Example:
    """MATH and MATH-500: gold = the row's 'answer' when given, else the solution's last \\boxed{}."""
    problem = _text(row, "problem")
    solution = _text(row, "solution")
    answer = _text(row, "answer") if "answer" in row else last_boxed(solution)
    if not answer:
        raise RowError("solution", "has no \\boxed{...} final answer (and the row no 'answer')")
    return Example(_row_id(row, ("unique_id", "id"), fallback_id), problem, answer, "math", dataset,
                   difficulty=_math_level(row.get("level")), rationale=solution)


def parse_aime(row: Mapping[str, Any], dataset: str, fallback_id: str) -> Example:
    """AIME: official answers are integers 0-999, stored canonically ("070" -> "70").

    Graded as maths rather than numbers because some published copies decorate the integer
    (AIME 2025 II problem 5 reads "336^\\circ").
    """
    problem = _text(row, ("problem", "question", "Problem"))
    field, raw = _first(row, ("answer", "Answer"))
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise RowError(field, f"expected the answer as a non-empty string or integer, got {raw!r}")
    answer = str(int(raw)) if raw.strip().isdigit() else raw.strip()
    solution = row.get("solution")
    return Example(_row_id(row, ("id", "ID"), fallback_id), problem, answer, "math", dataset,
                   rationale=solution if isinstance(solution, str) and solution else None)


def parse_multiple_choice(row: Mapping[str, Any], dataset: str, fallback_id: str) -> Example:
    """ARC, CommonsenseQA, MMLU, MMLU-CF: the gold is the letter of the right choice's position."""
    question, choices, gold = _choice_layout(row)
    return Example(_row_id(row, ("id",), fallback_id), question, LETTERS[gold], "choice", dataset,
                   choices=tuple(choices))


def parse_strategyqa(row: Mapping[str, Any], dataset: str, fallback_id: str) -> Example:
    """StrategyQA: yes/no questions, from BIG-bench's task.json or the HF layout."""
    if "target_scores" in row:
        question = _text(row, "input")
        scores = row["target_scores"]
        if not (isinstance(scores, Mapping) and {scores.get("Yes"), scores.get("No")} == {0, 1}):
            raise RowError("target_scores", f"expected {{'Yes': 0|1, 'No': 1|0}}, got {scores!r}")
        answer = "yes" if scores["Yes"] == 1 else "no"
        # BIG-bench targets read "Yes. <supporting facts>"; the facts are the rationale.
        target = row.get("target")
        rationale = target.partition(". ")[2].strip() if isinstance(target, str) else ""
    else:
        question = _text(row, "question")
        raw = row.get("answer")
        if not isinstance(raw, bool):
            raise RowError("answer", f"expected true or false, got {raw!r}")
        answer = "yes" if raw else "no"
        facts = row.get("facts")
        rationale = " ".join(facts) if isinstance(facts, list) and _all_str(facts) else ""
    return Example(_row_id(row, ("qid", "id"), fallback_id), question, answer, "yes_no", dataset,
                   rationale=rationale or None)


def parse_proofwriter(row: Mapping[str, Any], dataset: str, fallback_id: str) -> Example:
    """ProofWriter: does the statement follow from the theory? True / False / Unknown.

    The question shown is the theory, a blank line, then the statement; difficulty is the proof
    depth QDep where the row has it.
    """
    theory = _text(row, ("theory", "context"))
    statement = _text(row, "question")
    raw = row.get("answer")
    answer = str(raw).strip().capitalize() if isinstance(raw, (str, bool)) else None
    if answer not in ("True", "False", "Unknown"):
        raise RowError("answer", f"expected True, False or Unknown, got {raw!r}")
    depth = row.get("QDep")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)):
        raise RowError("QDep", f"expected an integer proof depth, got {depth!r}")
    return Example(_row_id(row, ("id",), fallback_id), f"{theory}\n\n{statement}", answer,
                   "true_false_unknown", dataset, difficulty=depth)


def parse_champ(row: Mapping[str, Any], dataset: str, fallback_id: str) -> Example:
    """CHAMP competition problems; golds are free-form (some are sentences, not expressions)."""
    return Example(_row_id(row, ("identifier",), fallback_id), _text(row, "_text"),
                   _text(row, "_answer"), "math", dataset)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}, or `\\boxed 5`) in `text`, else None.

    Braces are matched by depth, so nested groups such as \\boxed{\\frac{1}{2}} come out whole.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:].removeprefix("\\boxed").removeprefix("\\fbox")
    if rest.startswith(" "):  # "\boxed 5$": the argument runs to the next space or dollar sign
        return re.split(r"[\s$]", rest.lstrip(), maxsplit=1)[0] or None
    if not rest.startswith("{"):
        return None
    depth = 0
    for position, char in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return rest[1:position].strip() or None
    return None


_CALCULATOR = re.compile(r"<<[^>]*>>")


def _choice_layout(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    """(question, choice texts, index of the gold choice) from any supported choice layout."""
    if "Question" in row:  # MMLU-CF: one column per letter
        letters = [letter for letter in LETTERS if letter in row]
        choices = [_text(row, letter) for letter in letters]
        return _text(row, "Question"), choices, _label_index(row, "Answer", letters)
    question, choices = row.get("question"), row.get("choices")
    if isinstance(question, Mapping):  # ARC / CommonsenseQA original: choices inside the question
        items = question.get("choices")
        if not (isinstance(items, list) and all(isinstance(item, Mapping) for item in items)):
            raise RowError("question.choices", "expected a list of {'text', 'label'} objects")
        texts = [_text(item, "text", prefix="question.choices.") for item in items]
        labels = [_text(item, "label", prefix="question.choices.") for item in items]
        stem = _text(question, "stem", prefix="question.")
        return stem, _checked_choices(texts, labels), _label_index(row, "answerKey", labels)
    if isinstance(choices, Mapping):  # HF / TFDS: parallel lists
        texts, labels = choices.get("text"), choices.get("label")
        if not (_is_str_list(texts) and _is_str_list(labels) and len(texts) == len(labels)):
            raise RowError("choices", "expected {'text': [str], 'label': [str]} of equal length")
        return _text(row, "question"), _checked_choices(texts, labels), _label_index(row, "answerKey", labels)
    if _is_str_list(choices):  # MMLU: a list of texts and the gold's index (or letter)
        letters = list(LETTERS[:len(choices)])
        raw = row.get("answer")
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 0 <= raw < len(choices):
                raise RowError("answer", f"index {raw} is outside the {len(choices)} choices")
            return _text(row, "question"), _checked_choices(choices, letters), raw
        gold = _label_index(row, "answer", letters)
        return _text(row, "question"), _checked_choices(choices, letters), gold
    raise RowError("choices", "missing or not in a known layout (a {'text': [], 'label': []} "
                   "mapping, a list of texts, question.choices, or A/B/C/D columns)")


def _checked_choices(texts: Sequence[str], labels: Sequence[str]) -> list[str]:
    if len(texts) < 2 or len(texts) > len(LETTERS):
        raise RowError("choices", f"expected 2 to {len(LETTERS)} choices, got {len(texts)}")
    if len(set(labels)) != len(labels):
        raise RowError("choices", f"labels repeat: {list(labels)}")
    return list(texts)


def _label_index(row: Mapping[str, Any], field: str, labels: Sequence[str]) -> int:
    key = row.get(field)
    if not isinstance(key, str) or key.strip() not in labels:
        raise RowError(field, f"expected one of the choice labels {list(labels)}, got {key!r}")
    return list(labels).index(key.strip())


def _math_level(level: Any) -> int | None:
    """MATH writes "Level 3" (and "Level ?" for a few unrated problems); MATH-500 writes 3."""
    if level is None or level == "Level ?":
        return None
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str) and re.fullmatch(r"Level \d+", level.strip()):
        return int(level.split()[1])
    raise RowError("level", f"expected 'Level N' or an integer, got {level!r}")


def _first(row: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str, Any]:
    """(name, value) of the first of `names` present in `row`."""
    for name in names:
        if name in row:
            return name, row[name]
    raise RowError("|".join(names), f"missing (the row has fields {sorted(row)})")


def _text(row: Mapping[str, Any], names: str | tuple[str, ...], prefix: str = "") -> str:
    """A required non-empty string field; `names` lists accepted spellings, first found wins."""
    try:
        name, value = _first(row, (names,) if isinstance(names, str) else names)
    except RowError as err:
        raise RowError(prefix + err.field, err.reason) from None
    if not isinstance(value, str):
        raise RowError(prefix + name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(prefix + name, "is empty")
    return value.strip()


def _row_id(row: Mapping[str, Any], names: tuple[str, ...], fallback_id: str) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return fallback_id


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _all_str(items: list[Any]) -> bool:
    return all(isinstance(item, str) for item in items)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and _all_str(value)
