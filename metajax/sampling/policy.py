"""A policy: params + config + tokenizer, with the encoding and decoding every algorithm shares."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from metajax.data.example import Example
from metajax.data.formats import ANSWER_MARKER, FORCED_OPENINGS, USER_MARKER
from metajax.data.prompts import PromptConfig, Question
from metajax.data.token_spans import PromptTokenizer, as_prompt_tokenizer, encode_prompt
from metajax.models.config import ModelConfig
from metajax.sampling.stop_text import StopText, after, compile_stop_text


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """A language model ready to generate.

    Attributes:
      params: the weights pytree. cfg: its static config.
      tokenizer: the wrapped tokenizer (`metajax.data.token_spans.as_prompt_tokenizer`).
      stop_ids: token ids that end a completion (EOS, and the chat template's end of turn).
      pad_id: the id used for padding.
      compute_dtype: the dtype the sampler runs the model in (bf16 over fp32 master params); None:
        the params' own.
      prompt: how this model's prompts are rendered: `chat` (through the tokenizer's chat template)
        and `system_prompt`; the style is chosen per call. Every prompt, scored sequence and SFT
        row of the policy is rendered with it, so evaluation, rollouts, VOC scoring and training
        see the same format.
    """

    params: Any
    cfg: ModelConfig
    tokenizer: PromptTokenizer
    stop_ids: tuple[int, ...]
    pad_id: int = 0
    compute_dtype: Any = None
    prompt: PromptConfig = PromptConfig()

    @classmethod
    def of(cls, params, cfg: ModelConfig, tokenizer, *, chat: bool | str = False,
           system_prompt: str | None = None, compute_dtype=None) -> "Policy":
        """A policy of `tokenizer` (a transformers fast tokenizer or a `tokenizers.Tokenizer`).

        chat: True renders through the tokenizer's chat template, "auto" does when it has one.
        """
        tok = as_prompt_tokenizer(tokenizer)
        has_template = bool(getattr(tok.chat_tokenizer, "chat_template", None))
        if chat is True and not has_template:
            raise ValueError("prompting.chat is true but the tokenizer has no chat template; set "
                             "prompting.chat to auto or false for a base model, or use the instruct "
                             "model's tokenizer (its tokenizer_config.json holds chat_template)")
        use_chat = has_template if chat == "auto" else bool(chat)
        if system_prompt is not None and not use_chat:
            raise ValueError("prompting.system_prompt needs chat rendering (prompting.chat: true, or "
                             "auto with a tokenizer that has a chat template)")
        stop_ids = tuple(cfg.eos_token_ids)
        if use_chat:  # the template's end-of-turn token ends a completion too (Llama-3's <|eot_id|>)
            stop_ids += tuple(i for i in _end_of_turn_ids(tok) if i not in stop_ids)
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        return cls(params=params, cfg=cfg, tokenizer=tok, stop_ids=stop_ids, pad_id=pad, compute_dtype=compute_dtype,
                   prompt=PromptConfig(chat=use_chat, system_prompt=system_prompt))

    def with_params(self, params) -> "Policy":
        return dataclasses.replace(self, params=params)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_offsets(text)[0]

    def prompt_ids(self, question: Question, fewshot: Sequence[Example] = (), *, style: str = "ram") -> list[int]:
        """The generation prompt of `question` after the `fewshot` blocks: int[prompt_len], rendered
        in `style` with this policy's chat settings (`metajax.data.token_spans.encode_prompt`)."""
        return encode_prompt(self.tokenizer, dataclasses.replace(self.prompt, style=style), question, fewshot)

    def opening(self, prompting: str) -> list[int]:
        """Token ids forced at the start of every completion under `prompting` ("direct", "cot" or
        "policy": `metajax.data.formats.FORCED_OPENINGS`); none for "policy".

        In chat the answer has no marker to force (the assistant turn is the marker), so "direct"
        forces nothing there: its answer-only shots ask for a direct answer, and a completion that
        thinks anyway is counted, tokens and thought rate, as it is."""
        if prompting not in FORCED_OPENINGS:
            raise ValueError(f"prompting must be one of {sorted(FORCED_OPENINGS)}, got {prompting!r}")
        if prompting == "direct" and self.prompt.chat:
            return []
        return self.encode(FORCED_OPENINGS[prompting]) if FORCED_OPENINGS[prompting] else []

    def decode(self, ids: Sequence[int], *, special: bool = False) -> str:
        """The text of `ids`; special tokens (BOS, chat-template markers) only with `special`."""
        return self.tokenizer.offsets_backend.decode(list(ids), skip_special_tokens=not special)

    def stop_text(self, opening: Sequence[int] = (), *, answer_line: bool = True,
                  stop_strings: tuple[str, ...] = ()) -> StopText | None:
        """Where a completion's text ends, for completions that open with `opening`: in the text
        format, at the newline that ends the "[Assistant]" line (unless `answer_line` is False, as
        for an exam, which answers several questions), where a "[User]" turn starts, or at any of
        `stop_strings`. In chat the template's end-of-turn token ends the answer, so only
        `stop_strings` apply there (None without them, or without a tokenizer)."""
        if self.tokenizer is None or (self.prompt.chat and not stop_strings):
            return None
        if self.prompt.chat:
            answer_line, stop_strings = False, tuple(stop_strings)
        else:
            stop_strings = (USER_MARKER,) + tuple(stop_strings)
        line_markers = (ANSWER_MARKER,) if answer_line else ()
        return _opened_stops(self.tokenizer, self.cfg.vocab_size, tuple(opening), stop_strings, line_markers)

    def exam_prompt_ids(self, questions: Sequence[Question], *, style: str, budget: int,
                        level_bounds: Sequence[int], trigger: str | None = None) -> list[int]:
        """The prompt of a budgeted exam of `questions`, rendered in the exam `style` with this
        policy's chat settings, stating `budget` and the levels (and a prompting method's `trigger`)."""
        cfg = dataclasses.replace(self.prompt, style=style, exam_budget=budget, level_bounds=tuple(level_bounds),
                                  exam_trigger=trigger)
        return encode_prompt(self.tokenizer, cfg, list(questions))


