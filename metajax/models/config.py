"""Static model configuration: one frozen, hashable dataclass for every supported family.

`ModelConfig` travels through `jax.jit` as a static argument, so it holds only Python scalars and
tuples. `config_from_hf` reads a Hugging Face `config.json` dict (transformers 4.x `rope_scaling` /
`rope_theta` keys and 5.x `rope_parameters` alike); `config_to_hf` writes one back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from metajax.models.attention import ATTENTION_IMPLEMENTATIONS

# model_type -> the architecture switches it implies. The only place that lists what we support.
SUPPORTED_MODEL_TYPES: dict[str, dict[str, bool]] = {
    "llama": dict(qkv_bias=False, qk_norm=False),  # Llama 2, 3, 3.1, 3.2; SmolLM2
    "qwen2": dict(qkv_bias=True, qk_norm=False),  # Qwen2, Qwen2.5
    "qwen3": dict(qkv_bias=False, qk_norm=True),  # Qwen3 (dense)
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


class UnsupportedModelError(ValueError):
    """A checkpoint asks for an architecture or feature metajax does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling (`rope_type` "linear" or Llama 3.1's "llama3")."""

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of the Llama/Qwen family.

    Attributes:
      model_type: one of `SUPPORTED_MODEL_TYPES`.
      head_dim: per-head width; Qwen3 decouples it from hidden_size / num_heads.
      qkv_bias: q/k/v projections carry a bias (Qwen2).
      qk_norm: RMSNorm over head_dim on q and k before RoPE (Qwen3).
      eos_token_ids: every id that ends generation (Llama 3 instruct has several).
      attention: how full-sequence attention is computed, one of
        `metajax.models.attention.ATTENTION_IMPLEMENTATIONS` (the same numbers from each; a runtime
        choice, not part of the checkpoint: HF conversion neither reads nor writes it).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    attention: str = "blockwise"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type {self.model_type!r} is not supported; supported: "
                f"{sorted(SUPPORTED_MODEL_TYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    @classmethod
    def of(cls, model_type: str, **fields) -> "ModelConfig":
        """A config with the family's architecture switches filled in (`head_dim` defaults to
        hidden_size // num_heads)."""
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not supported; supported: {sorted(SUPPORTED_MODEL_TYPES)}")
        fields.setdefault("head_dim", fields["hidden_size"] // fields["num_heads"])
        return cls(model_type=model_type, **{**SUPPORTED_MODEL_TYPES[model_type], **fields})

    @property
    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        attn += self.qkv_bias * hd * (self.num_heads + 2 * self.num_kv_heads)
        attn += self.qk_norm * 2 * hd
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.num_layers * per_layer + self.vocab_size * d + head + d

    def flops_per_token(self, context: int) -> float:
        """Forward FLOPs per token: 2 x matmul params plus attention over `context` keys."""
        # The input embedding is a lookup, not a matmul; a tied one is still the logits matmul.
        matmul_params = self.num_params - (not self.tie_word_embeddings) * self.vocab_size * self.hidden_size
        attention = 4 * self.num_layers * self.num_heads * self.head_dim * context
        return 2.0 * matmul_params + attention


def rope_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """float64[head_dim // 2]: RoPE inverse frequencies, with `cfg.rope_scaling` applied.

    The llama3 branch follows transformers' `_compute_llama3_parameters`: long wavelengths are
    divided by `factor`, short ones kept, and the band between interpolated smoothly.
    """
    exponents = np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** exponents)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A `ModelConfig` from a Hugging Face `config.json` dict; unsupported features raise."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"config.json has model_type {model_type!r}; metajax supports {sorted(SUPPORTED_MODEL_TYPES)}")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"hidden_act {act!r} is not supported (only 'silu')")
    if model_type == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise UnsupportedModelError("Llama checkpoints with attention_bias or mlp_bias are not supported")
    if hf.get("use_sliding_window"):
        raise UnsupportedModelError("sliding-window attention (use_sliding_window: true) is not supported")
    if model_type == "qwen3" and hf.get("attention_bias"):
        raise UnsupportedModelError("Qwen3 checkpoints with attention_bias are not supported")

    rope = dict(hf.get("rope_parameters") or {})
    legacy_scaling = hf.get("rope_scaling") or {}
    rope = {**legacy_scaling, **rope}
    rope_theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope_type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")
    scaling = None
    if rope_type != "default":
        scaling = RopeScaling(
            rope_type=rope_type,
            factor=float(rope["factor"]),
            low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                rope.get("original_max_position_embeddings", hf.get("max_position_embeddings", 8192))),
        )

    eos = hf.get("eos_token_id")
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    num_heads = int(hf["num_attention_heads"])
    return ModelConfig.of(
        model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // num_heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=hf.get("pad_token_id"),
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` dict transformers needs to rebuild `cfg` (legacy rope keys, which both
    transformers 4.x and 5.x read)."""
    hf: dict[str, Any] = {
        "architectures": [_HF_ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
    }
    if cfg.model_type == "qwen2":
        hf["use_sliding_window"] = False
    if cfg.model_type in ("llama", "qwen3"):
        hf["attention_bias"] = False
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = dataclasses.asdict(cfg.rope_scaling)
    if cfg.bos_token_id is not None:
        hf["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_ids:
        hf["eos_token_id"] = cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1 else list(cfg.eos_token_ids)
    if cfg.pad_token_id is not None:
        hf["pad_token_id"] = cfg.pad_token_id
    return hf
