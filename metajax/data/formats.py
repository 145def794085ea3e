"""The text formats metajax reads and writes, defined once; prompts and graders both read them.

RaM's base-model format (arXiv 2410.05563, PAPERS.md section 1):

    "[User] {question}\\n" ["<thought> {thought} </thought>\\n"] "[Assistant] {answer}\\n"

and ROI-Reasoning's exam answers (PAPERS.md section 2): a level tag, then the solution, or the skip
answer. The writers (`metajax.data.prompts`, `metajax.data.toy`) format these strings; the readers
(`metajax.data.graders`, evaluation, sampling stops) search for them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

USER_MARKER = "[User]"
USER_BLOCK = USER_MARKER + " {}\n"
THOUGHT_OPEN, THOUGHT_CLOSE = "<thought>", "</thought>"
THOUGHT_BLOCK = THOUGHT_OPEN + " {} " + THOUGHT_CLOSE + "\n"
ANSWER_MARKER = "[Assistant]"
ANSWER_BLOCK = ANSWER_MARKER + " {}\n"
# How a RaM-format completion is opened: "direct" forces the answer marker, "cot" forces a thought
# open, "policy" leaves the choice to the model. Forced tokens count as generated.
FORCED_OPENINGS = {"direct": ANSWER_MARKER, "cot": THOUGHT_OPEN, "policy": ""}

LEVEL_TAG = "<predicted_level>Level-{}</predicted_level>"
SKIP_ANSWER = "\\boxed{NA}"
# ROI-Reasoning level upper bounds in tokens (PAPERS.md section 2): Level-k covers up to
# `ROI_LEVEL_BOUNDS[k]` tokens and Level-`len(ROI_LEVEL_BOUNDS)` means skip. The toy world scales
# them down.
ROI_LEVEL_BOUNDS: tuple[int, ...] = (256, 512, 1024)
# The lenient readers of LEVEL_TAG (any case, spaces inside the tag, "Level-2", "Level_2", "Level 2"
# or "Level2") and of SKIP_ANSWER's body, the content of the box ("NA" or "N/A", any case).
LEVEL_TAG_PATTERN = re.compile(
    r"<predicted_level>\s{0,8}Level[-_ ]?(\d{1,2})\s{0,8}</predicted_level>", re.IGNORECASE)
SKIP_PATTERN = re.compile(r"\s*N/?A\s*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ExamFormat:
    """How a budgeted exam is written: the prompt style that states it, the level tag that opens
    each answer, the skip's solution, and what separates answers.

    Attributes:
      name: "roi" (ROI-Reasoning's own format, for real models) or "toy" (the toy world's compact one).
      prompt_style: the `metajax.data.prompts` style that renders the exam prompt.
      level_tag: the tag, with `{level}` for the level and optionally `{label}` for the question's
        label, `{question}` for the question restated and `{budget}` for the exam's stated budget.
      level_pattern: reads a tag; group 1 is the level.
      skip_solution: what follows the skip level's tag.
      separator: text between consecutive answers.
      tag_starts: how a tag can start: where a question's answer ends when questions are sat one
        at a time.
      direct_opening: what a forced direct answer starts with after its tag.
      think_opening: what a forced worked solution starts with after its tag.
      labels: the question labels, one per position (first question first); empty: questions are
        known by their position alone.
    """

    name: str
    prompt_style: str
    level_tag: str
    level_pattern: re.Pattern
    skip_solution: str
    separator: str
    tag_starts: tuple[str, ...]
    direct_opening: str
    think_opening: str
    labels: str = ""

    def label(self, position: int) -> str:
        """The label of the question at `position` (1-based); "" where the format has none."""
        if not self.labels:
            return ""
        if not 1 <= position <= len(self.labels):
            raise ValueError(f"the {self.name} exam format labels questions 1..{len(self.labels)} "
                             f"({self.labels}); question {position} has no label: sit at most "
                             f"{len(self.labels)} questions per exam")
        return self.labels[position - 1]

    def tag(self, level: int | str, position: int = 1, question: str = "", budget: int | None = None) -> str:
        """The level tag of the question at `position` (1-based), whose text is `question`, in an
        exam that states `budget` tokens."""
        if budget is None and "{budget}" in self.level_tag:
            raise ValueError(f"the {self.name} exam format's level tag restates the exam's budget; pass budget=")
        return self.level_tag.format(level=level, label=self.label(position), question=question, budget=budget)

    def answer(self, level: int, solution: str | None, skip_level: int, position: int = 1, question: str = "",
               budget: int | None = None) -> str:
        """One question's answer: the level tag, then the solution (`skip_solution` at the skip
        level, where `solution` must be None)."""
        if not 0 <= level <= skip_level:
            raise ValueError(f"level {level} is outside 0..{skip_level} (Level-{skip_level} means skip)")
        if (level == skip_level) != (solution is None):
            raise ValueError(f"give a solution for a solved level and none for the skip level "
                             f"Level-{skip_level}; got level {level} with solution {solution!r}")
        tag = self.tag(level, position, question, budget)
        return f"{tag} {self.skip_solution if solution is None else solution}"

    def response(self, answers: Sequence[tuple[int, str | None]], skip_level: int,
                 questions: Sequence[str] = (), budget: int | None = None) -> str:
        """A whole exam's response, one `answer` per (level, solution) in question order, restating
        `questions` (their texts) and `budget` where the tag holds them."""
        texts = list(questions) or [""] * len(answers)
        if len(texts) != len(answers):
            raise ValueError(f"response: {len(answers)} answers but {len(texts)} question texts")
        return self.separator.join(self.answer(level, solution, skip_level, j, text, budget)
                                   for j, ((level, solution), text) in enumerate(zip(answers, texts), 1))


ROI_EXAM = ExamFormat("roi", "roi_exam", LEVEL_TAG.replace("{}", "{level}"), LEVEL_TAG_PATTERN, SKIP_ANSWER, separator="\n\n",
                      tag_starts=("<predicted_level>",), direct_opening=" \\boxed{",
                      think_opening=" Let's think step by step.")
# The toy's question labels: one character each that no other toy text uses, so a label is a unique
# key in an exam's context (see TOY_EXAM).
TOY_QUESTION_LABELS = "PQRSTVWXYZ"
# One token per character in the toy. The prompt lists each question right after its label
# ("P3+4=? Q1+2+3=?"), and each answer opens by restating its question the same way, then
# announces its level ("Q1+2+3=? <L1>"); the solution is a RaM completion ending in its own
# newline. A four-layer model finds question j by the simplest induction there is: the label it
# just wrote occurs once in the prompt, and the token after it there starts the copy; then it thinks
# from the copy beside it. Without that, it copied the wrong operands of every question but the
# first: from a tag "<L1> #2" eleven tokens before the thought (sessions 6-12), and from "#2 "
# before the restatement, whose lookup needs two tokens of context (a 1326-step pretraining left
# the second question copied right 2% of the time). The tag then restates the exam's budget
# ("Q1+2+3=? 150 <L1>"), so the level the model announces next sits four tokens from the budget's
# digits: with the budget only in the prompt's header, MFT on exams at two budgets (and at eight)
# left the policy skipping alike at both (README). The restatements are part of the tag: they count
# against the budget but not in the solution's level.
TOY_EXAM = ExamFormat("toy", "toy_exam", "{label}{question} {budget} <L{level}>",
                      re.compile(rf"(?:[{TOY_QUESTION_LABELS}][^{TOY_QUESTION_LABELS}<\n]{{0,40}})?<L(\d)>"),
                      ANSWER_BLOCK.format("NA"), separator="", tag_starts=tuple(TOY_QUESTION_LABELS),
                      direct_opening=" " + ANSWER_MARKER, think_opening=" " + THOUGHT_OPEN,
                      labels=TOY_QUESTION_LABELS)
EXAM_FORMATS: dict[str, ExamFormat] = {fmt.name: fmt for fmt in (ROI_EXAM, TOY_EXAM)}
