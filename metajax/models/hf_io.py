"""Hugging Face checkpoints in and out: `config.json` + `*.safetensors` (single file or sharded).

Loading reads tensors lazily (safetensors files are memory-mapped) and builds every parameter with
`jax.make_array_from_callback`, so each device receives only its own shard, read straight from disk:
the whole model never sits on one device, and host memory holds one layer's tensor at a time.
The files themselves are read and written by `metajax.models.weight_files`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metajax.files import replace_dir, staging_dir, writing
from metajax.host import is_main_process, to_host
from metajax.models.config import ModelConfig, config_from_hf, config_to_hf
from metajax.models.transformer import Params, is_param_spec, param_specs
from metajax.models.weight_files import CheckpointError, is_weight_or_config, open_weights, write_safetensors_shards

# ----------------------------------------------------------------------------------------------
# Public API.


def load_hf(path: str | os.PathLike, *, dtype=jnp.float32, mesh=None, allow_pickle: bool = False
            ) -> tuple[Params, ModelConfig]:
    """Reads a Hugging Face checkpoint directory into (params, cfg).

    Args:
      path: a directory with `config.json` and `model.safetensors`, or sharded
        `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`.
      dtype: parameter dtype (jnp.float32 or jnp.bfloat16).
      mesh: place each tensor directly on its sharding over this mesh; one device when None.
      allow_pickle: accept `pytorch_model.bin` (needs torch; pickle files can run code on load).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file} is missing: a Hugging Face checkpoint needs its config.json")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None
    tensors = open_weights(path, allow_pickle)
    params, cfg = params_from_hf_tensors(hf_config, tensors, dtype=dtype, mesh=mesh)
    _check_tokenizer_fits(path, cfg)
    return params, cfg


def save_hf(params: Params, cfg: ModelConfig, path: str | os.PathLike, *,
            max_shard_bytes: int = 5 * 2**30, dtype=None, overwrite: bool = True) -> Path:
    """Writes params in Hugging Face format, loadable by `AutoModelForCausalLM.from_pretrained`.

    The directory is built beside `path` and renamed into place, so an interrupted save never leaves
    a half-written checkpoint (nor destroys the one that was there). Files other than weights and
    config already in `path` (a tokenizer, say) are kept.

    Args:
      max_shard_bytes: split weights into `model-0000i-of-0000n.safetensors` shards of at most
        this size, with an index, when they do not fit one file.
      dtype: convert weights to this dtype on the way out (default: as they are).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; pass overwrite=True to replace it")
    with writing(path, "the model"):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_dir(path)
        try:
            if path.is_dir():
                for item in path.iterdir():
                    if item.is_dir() and not item.name.startswith("."):
                        shutil.copytree(item, staging / item.name)
                    elif item.is_file() and not is_weight_or_config(item.name):
                        shutil.copy2(item, staging / item.name)
            hf_config = config_to_hf(cfg)
            if dtype is not None:
                hf_config["torch_dtype"] = jnp.dtype(dtype).name
            if is_main_process():
                (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
            write_safetensors_shards(_hf_tensors(params, cfg, dtype), staging, max_shard_bytes)
            replace_dir(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return path


def params_from_hf_tensors(hf_config: dict, tensors: Mapping[str, np.ndarray], *, dtype=jnp.float32,
                           mesh=None) -> tuple[Params, ModelConfig]:
    """(params, cfg) from a `config.json` dict and tensors named and laid out as in transformers'
    Llama/Qwen state dicts ([out_features, in_features] matrices)."""
    cfg = config_from_hf(hf_config)
    specs = param_specs(cfg)
    _check_shapes(cfg, tensors)
    missing = [name for name in _expected_tensor_names(cfg) if name not in tensors]
    if missing:
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} tensor(s) the {cfg.model_type} config needs, e.g. {missing[:3]}")
    unexpected = sorted(set(tensors) - set(_expected_tensor_names(cfg)) - {"lm_head.weight"})
    unexpected = [n for n in unexpected if not n.endswith("rotary_emb.inv_freq")]
    if unexpected:
        warnings.warn(f"ignoring {len(unexpected)} tensor(s) metajax does not use, e.g. {unexpected[:3]}")

    def build(key_path, spec):
        name = "/".join(str(k.key) for k in key_path)
        read_layer = _PARAM_READERS[name.split("/")[-1]]
        sharding = _sharding_for(mesh, spec)
        if name.startswith("layers/"):
            def callback(index):
                layer_range = range(cfg.num_layers)[index[0]]
                return np.stack([read_layer(tensors, cfg, i)[index[1:]] for i in layer_range]).astype(dtype)
        else:
            def callback(index):
                return read_layer(tensors, cfg, None)[index].astype(dtype)
        return jax.make_array_from_callback(spec.shape, sharding, callback)

    params = jax.tree_util.tree_map_with_path(build, specs, is_leaf=is_param_spec)
    return params, cfg


# ----------------------------------------------------------------------------------------------
# HF tensor names <-> metajax params. One table, used both ways.


def _layer_name(i: int, leaf: str) -> str:
    return f"model.layers.{i}.{_LAYER_TENSORS[leaf]}"


_LAYER_TENSORS = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
    "bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias",
    "wo": "self_attn.o_proj.weight",
    "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight", "w_down": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
                   "lm_head": "lm_head.weight"}


def _to_param(leaf: str, w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """HF layout -> metajax layout for one tensor (one layer's, for stacked leaves)."""
    if leaf in ("wq", "wk", "wv"):  # [heads * hd, D] -> [D, heads, hd]
        return w.T.reshape(cfg.hidden_size, -1, cfg.head_dim)
    if leaf in ("bq", "bk", "bv"):
        return w.reshape(-1, cfg.head_dim)
    if leaf == "wo":  # [D, heads * hd] -> [heads, hd, D]
        return w.T.reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size)
    if leaf in ("w_gate", "w_up", "w_down", "lm_head"):
        return w.T
    return w


