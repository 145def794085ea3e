"""Architectures of the paper models, as their Hugging Face `config.json` holds them, so a memory
report needs no download: `metajax.aot` looks a config's `model.hub_id` up here when
`model.path` has no `config.json`. Only shapes and RoPE settings matter for compiling."""

from __future__ import annotations

import json
from pathlib import Path

from metajax.models.config import ModelConfig, config_from_hf

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

HF_CONFIGS: dict[str, dict] = {
    "meta-llama/Llama-3.2-3B": dict(
        model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={**_LLAMA3_ROPE, "factor": 32.0}, max_position_embeddings=131072, tie_word_embeddings=True,
        bos_token_id=128000, eos_token_id=128001),
    "meta-llama/Llama-3.1-8B": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, max_position_embeddings=131072, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    "Qwen/Qwen2.5-Math-1.5B": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
        max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
        max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
}
HF_CONFIGS["meta-llama/Llama-3.2-3B-Instruct"] = {**HF_CONFIGS["meta-llama/Llama-3.2-3B"], "eos_token_id": 128009}
HF_CONFIGS["meta-llama/Llama-3.1-8B-Instruct"] = {**HF_CONFIGS["meta-llama/Llama-3.1-8B"], "eos_token_id": 128009}
HF_CONFIGS["Qwen/Qwen2.5-1.5B"] = {**HF_CONFIGS["Qwen/Qwen2.5-1.5B-Instruct"], "eos_token_id": 151643}


def model_config(model_dir: Path, hub_id: str | None, override: str | None = None) -> tuple[ModelConfig, str]:
    """(the architecture, where it came from): `override` (a hub id of `HF_CONFIGS` or a
    `config.json` path), else `model_dir/config.json`, else `hub_id` looked up in `HF_CONFIGS`."""
    candidates = [override] if override else [str(model_dir / "config.json"), hub_id]
    for name in filter(None, candidates):
        if name in HF_CONFIGS:
            return config_from_hf(HF_CONFIGS[name]), f"{name} (built-in architecture table)"
        path = Path(name)
        if path.is_dir():
            path = path / "config.json"
        if path.is_file():
            return config_from_hf(json.loads(path.read_text())), str(path)
    raise ValueError(
        f"no architecture for this run: {model_dir}/config.json does not exist and model.hub_id={hub_id!r} is not "
        f"in the built-in table ({', '.join(sorted(HF_CONFIGS))}); pass --model with one of those ids or a "
        "config.json path")
