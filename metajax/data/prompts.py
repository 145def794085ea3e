"""Prompt templates: the blocks every prompt is made of, and the styles that fill them.

Every template renders the same blocks (RaM, arXiv 2410.05563). In the base-model text format:

    BOS "[User] {question}\n" ["<thought> {thought} </thought>\n"] "[Assistant] {answer}\n"

with few-shot examples rendered as earlier blocks of the same kind (the markers are
`metajax.data.formats`'). For instruct models the blocks go inside the tokenizer's chat template:
user turn = question, assistant turn = optional thought block followed by the answer. Styles differ
only in what they put into those blocks (which few-shot examples, a hint, a trigger sentence, a
whole exam); `PROMPT_STYLES` maps a style name to its builder. Their span-exact tokenisation is
`metajax.data.token_spans`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from metajax.data.example import Example
from metajax.data.formats import (ANSWER_MARKER, LEVEL_TAG, ROI_LEVEL_BOUNDS, SKIP_ANSWER, THOUGHT_BLOCK,
                                  TOY_EXAM, USER_BLOCK)

STAR_HINT = "\n(The correct answer is {answer})"
# Wang et al. 2023, "Plan-and-Solve Prompting", the PS trigger.
PLAN_AND_SOLVE_TRIGGER = (
    "Let's first understand the problem and devise a plan to solve the problem. "
    "Then, let's carry out the plan and solve the problem step by step.")
# Zhou et al. 2023, "Least-to-Most Prompting", in its zero-shot form: decompose, then solve in order.
LEAST_TO_MOST_TRIGGER = (
    "Let's break this problem down into simpler subproblems. First list the subproblems, "
    "then solve them one at a time, using the answers to earlier subproblems in later ones.")
BOXED_INSTRUCTION = "Put the final answer in \\boxed{}."


class UnknownPromptStyle(ValueError):
    """A prompt style name that is not in `PROMPT_STYLES`."""


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How prompts are rendered.

    Attributes:
      style: a key of `PROMPT_STYLES` ("direct", "cot", "ram", "star_hint", "roi_exam",
        "plan_and_solve", "least_to_most").
      chat: render through the tokenizer's chat template (instruct models) instead of the
        base-model text format (RaM: the same blocks inside the chat for instruct models).
      system_prompt: optional system turn for chat rendering; ignored by the text format.
      hint_in_fewshot: STaR rationalisation also appends the hint to the few-shot questions, as the
        RaM code (`policy_model.build_few_shot`) does, so the shots show how a hint is used.
      level_bounds: ROI-Reasoning level upper bounds in tokens: Level-k covers up to
        `level_bounds[k]` tokens and Level-`len(level_bounds)` means skip (paper: 256, 512, 1024).
      exam_budget: ROI-Reasoning shared token budget stated in the exam prompt (paper: 512, 1024).
      exam_trigger: a prompting method's sentence added to the roi_exam instructions (the
        Plan-and-Solve or Least-to-Most baseline), or None.
    """

    style: str = "ram"
    chat: bool = False
    system_prompt: str | None = None
    hint_in_fewshot: bool = True
    level_bounds: tuple[int, ...] = ROI_LEVEL_BOUNDS
    exam_budget: int = 512
    exam_trigger: str | None = None

    def __post_init__(self):
        prompt_style(self.style)
        bounds = self.level_bounds
        if not bounds or any(b <= 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(
                f"PromptConfig.level_bounds {bounds!r} must be positive and strictly increasing")
        if self.exam_budget <= 0:
            raise ValueError(f"PromptConfig.exam_budget must be positive, got {self.exam_budget}")


@dataclasses.dataclass(frozen=True)
class Turn:
    """One block: a user question and, for a completed turn, the optional thought and the answer.

    `answer is None` marks the open turn the model is asked to complete. A thought of None or ""
    renders no thought block (the model answered directly).
    """

    user: str
    thought: str | None = None
    answer: str | None = None


@dataclasses.dataclass(frozen=True)
class Dialogue:
    """What a style produces: the blocks in order, the last one open.

    Attributes:
      turns: few-shot turns (completed) followed by the question turn (answer None).
      force_answer: end the text-format prompt with the answer marker so the model answers directly
        (direct few-shot, as the RaM code's "Answer:" suffix); chat rendering has no marker to force.
    """

    turns: tuple[Turn, ...]
    force_answer: bool = False


Question = Example | str
# (config, questions, few-shot examples) -> the blocks of one prompt.
StyleBuilder = Callable[[PromptConfig, tuple[Question, ...], tuple[Example, ...]], Dialogue]


def render_prompt(cfg: PromptConfig, questions: Question | Sequence[Question],
                  fewshot: Sequence[Example] = (), *, tokenizer: Any = None) -> str:
    """Renders the generation prompt for `questions` in `cfg.style` (text without BOS, or chat text).

    A str question is used verbatim as the user block; an `Example` renders its choices too.
    Chat rendering (`cfg.chat`) needs a transformers tokenizer with a chat template.
    """
    dialogue = build_dialogue(cfg, questions, fewshot)
    if cfg.chat:
        return render_chat(_require_chat(tokenizer), dialogue, system_prompt=cfg.system_prompt)
    return render_text(dialogue)


def build_dialogue(cfg: PromptConfig, questions: Question | Sequence[Question],
                   fewshot: Sequence[Example] = ()) -> Dialogue:
    """The blocks of `cfg.style` for `questions` (one question, or several for an exam)."""
    if isinstance(questions, (Example, str)):
        questions = (questions,)
    return prompt_style(cfg.style)(cfg, tuple(questions), tuple(fewshot))


def prompt_style(name: str) -> StyleBuilder:
    """The dialogue builder registered under `name`."""
    try:
        return PROMPT_STYLES[name]
    except KeyError:
        raise UnknownPromptStyle(
            f"unknown prompt style {name!r}; choose one of {sorted(PROMPT_STYLES)}") from None


def render_text(dialogue: Dialogue) -> str:
    """The base-model text format of `dialogue` (no BOS: the encoders of
    `metajax.data.token_spans` add the tokenizer's own)."""
    text = "".join(_text_block(turn) for turn in dialogue.turns)
    return text + ANSWER_MARKER if dialogue.force_answer else text


def render_chat(tokenizer: Any, dialogue: Dialogue, *, system_prompt: str | None = None) -> str:
    """`dialogue` through `tokenizer.apply_chat_template`; an open last turn adds the generation
    prompt, a completed one renders the assistant message."""
    hf = _require_chat(tokenizer)
    open_turn = dialogue.turns[-1].answer is None
    return hf.apply_chat_template(_chat_messages(dialogue.turns, system_prompt), tokenize=False,
                                  add_generation_prompt=open_turn)


def question_block(question: Question, hint: str | None = None) -> str:
    """The user-block text of one question: the question, its lettered choices ("A. ...") and the
    STaR hint when `hint` (the gold answer) is given."""
    if isinstance(question, str):
        text = question
    else:
        choices = "".join(f"\n{chr(ord('A') + i)}. {c}" for i, c in enumerate(question.choices))
        text = question.question + choices
    return text if hint is None else text + STAR_HINT.format(answer=hint)


# ---------------------------------------------------------------------------------------------
# Styles.


def _direct(cfg: PromptConfig, questions: tuple[Question, ...],
            fewshot: tuple[Example, ...]) -> Dialogue:
    shots = tuple(Turn(question_block(ex), None, ex.answer) for ex in fewshot)
    return Dialogue(shots + (Turn(question_block(_single(questions, cfg))),), force_answer=True)


def _cot(cfg: PromptConfig, questions: tuple[Question, ...],
         fewshot: tuple[Example, ...]) -> Dialogue:
    missing = [ex.id for ex in fewshot if not ex.rationale]
    if missing:
        raise ValueError(f"CoT few-shot examples need a rationale; these have none: {missing}")
    return _ram(cfg, questions, fewshot)


def _ram(cfg: PromptConfig, questions: tuple[Question, ...],
         fewshot: tuple[Example, ...]) -> Dialogue:
    shots = shot_turns(fewshot, hinted=False)
    return Dialogue(shots + (Turn(question_block(_single(questions, cfg))),))


def _star_hint(cfg: PromptConfig, questions: tuple[Question, ...],
               fewshot: tuple[Example, ...]) -> Dialogue:
    question = _single(questions, cfg)
    if not isinstance(question, Example):
        raise ValueError("the star_hint style needs an Example (its gold answer is the hint), "
                         "not a bare question string")
    shots = shot_turns(fewshot, hinted=cfg.hint_in_fewshot)
    return Dialogue(shots + (Turn(question_block(question, hint=question.answer)),))


def _with_trigger(trigger: str, cfg: PromptConfig, questions: tuple[Question, ...],
                  fewshot: tuple[Example, ...]) -> Dialogue:
    user = f"{question_block(_single(questions, cfg))}\n{trigger} {BOXED_INSTRUCTION}"
    return Dialogue(shot_turns(fewshot, hinted=False) + (Turn(user),))


def _roi_exam(cfg: PromptConfig, questions: tuple[Question, ...],
              fewshot: tuple[Example, ...]) -> Dialogue:
    if fewshot:
        raise ValueError("the roi_exam style takes no few-shot examples: the exam is the prompt")
    if not questions:
        raise ValueError("an exam needs at least one question")
    levels = ", ".join(f"Level-{k} (up to {b} tokens)" for k, b in enumerate(cfg.level_bounds))
    skip = LEVEL_TAG.format(len(cfg.level_bounds))
    header = (
        f"Answer the {len(questions)} questions below in order. All your answers share a budget of "
        f"{cfg.exam_budget} tokens; generation stops when the budget is spent.\n"
        f"Start each answer with your predicted cost, {LEVEL_TAG.format('k')}: {levels}. Then solve "
        f"the question and put its final answer in \\boxed{{}}. To skip a question, answer "
        f"{skip} {SKIP_ANSWER}." + (f" {cfg.exam_trigger}" if cfg.exam_trigger else ""))
    body = "".join(f"\n\nQuestion {i}: {question_block(q)}" for i, q in enumerate(questions, 1))
    return Dialogue((Turn(header + body),), force_answer=True)


def _toy_exam(cfg: PromptConfig, questions: tuple[Question, ...],
              fewshot: tuple[Example, ...]) -> Dialogue:
    """The toy world's compact exam: one user block stating the budget, then the numbered questions."""
    if fewshot:
        raise ValueError("the toy_exam style takes no few-shot examples: the exam is the prompt")
    if not questions:
        raise ValueError("an exam needs at least one question")
    listed = " ".join(TOY_EXAM.label(j) + question_block(q) for j, q in enumerate(questions, 1))
    return Dialogue((Turn(f"Exam, {cfg.exam_budget} tokens: {listed}"),))


PROMPT_STYLES: dict[str, StyleBuilder] = {
    "direct": _direct,
    "cot": _cot,
    "ram": _ram,
    "star_hint": _star_hint,
    "roi_exam": _roi_exam,
    "toy_exam": _toy_exam,
    "plan_and_solve": functools.partial(_with_trigger, PLAN_AND_SOLVE_TRIGGER),
    "least_to_most": functools.partial(_with_trigger, LEAST_TO_MOST_TRIGGER),
}


def _single(questions: tuple[Question, ...], cfg: PromptConfig) -> Question:
    if len(questions) != 1:
        raise ValueError(f"the {cfg.style} style renders one question, got {len(questions)}; "
                         f"use an exam style (roi_exam, toy_exam) for several")
    return questions[0]


def shot_turns(fewshot: Sequence[Example], hinted: bool) -> tuple[Turn, ...]:
    """The completed turns of few-shot examples: question (with the STaR hint of its gold answer
    when `hinted`), rationale as the thought, and answer."""
    return tuple(Turn(question_block(ex, hint=ex.answer if hinted else None), ex.rationale, ex.answer)
                 for ex in fewshot)


# ---------------------------------------------------------------------------------------------
# Rendering helpers.


def thought_block(thought: str | None) -> str:
    """The thought block of `thought` ("<thought> ... </thought>\\n"); "" for no thought (None or
    "": the model answered directly)."""
    return THOUGHT_BLOCK.format(thought) if thought else ""


def _text_block(turn: Turn) -> str:
    text = USER_BLOCK.format(turn.user) + thought_block(turn.thought)
    return text if turn.answer is None else text + f"{ANSWER_MARKER} {turn.answer}\n"


def _chat_messages(turns: Sequence[Turn], system_prompt: str | None) -> list[dict[str, str]]:
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    for turn in turns:
        messages.append({"role": "user", "content": turn.user})
        if turn.answer is not None:
            messages.append({"role": "assistant",
                             "content": thought_block(turn.thought) + turn.answer})
    return messages


def _require_chat(tokenizer: Any) -> Any:
    """The transformers tokenizer to render chat with: a `metajax.data.token_spans.PromptTokenizer`
    holds it in `chat_tokenizer` (None for a bare `tokenizers.Tokenizer`); a transformers tokenizer
    has no such attribute and is used as is."""
    hf = getattr(tokenizer, "chat_tokenizer", tokenizer)
    if hf is None or not getattr(hf, "chat_template", None):
        raise ValueError("chat rendering needs a transformers tokenizer with a chat_template; "
                         "pass one, or set PromptConfig.chat=False for the base-model text format")
    return hf
