"""Prompt templates and span-exact tokenisation.

Every template renders the same blocks (RaM, arXiv 2410.05563). In the base-model text format:

    BOS "[User] {question}\n" ["<thought> {thought} </thought>\n"] "[Assistant] {answer}\n"

with few-shot examples rendered as earlier blocks of the same kind. For instruct models the blocks go
inside the tokenizer's chat template: user turn = question, assistant turn = optional thought block
followed by the answer. Styles differ only in what they put into those blocks (which few-shot
examples, a hint, a trigger sentence, a whole exam); `PROMPT_STYLES` maps a style name to its
builder.

Spans. Training masks and the VOC reward need the exact tokens of the prompt x, the thought block z
and the answer y. A piece tokenised alone can differ from the same piece in context (BPE merges
across the seam, leading-space handling), so we never tokenise pieces separately: the whole text is
tokenised once, and the character boundaries of the pieces are mapped to token boundaries through
the tokenizer's offsets. Every seam is placed where byte-level BPE pre-tokenizers split anyway
(after a newline, before the space that starts the answer), and a seam that still falls inside a
token raises `TokenBoundaryError` instead of silently shifting a mask. So
`prompt_ids + thought_ids + answer_ids == encode(full_text)` holds by construction.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import tokenizers

from metajax.data.example import Example

USER_MARKER = "[User]"
USER_BLOCK = USER_MARKER + " {}\n"
THOUGHT_OPEN, THOUGHT_CLOSE = "<thought>", "</thought>"
THOUGHT_BLOCK = THOUGHT_OPEN + " {} " + THOUGHT_CLOSE + "\n"
ANSWER_MARKER = "[Assistant]"
# How a RaM-format completion is opened: "direct" forces the answer marker, "cot" forces a thought
# open, "policy" leaves the choice to the model. Forced tokens count as generated.
FORCED_OPENINGS = {"direct": ANSWER_MARKER, "cot": THOUGHT_OPEN, "policy": ""}
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
LEVEL_TAG = "<predicted_level>Level-{}</predicted_level>"
SKIP_ANSWER = "\\boxed{NA}"


class UnknownPromptStyle(ValueError):
    """A prompt style name that is not in `PROMPT_STYLES`."""


class TokenBoundaryError(ValueError):
    """A piece boundary falls inside a token, so the piece has no exact token span."""


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
    """

    style: str = "ram"
    chat: bool = False
    system_prompt: str | None = None
    hint_in_fewshot: bool = True
    level_bounds: tuple[int, ...] = (256, 512, 1024)
    exam_budget: int = 512

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


def encode_prompt(tokenizer: Any, cfg: PromptConfig, questions: Question | Sequence[Question],
                  fewshot: Sequence[Example] = ()) -> list[int]:
    """Token ids of the generation prompt: `int[prompt_len]`, BOS included where the model uses one.

    The text format is preceded by the tokenizer's own leading special tokens (BOS); chat text is
    encoded as is, because chat templates write their BOS themselves.
    """
    tok = as_prompt_tokenizer(tokenizer)
    text = render_prompt(cfg, questions, fewshot, tokenizer=tok)
    ids, _ = tok.encode_offsets(text)
    return ids if cfg.chat else list(tok.prefix_ids) + ids


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
    """The base-model text format of `dialogue` (no BOS: `encode_*` adds the tokenizer's own)."""
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


def roi_answer(cfg: PromptConfig, level: int, solution: str | None = None) -> str:
    """One question's exam answer: the level tag, then the solution; the skip level answers NA.

    Args:
      level: 0 .. len(cfg.level_bounds); the last value is the skip level.
      solution: the worked solution ending in \\boxed{...}; must be None for the skip level.
    """
    skip = len(cfg.level_bounds)
    if not 0 <= level <= skip:
        raise ValueError(f"level {level} is outside 0..{skip} (Level-{skip} means skip)")
    if (level == skip) != (solution is None):
        raise ValueError(f"give a solution for a solved level and none for the skip level "
                         f"Level-{skip}; got level {level} with solution {solution!r}")
    return f"{LEVEL_TAG.format(level)} {SKIP_ANSWER if solution is None else solution}"


def exam_response(cfg: PromptConfig, answers: Sequence[tuple[int, str | None]]) -> str:
    """A whole exam's response, one `roi_answer` per (level, solution) in question order; answers
    are separated by a blank line, and each starts with its level tag, which delimits it."""
    return "\n\n".join(roi_answer(cfg, level, solution) for level, solution in answers)


# ---------------------------------------------------------------------------------------------
# Span-exact tokenisation.