def _to_hf(leaf: str, p: np.ndarray) -> np.ndarray:
    """metajax layout -> HF layout, the inverse of `_to_param`."""
    if leaf in ("wq", "wk", "wv"):
        return p.reshape(p.shape[0], -1).T
    if leaf in ("bq", "bk", "bv"):
        return p.reshape(-1)
    if leaf == "wo":
        return p.reshape(-1, p.shape[-1]).T
    if leaf in ("w_gate", "w_up", "w_down", "lm_head"):
        return p.T
    return p


def _reader(leaf: str) -> Callable:
    def read(tensors, cfg, layer):
        name = _layer_name(layer, leaf) if layer is not None else _GLOBAL_TENSORS[leaf]
        return _to_param(leaf, np.asarray(tensors[name]), cfg)
    return read


_PARAM_READERS = {leaf: _reader(leaf) for leaf in (*_LAYER_TENSORS, *_GLOBAL_TENSORS)}


def _expected_tensor_names(cfg: ModelConfig) -> list[str]:
    specs = param_specs(cfg)
    names = [_GLOBAL_TENSORS[k] for k in specs if k != "layers"]
    names += [_layer_name(i, leaf) for i in range(cfg.num_layers) for leaf in specs["layers"]]
    return names


def _expected_hf_shape(leaf: str, cfg: ModelConfig) -> tuple[int, ...]:
    D, F, V, hd = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    return {
        "embed": (V, D), "lm_head": (V, D), "final_norm": (D,), "attn_norm": (D,), "mlp_norm": (D,),
        "wq": (q, D), "wk": (kv, D), "wv": (kv, D), "bq": (q,), "bk": (kv,), "bv": (kv,), "wo": (D, q),
        "q_norm": (hd,), "k_norm": (hd,), "w_gate": (F, D), "w_up": (F, D), "w_down": (D, F),
    }[leaf]


def _check_shapes(cfg: ModelConfig, tensors: Mapping[str, np.ndarray]) -> None:
    embed = tensors.get(_GLOBAL_TENSORS["embed"])
    if embed is not None and embed.shape[0] != cfg.vocab_size:
        raise CheckpointError(
            f"vocabulary mismatch: {_GLOBAL_TENSORS['embed']} has {embed.shape[0]} rows but config.json "
            f"says vocab_size={cfg.vocab_size}")
    specs = param_specs(cfg)
    named = [(_GLOBAL_TENSORS[k], k) for k in specs if k != "layers"]
    named += [(_layer_name(i, leaf), leaf) for i in range(cfg.num_layers) for leaf in specs["layers"]]
    for name, leaf in named:
        if name in tensors and tuple(tensors[name].shape) != _expected_hf_shape(leaf, cfg):
            raise CheckpointError(
                f"tensor {name} has shape {tuple(tensors[name].shape)}, but config.json implies "
                f"{_expected_hf_shape(leaf, cfg)}")


def _hf_tensors(params: Params, cfg: ModelConfig, dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, host array) pairs, gathering one parameter at a time."""
    for key, value in params.items():
        if key == "layers":
            for leaf, stacked in value.items():
                host = _to_host(stacked, dtype)
                for i in range(cfg.num_layers):
                    yield _layer_name(i, leaf), _to_hf(leaf, host[i])
        elif not (key == "lm_head" and cfg.tie_word_embeddings):
            yield _GLOBAL_TENSORS[key], _to_hf(key, _to_host(value, dtype))


def _to_host(x: jax.Array, dtype) -> np.ndarray:
    x = to_host(x)
    return x if dtype is None else x.astype(jnp.dtype(dtype))


def _sharding_for(mesh, spec):
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    from metajax.models.sharding import named_sharding
    return named_sharding(mesh, spec.logical_axes, spec.shape)


def _check_tokenizer_fits(path: Path, cfg: ModelConfig) -> None:
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        return
    from tokenizers import Tokenizer
    size = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
    if size > cfg.vocab_size:
        raise CheckpointError(
            f"vocabulary mismatch: {tokenizer_file} has {size} tokens but the model's vocab_size is "
            f"{cfg.vocab_size}; token ids past the embedding table would be out of range")
