"""The one normalised example type every dataset loader produces."""

from __future__ import annotations

import dataclasses
from typing import Literal

AnswerType = Literal["numeric", "math", "choice", "yes_no", "true_false_unknown"]
ANSWER_TYPES: tuple[str, ...] = ("numeric", "math", "choice", "yes_no", "true_false_unknown")


@dataclasses.dataclass(frozen=True)
class Example:
    """One question with its gold answer, whatever dataset it came from.

    Attributes:
      id: stable identifier, unique within `dataset` (used for deterministic splits).
      question: the question text as shown to the model (choices not included).
      answer: the gold answer in canonical form: a number for GSM8K ("42"), a LaTeX expression
        for MATH/AIME, a choice letter for multiple choice ("B"), "yes"/"no", "True"/"False"/"Unknown".
      answer_type: which grader compares a model answer with `answer`.
      dataset: the dataset's name ("gsm8k", "math", "aime", "arc_easy", "toy", ...).
      choices: option texts for multiple choice, in letter order (A, B, ...); empty otherwise.
      difficulty: the source's difficulty level where it has one (MATH level 1-5, toy operand
        count), else None.
      rationale: a reference reasoning chain where the dataset ships one (GSM8K solutions, the
        toy world's thoughts), else None.
    """

    id: str
    question: str
    answer: str
    answer_type: AnswerType
    dataset: str
    choices: tuple[str, ...] = ()
    difficulty: int | None = None
    rationale: str | None = None

    def __post_init__(self):
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"Example {self.id!r}: answer_type {self.answer_type!r} is not one of {ANSWER_TYPES}")
        if self.answer_type == "choice" and not self.choices:
            raise ValueError(f"Example {self.id!r}: a multiple-choice example needs its choices")