@dataclasses.dataclass(frozen=True)
class RamTokens:
    """One RaM sequence x + z + y in tokens, with the spans of its pieces.

    Attributes:
      tokens: int[seq], the whole sequence (BOS included in the text format).
      prompt_len: tokens[:prompt_len] is the prompt x (BOS, few-shot blocks, the user block).
      thought_span: (start, end) of the thought block "<thought> ... </thought>\\n", start ==
        prompt_len; empty (prompt_len, prompt_len) without a thought. Its length is l(z) of the cost.
      answer_span: (start, end) of the answer block, end == len(tokens): "[Assistant] {answer}\\n" in
        the text format, the answer and the template's end of turn in chat. Loss mask = thought and
        answer spans.
      target_span: (start, end) of the scored answer y inside the answer block: " {answer}\\n" without
        the "[Assistant]" marker (the RaM code skips the marker tokens, so p(y|x) is not charged
        with the decision to skip thinking); in chat it equals answer_span. The terminating newline
        is kept so p(y|.) is the probability of the complete answer ("4" is not a prefix of "42"),
        and because Llama-3/Qwen pre-tokenizers merge punctuation with a following newline.
    """

    tokens: list[int]
    prompt_len: int
    thought_span: tuple[int, int]
    answer_span: tuple[int, int]
    target_span: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ScoredSequence:
    """A sequence to score: tokens int[seq] and target_mask bool[seq] (True on the answer y)."""

    tokens: list[int]
    target_mask: list[bool]


def encode_ram(tokenizer: Any, question: Question, thought: str | None, answer: str, *,
               fewshot: Sequence[Example] = (), cfg: PromptConfig | None = None) -> RamTokens:
    """Tokenises x + z + y once and returns the exact token spans of its pieces.

    Args:
      tokenizer: a `tokenizers.Tokenizer`, a transformers fast tokenizer or a `PromptTokenizer`
        (wrap once with `as_prompt_tokenizer` when calling in a loop).
      question: the question x (no hint: rationalised rows are trained without it).
      thought: the thought text, or None / "" for a direct answer.
      answer: the answer text.
      fewshot: examples rendered as earlier blocks (rationale = thought).
      cfg: `chat` and `system_prompt` choose the rendering (default: the text format); the blocks
        are always RaM's, whatever `cfg.style`.
    Raises:
      TokenBoundaryError: the tokenizer merges text across a piece boundary.
    """
    tok = as_prompt_tokenizer(tokenizer)
    cfg = PromptConfig() if cfg is None else cfg
    pieces = _ram_text_pieces(tok, question, thought, answer, tuple(fewshot), cfg)
    text = "".join(pieces)
    ids, offsets = tok.encode_offsets(text)
    seams = list(itertools.accumulate(len(piece) for piece in pieces[:-1]))
    prompt_end, thought_end, marker_end = _token_cuts(
        text, ids, offsets, seams, ("prompt", "thought block", "answer marker", "answer"), tok)
    prefix = () if cfg.chat else tok.prefix_ids
    shift = len(prefix)
    return RamTokens(
        tokens=list(prefix) + ids,
        prompt_len=shift + prompt_end,
        thought_span=(shift + prompt_end, shift + thought_end),
        answer_span=(shift + thought_end, shift + len(ids)),
        target_span=(shift + marker_end, shift + len(ids)),
    )


