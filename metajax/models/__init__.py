"""Llama/Qwen decoders as pure functions over a params pytree, their log-probs, HF/GGUF io and sharding."""

from metajax.models.config import (SUPPORTED_MODEL_TYPES, ModelConfig, RopeScaling, UnsupportedModelError,
                                   config_from_hf, config_to_hf)
from metajax.models.hf_io import CheckpointError, load_hf, params_from_hf_tensors, save_hf
from metajax.models.logprobs import (chain_logprobs, score_continuations, score_sequences, sequence_logprobs,
                                     shared_prefix_logprobs, token_logprobs)
from metajax.models.sharding import MeshConfig, make_mesh
from metajax.models.decode import KVCache, decode_step, prefill
from metajax.models.transformer import (REMAT_POLICIES, Params, abstract_params, cast_params, forward, init_params,
                                        param_specs)


def load_gguf(path, *, dtype=None, mesh=None):
    """Loads a Llama-architecture GGUF file (see `metajax.models.gguf.load_gguf`)."""
    from metajax.models import gguf
    import jax.numpy as jnp
    return gguf.load_gguf(path, dtype=jnp.float32 if dtype is None else dtype, mesh=mesh)


__all__ = [
    "SUPPORTED_MODEL_TYPES", "ModelConfig", "RopeScaling", "UnsupportedModelError", "config_from_hf",
    "config_to_hf", "CheckpointError", "load_hf", "params_from_hf_tensors", "save_hf", "MeshConfig",
    "make_mesh", "REMAT_POLICIES", "abstract_params", "cast_params", "KVCache", "Params", "chain_logprobs",
    "decode_step", "forward", "init_params", "param_specs", "prefill", "score_continuations", "score_sequences",
    "sequence_logprobs", "shared_prefix_logprobs", "token_logprobs", "load_gguf",
]
