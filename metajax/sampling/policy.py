"""A policy: params + config + tokenizer, with the encoding and decoding every algorithm shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from metajax.data.prompts import FORCED_OPENINGS, PromptTokenizer, as_prompt_tokenizer
from metajax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """A language model ready to generate.

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