def ram_pieces(tokenizer: Any, question: Question, thought: str | None, answer: str,
               fewshot: Sequence[Example] = (), *, cfg: PromptConfig | None = None
               ) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, thought_ids, answer_ids) with `prompt_ids + thought_ids + answer_ids` equal to
    the tokens of the whole text; thought_ids is empty without a thought, and answer_ids is the
    whole answer block, "[Assistant]" marker included (see `RamTokens.target_span`)."""
    enc = encode_ram(tokenizer, question, thought, answer, fewshot=fewshot, cfg=cfg)
    (t0, t1), (a0, a1) = enc.thought_span, enc.answer_span
    return enc.tokens[:enc.prompt_len], enc.tokens[t0:t1], enc.tokens[a0:a1]


def ram_scoring_pair(tokenizer: Any, question: Question, thought: str | None, answer: str, *,
                     fewshot: Sequence[Example] = (), cfg: PromptConfig | None = None
                     ) -> tuple[ScoredSequence, ScoredSequence]:
    """The two sequences of the VOC utility for one chain: (x + z + y, x + y), each masked on y.

    `log p(y|x,z)` and `log p(y|x)` are the sums of the target tokens' log-probs. The prompt and
    target tokens are checked to be identical in both, so the two scores compare the same y.
    """
    tok = as_prompt_tokenizer(tokenizer)
    with_thought = encode_ram(tok, question, thought, answer, fewshot=fewshot, cfg=cfg)
    direct = encode_ram(tok, question, None, answer, fewshot=fewshot, cfg=cfg)
    same_prompt = with_thought.tokens[:with_thought.prompt_len] == direct.tokens[:direct.prompt_len]
    same_target = _target_ids(with_thought) == _target_ids(direct)
    for name, same in (("prompt", same_prompt), ("answer", same_target)):
        if not same:
            raise TokenBoundaryError(
                f"the {name} tokenises differently with and without the thought; the tokenizer "
                f"merges across the thought block's edges, so p(y|x,z) and p(y|x) would score "
                f"different token sequences")
    return _scored(with_thought), _scored(direct)


@dataclasses.dataclass(frozen=True, eq=False)
class PromptTokenizer:
    """A thin adapter over `tokenizers.Tokenizer` / transformers fast tokenizers.

    Attributes:
      offsets_backend: a private copy of the Rust tokenizer without its post-processor: the
        post-processor adds special tokens and can trim spaces out of offsets (ByteLevel
        `trim_offsets`), which would hide a token that straddles a piece boundary.
      prefix_ids: the special tokens the tokenizer puts before a sequence (BOS for Llama, none for
        Qwen); the text format starts with them.
      chat_tokenizer: the transformers tokenizer, for `apply_chat_template`; None for a bare
        `tokenizers.Tokenizer`.
    """

    offsets_backend: tokenizers.Tokenizer
    prefix_ids: tuple[int, ...]
    chat_tokenizer: Any = None

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids int[n] of `text` without added special tokens, and their character offsets."""
        enc = self.offsets_backend.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)

    def token_text(self, token_id: int) -> str:
        return self.offsets_backend.id_to_token(token_id)


def as_prompt_tokenizer(tokenizer: Any) -> PromptTokenizer:
    """Wraps a `tokenizers.Tokenizer` or a transformers fast tokenizer (returned as is if wrapped).

    Wrapping copies the Rust tokenizer once (tens of ms for a 128k vocabulary): wrap once, reuse.
    """
    if isinstance(tokenizer, PromptTokenizer):
        return tokenizer
    if isinstance(tokenizer, tokenizers.Tokenizer):
        backend, chat = tokenizer, None
    elif isinstance(getattr(tokenizer, "backend_tokenizer", None), tokenizers.Tokenizer):
        backend, chat = tokenizer.backend_tokenizer, tokenizer
    else:
        raise TypeError(
            f"expected a tokenizers.Tokenizer or a transformers fast tokenizer, got "
            f"{type(tokenizer).__name__}; load it with use_fast=True (a tokenizer.json is needed)")
    offsets_backend = tokenizers.Tokenizer.from_str(backend.to_str())
    offsets_backend.post_processor = None
    return PromptTokenizer(offsets_backend, _leading_special_ids(backend), chat)


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
    return Dialogue(_shots(fewshot, hinted=False) + (Turn(question_block(_single(questions, cfg))),))


def _star_hint(cfg: PromptConfig, questions: tuple[Question, ...],
               fewshot: tuple[Example, ...]) -> Dialogue:
    question = _single(questions, cfg)
    if not isinstance(question, Example):
        raise ValueError("the star_hint style needs an Example (its gold answer is the hint), "
                         "not a bare question string")
    shots = _shots(fewshot, hinted=cfg.hint_in_fewshot)
    return Dialogue(shots + (Turn(question_block(question, hint=question.answer)),))


def _with_trigger(trigger: str, cfg: PromptConfig, questions: tuple[Question, ...],
                  fewshot: tuple[Example, ...]) -> Dialogue:
    user = f"{question_block(_single(questions, cfg))}\n{trigger} {BOXED_INSTRUCTION}"
    return Dialogue(_shots(fewshot, hinted=False) + (Turn(user),))


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
        f"{skip} {SKIP_ANSWER}.")
    body = "".join(f"\n\nQuestion {i}: {question_block(q)}" for i, q in enumerate(questions, 1))
    return Dialogue((Turn(header + body),), force_answer=True)


PROMPT_STYLES: dict[str, StyleBuilder] = {
    "direct": _direct,
    "cot": _cot,
    "ram": _ram,
    "star_hint": _star_hint,
    "roi_exam": _roi_exam,
    "plan_and_solve": functools.partial(_with_trigger, PLAN_AND_SOLVE_TRIGGER),
    "least_to_most": functools.partial(_with_trigger, LEAST_TO_MOST_TRIGGER),
}


def _single(questions: tuple[Question, ...], cfg: PromptConfig) -> Question:
    if len(questions) != 1:
        raise ValueError(f"the {cfg.style} style renders one question, got {len(questions)}; "
                         f"use the roi_exam style for several")
    return questions[0]