@functools.lru_cache(maxsize=16)
def _text_format_stops(tokenizer: PromptTokenizer, vocab_size: int, stop_strings: tuple[str, ...],
                       line_markers: tuple[str, ...]) -> StopText:
    """Stop rules over every token of `tokenizer`: built once per tokenizer and rule set."""
    known = tokenizer.offsets_backend.get_vocab_size()
    texts = tokenizer.offsets_backend.decode_batch([[i] for i in range(min(known, vocab_size))],
                                                   skip_special_tokens=True)
    texts += [""] * (vocab_size - len(texts))  # embedding rows past the tokenizer's vocabulary
    return compile_stop_text(texts, stop_strings=stop_strings, line_markers=line_markers)


@functools.lru_cache(maxsize=16)
def _opened_stops(tokenizer: PromptTokenizer, vocab_size: int, opening: tuple[int, ...],
                  stop_strings: tuple[str, ...], line_markers: tuple[str, ...]) -> StopText:
    return after(_text_format_stops(tokenizer, vocab_size, stop_strings, line_markers), opening)


def _end_of_turn_ids(tok: PromptTokenizer) -> tuple[int, ...]:
    """The special token that closes an assistant turn in the chat template: the first added
    special token after the content of a rendered one-message assistant turn."""
    probe = "metajax-probe"
    text = tok.chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], tokenize=False)
    tail = text[text.rindex(probe) + len(probe):]
    ids, _ = tok.encode_offsets(tail)
    specials = set(tok.chat_tokenizer.all_special_ids) | {
        i for i, t in tok.chat_tokenizer.added_tokens_decoder.items() if t.special}
    return tuple(i for i in ids[:1] if i in specials)
