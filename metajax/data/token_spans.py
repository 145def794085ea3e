"""Span-exact tokenisation of the prompts `metajax.data.prompts` renders.

Training masks and the VOC reward need the exact tokens of the prompt x, the thought block z and the
answer y. A piece tokenised alone can differ from the same piece in context (BPE merges across the
seam, leading-space handling), so we never tokenise pieces separately: the whole text is tokenised
once, and the character boundaries of the pieces are mapped to token boundaries through the
tokenizer's offsets. Every seam is placed where byte-level BPE pre-tokenizers split anyway (after a
newline, before the space that starts the answer), and a seam that still falls inside a token raises
`TokenBoundaryError` instead of silently shifting a mask. So
`prompt_ids + thought_ids + answer_ids == encode(full_text)` holds by construction.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import tokenizers

from metajax.data.example import Example
from metajax.data.formats import ANSWER_MARKER
from metajax.data.prompts import (Dialogue, PromptConfig, Question, Turn, question_block, render_chat,
                                  render_prompt, render_text, shot_turns, thought_block)


class TokenBoundaryError(ValueError):
    """A piece boundary falls inside a token, so the piece has no exact token span."""


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
# Span helpers.


def _ram_text_pieces(tok: PromptTokenizer, question: Question, thought: str | None, answer: str,
                     fewshot: tuple[Example, ...], cfg: PromptConfig) -> tuple[str, str, str, str]:
    """(prompt, thought block, answer marker, scored answer) texts; their concatenation is the
    whole rendered sequence. The marker is empty in chat, where the role header plays its part."""
    shots, user = shot_turns(fewshot, hinted=False), question_block(question)
    thought_text = thought_block(thought)
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


def _target_ids(enc: RamTokens) -> list[int]:
    return enc.tokens[enc.target_span[0]:enc.target_span[1]]


def _scored(enc: RamTokens) -> ScoredSequence:
    start, end = enc.target_span
    return ScoredSequence(enc.tokens, [start <= i < end for i in range(len(enc.tokens))])