def _shots(fewshot: tuple[Example, ...], hinted: bool) -> tuple[Turn, ...]:
    return tuple(Turn(question_block(ex, hint=ex.answer if hinted else None), ex.rationale, ex.answer)
                 for ex in fewshot)


# ---------------------------------------------------------------------------------------------
# Rendering and span helpers.


def _thought_block(thought: str | None) -> str:
    return THOUGHT_BLOCK.format(thought) if thought else ""


def _text_block(turn: Turn) -> str:
    text = USER_BLOCK.format(turn.user) + _thought_block(turn.thought)
    return text if turn.answer is None else text + f"{ANSWER_MARKER} {turn.answer}\n"


def _chat_messages(turns: Sequence[Turn], system_prompt: str | None) -> list[dict[str, str]]:
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    for turn in turns:
        messages.append({"role": "user", "content": turn.user})
        if turn.answer is not None:
            messages.append({"role": "assistant",
                             "content": _thought_block(turn.thought) + turn.answer})
    return messages


def _ram_text_pieces(tok: PromptTokenizer, question: Question, thought: str | None, answer: str,
                     fewshot: tuple[Example, ...], cfg: PromptConfig) -> tuple[str, str, str, str]:
    """(prompt, thought block, answer marker, scored answer) texts; their concatenation is the
    whole rendered sequence. The marker is empty in chat, where the role header plays its part."""
    shots, user = _shots(fewshot, hinted=False), question_block(question)
    thought_text = _thought_block(thought)
    if not cfg.chat:
        return render_text(Dialogue(shots + (Turn(user),))), thought_text, ANSWER_MARKER, f" {answer}\n"
    prompt = render_chat(tok, Dialogue(shots + (Turn(user),)), system_prompt=cfg.system_prompt)
    full = render_chat(tok, Dialogue(shots + (Turn(user, thought, answer),)),
                       system_prompt=cfg.system_prompt)
    if not full.startswith(prompt + thought_text + answer):
        raise ValueError(
            "the chat template does not render the assistant message as the generation prompt "
            "followed by the verbatim content (it may trim whitespace or add a reasoning preamble); "
            "strip the thought and answer, or use a template that keeps assistant content as is")
    return prompt, thought_text, "", full[len(prompt) + len(thought_text):]


def _token_cuts(text: str, ids: list[int], offsets: list[tuple[int, int]], seams: list[int],
                names: tuple[str, ...], tok: PromptTokenizer) -> list[int]:
    """Token index of each character seam: the number of tokens that end at or before it.

    A seam is exact when no token starts before it and ends after it; offsets are monotone, so the
    token right after the cut is the only one that can straddle."""
    cuts = []
    for i, seam in enumerate(seams):
        cut = sum(1 for _, end in offsets if end <= seam)
        if cut < len(ids) and offsets[cut][0] < seam:
            start, end = offsets[cut]
            raise TokenBoundaryError(
                f"the boundary between the {names[i]} and the {names[i + 1]} (character {seam}) "
                f"falls inside token {ids[cut]} {tok.token_text(ids[cut])!r}, which covers "
                f"{text[start:end]!r}: this tokenizer merges across the seam, so the pieces have "
                f"no exact token spans. Strip surrounding whitespace from the thought and answer, "
                f"or use a tokenizer whose pre-tokenizer splits at newlines and before spaces")
        cuts.append(cut)
    return cuts


def _leading_special_ids(backend: tokenizers.Tokenizer) -> tuple[int, ...]:
    """The ids the post-processor puts before a single sequence, found by encoding a probe."""
    bare = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    if not bare:
        raise ValueError("the tokenizer encodes the probe text 'a' to no tokens (no unknown token?), "
                         "so its leading special tokens cannot be found")
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return tuple(full[:start])
    raise ValueError("cannot find the text among the tokenizer's special tokens; its post-processor "
                     "rewrites the sequence")


def _require_chat(tokenizer: Any) -> Any:
    hf = tokenizer.chat_tokenizer if isinstance(tokenizer, PromptTokenizer) else tokenizer
    if hf is None or not getattr(hf, "chat_template", None):
        raise ValueError("chat rendering needs a transformers tokenizer with a chat_template; "
                         "pass one, or set PromptConfig.chat=False for the base-model text format")
    return hf


def _target_ids(enc: RamTokens) -> list[int]:
    return enc.tokens[enc.target_span[0]:enc.target_span[1]]


def _scored(enc: RamTokens) -> ScoredSequence:
    start, end = enc.target_span
    return ScoredSequence(enc.tokens, [start <= i < end for i in range(len(enc.tokens))])
