"""A policy = params + config + tokenizer, and the text-level generation every algorithm shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from tqdm.auto import tqdm

from metajax.data.prompts import ANSWER_MARKER, FORCED_OPENINGS, PromptTokenizer, as_prompt_tokenizer
from metajax.models.config import ModelConfig
from metajax.sampling import generate


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """A language model ready to generate text.

    Attributes:
      params: the weights pytree. cfg: its static config.
      tokenizer: the wrapped tokenizer (`metajax.data.prompts.as_prompt_tokenizer`).
      stop_ids: token ids that end a completion (EOS).
      pad_id: the id used for padding.
    """

    params: Any
    cfg: ModelConfig
    tokenizer: PromptTokenizer
    stop_ids: tuple[int, ...]
    pad_id: int = 0

    @classmethod
    def of(cls, params, cfg: ModelConfig, tokenizer) -> "Policy":
        tok = as_prompt_tokenizer(tokenizer)
        stop_ids = tuple(cfg.eos_token_ids)
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        return cls(params=params, cfg=cfg, tokenizer=tok, stop_ids=stop_ids, pad_id=pad)

    def with_params(self, params) -> "Policy":
        return dataclasses.replace(self, params=params)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_offsets(text)[0]

    def opening(self, prompting: str) -> list[int]:
        """Token ids forced at the start of every completion under `prompting` ("direct", "cot" or
        "policy": `metajax.data.prompts.FORCED_OPENINGS`); none for "policy"."""
        if prompting not in FORCED_OPENINGS:
            raise ValueError(f"prompting must be one of {sorted(FORCED_OPENINGS)}, got {prompting!r}")
        return self.encode(FORCED_OPENINGS[prompting]) if FORCED_OPENINGS[prompting] else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.offsets_backend.decode(list(ids), skip_special_tokens=True)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated continuation.

    text: the decoded completion, cut after its answer line (base models run on into a next
      "[User]" block otherwise). num_tokens: tokens the model generated up to that cut (a forced
      prefix included). prompt_index: which prompt it continues.
    """

    text: str
    num_tokens: int
    prompt_index: int


def complete(policy: Policy, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, n_samples: int = 1,
             temperature=0.0, top_p: float = 1.0, rng: jax.Array | None = None, batch_size: int = 64,
             forced_prefix: Sequence[int] = (), mesh=None, desc: str | None = None) -> list[Completion]:
    """Generates `n_samples` completions for each prompt, in batches of `batch_size` prompts.

    `forced_prefix` tokens are appended to every prompt and counted as generated (CoT prompting
    forces "<thought>"; its tokens are part of the chain's cost).
    """
    out: list[Completion] = []
    prefix_text = policy.decode(forced_prefix)
    starts = range(0, len(prompts), batch_size)
    for batch_number, start in enumerate(tqdm(starts, desc=desc, disable=desc is None, leave=False)):
        chunk = [list(p) + list(forced_prefix) for p in prompts[start:start + batch_size]]
        key = None if rng is None else jax.random.fold_in(rng, batch_number)
        samples = generate(policy.params, policy.cfg, chunk, max_new_tokens=max_new_tokens, n_samples=n_samples,
                           temperature=temperature, top_p=top_p, rng=key, stop_tokens=policy.stop_ids,
                           pad_id=policy.pad_id, mesh=mesh)
        for row, length, index in zip(samples.tokens, samples.lengths, samples.prompt_index):
            ids = row[:length].tolist()
            text = cut_after_answer(prefix_text + policy.decode(ids))
            num_tokens = len(forced_prefix) + _tokens_within(policy, ids, len(text) - len(prefix_text))
            out.append(Completion(text=text, num_tokens=num_tokens, prompt_index=start + int(index)))
    return out


def cut_after_answer(text: str) -> str:
    """The completion up to and including the line that starts with the answer marker."""
    marker = text.find(ANSWER_MARKER)
    if marker < 0:
        return text
    end = text.find("\n", marker)
    return text if end < 0 else text[:end + 1]


def _tokens_within(policy: Policy, ids: list[int], num_chars: int) -> int:
    """How many of `ids` it takes to spell the first `num_chars` characters of their decoding."""
    if num_chars >= len(policy.decode(ids)):
        return len(ids)
    lo, hi = 0, len(ids)
    while lo < hi:  # smallest prefix whose decoding covers num_chars characters
        mid = (lo + hi) // 2
        if len(policy.decode(ids[:mid])) >= num_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo

