"""Shared test setup: an offline, CPU-only JAX with 8 fake devices, and tiny random transformers
checkpoints to compare against.

The environment is set before anything imports jax: XLA reads `XLA_FLAGS` once, at backend start.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]))
# Compiling dominates this suite on CPU: a persistent compilation cache shares identical programs
# between tests and makes a second run much faster. It only ever returns what XLA would compile.
for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "JAX_PLATFORMS": "cpu",
                     "TOKENIZERS_PARALLELISM": "false",
                     "JAX_COMPILATION_CACHE_DIR": os.path.expanduser("~/.cache/metajax/jax-tests"),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}.items():
    os.environ.setdefault(_key, _value)

import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Shared by every tiny model. initializer_range 0.1 (HF's default is 0.02) gives logits of order one,
# so an absolute tolerance of 1e-4 is a real constraint rather than a fraction of the signal.
TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=5000.0,
            initializer_range=0.1)

# name -> (model_type, overrides of TINY, the rope_type transformers must end up using).
HF_CONFIGS = {
    # GQA (4 query heads over 2 KV heads); Llama 3.1 scaling with an original context of 16 tokens, so
    # the tests' longer sequences reach the rescaled low frequencies.
    "llama3": ("llama", dict(rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=16)),
               "llama3"),
    "llama_linear": ("llama", dict(num_key_value_heads=4, rope_scaling=dict(rope_type="linear", factor=2.0)),
                     "linear"),
    "qwen2": ("qwen2", dict(), "default"),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True), "default"),
    # head_dim 24 != hidden 64 / 4 heads.
    "qwen3": ("qwen3", dict(head_dim=24), "default"),
    "qwen3_tied": ("qwen3", dict(head_dim=24, num_key_value_heads=1, tie_word_embeddings=True), "default"),
}

# Small enough that every model splits into several shard files.
SHARD_SIZE = "32KB"


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    """A saved tiny checkpoint and the transformers model it came from (the reference)."""

    path: Path
    model: object  # transformers *ForCausalLM, eval mode, float32

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """float32[batch, seq, vocab] from transformers for unpadded int tokens[batch, seq]."""
        import torch
        with torch.no_grad():
            return self.model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


class CommandLine:
    """`python -m metajax.main [--config config] --set ...` in a process of its own on one CPU device,
    as a user starts it. The suite's 8 fake devices would shard an end-to-end run's model 8 ways over
    the machine's cores."""

    env = dict(os.environ, XLA_FLAGS=" ".join(f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f))

    @staticmethod
    def command(overrides, config=None) -> list[str]:
        import sys
        command = [sys.executable, "-m", "metajax.main", *(["--config", str(config)] if config else [])]
        for override in overrides:
            command += ["--set", override]
        return command

    def __call__(self, overrides, config=None):
        """Runs to the end; fails the test unless the run exits 0. Returns the CompletedProcess."""
        import subprocess
        done = subprocess.run(self.command(overrides, config), env=self.env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        return done


@pytest.fixture(scope="session")
def run_cli() -> CommandLine:
    """`run_cli(overrides, config=None)` runs the command line to the end (`CommandLine`)."""
    return CommandLine()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module. The suite compiles over a thousand
    programs in one process; with all of them kept, XLA:CPU crashed (SIGSEGV while compiling) near
    the end of the suite, where each module alone passed. The persistent compilation cache above
    still shares programs between modules."""
    yield
    import jax
    jax.clear_caches()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """`make(name, sharded=False) -> HFCheckpoint` for a name in `HF_CONFIGS`, built once per session.

    Tests must not modify the directory; copy it first (`shutil.copytree`).
    """
    models, saved = {}, {}

    def make(name: str, sharded: bool = False) -> HFCheckpoint:
        if name not in models:
            models[name] = _build_model(name, seed=len(models))
        if (name, sharded) not in saved:
            path = tmp_path_factory.mktemp(f"{name}_{'sharded' if sharded else 'single'}")
            models[name].save_pretrained(path, **({"max_shard_size": SHARD_SIZE} if sharded else {}))
            shards = list(path.glob("*.safetensors"))
            assert len(shards) > 1 if sharded else [p.name for p in shards] == ["model.safetensors"]
            saved[name, sharded] = HFCheckpoint(path, models[name])
        return saved[name, sharded]

    return make


def _build_model(name: str, seed: int):
    import torch
    import transformers

    model_type, overrides, rope_type = HF_CONFIGS[name]
    config = transformers.AutoConfig.for_model(model_type, **{**TINY, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    assert model.model.rotary_emb.rope_type == rope_type, "transformers dropped the rope scaling"
    # HF initialises norms to 1 and biases to 0, which would hide a missing or misplaced one.
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif param_name.endswith(".bias"):
                param.copy_(0.3 * torch.randn_like(param))
    return model
