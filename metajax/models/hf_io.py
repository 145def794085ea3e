"""Hugging Face checkpoints in and out: `config.json` + `*.safetensors` (single file or sharded).

Loading reads tensors lazily (safetensors files are memory-mapped) and builds every parameter with
`jax.make_array_from_callback`, so each device receives only its own shard, read straight from disk:
the whole model never sits on one device, and host memory holds one layer's tensor at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from metajax.files import writing
from metajax.host import is_main_process, to_host
from metajax.models.config import ModelConfig, config_from_hf, config_to_hf
from metajax.models.transformer import Params, is_param_spec, param_specs

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
}
_DTYPE_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, malformed, or does not match its config."""


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
    tensors = _open_weights(path, allow_pickle)
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
                    elif item.is_file() and not _is_weight_or_config(item.name):
                        shutil.copy2(item, staging / item.name)
            hf_config = config_to_hf(cfg)
            if dtype is not None:
                hf_config["torch_dtype"] = jnp.dtype(dtype).name
            if is_main_process():
                (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
            _write_safetensors_shards(_hf_tensors(params, cfg, dtype), staging, max_shard_bytes)
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


# ----------------------------------------------------------------------------------------------
# safetensors, read lazily through memory maps and written without a framework.


class SafetensorsReader(Mapping):
    """A read-only name -> np.ndarray mapping over one or more safetensors files (memory-mapped)."""

    def __init__(self, files: list[Path]):
        self._entries: dict[str, tuple[Path, np.dtype, tuple[int, ...], int]] = {}
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"checkpoint shard {file} is missing")
            for name, (dtype, shape, offset) in _read_header(file).items():
                self._entries[name] = (file, dtype, shape, offset)

    def __getitem__(self, name: str) -> np.ndarray:
        file, dtype, shape, offset = self._entries[name]
        if 0 in shape:
            return np.zeros(shape, dtype)
        return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape or (1,)).reshape(shape)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][2]


def _read_header(file: Path) -> dict[str, tuple[np.dtype, tuple[int, ...], int]]:
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{file} is not a safetensors file (truncated header)")
        header_len = int.from_bytes(raw, "little")
        if header_len > size - 8:
            raise CheckpointError(f"{file} is truncated or not a safetensors file (header runs past the end)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{file} has a corrupt safetensors header") from None
    data_start = 8 + header_len
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor {name} in {file} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if data_start + end > size:
            raise CheckpointError(f"{file} is truncated: tensor {name} runs past the end of the file")
        entries[name] = (_SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), data_start + begin)
    return entries


def _open_weights(path: Path, allow_pickle: bool) -> Mapping[str, np.ndarray]:
    index = path / SAFE_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map'")
        return SafetensorsReader([path / f for f in sorted(set(weight_map.values()))])
    if (path / SAFE_WEIGHTS).is_file():
        return SafetensorsReader([path / SAFE_WEIGHTS])
    pickles = [path / f for f in _PICKLE_WEIGHTS if (path / f).is_file()]
    if pickles and not allow_pickle:
        raise CheckpointError(
            f"{path} holds only pickle weights ({pickles[0].name}). metajax refuses them by default: "
            "unpickling can execute arbitrary code. Convert once, in an environment you trust: "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True), "
            "or pass allow_pickle=True if you trust the file.")
    if pickles:
        return _read_pickle_weights(path)
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    if shards:
        raise CheckpointError(f"{path} has safetensors shards but no {SAFE_INDEX}")
    raise CheckpointError(f"{path} has no weights: expected {SAFE_WEIGHTS} or {SAFE_INDEX} with its shards")


def _read_pickle_weights(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError("reading pytorch_model.bin needs torch installed") from None
    index = path / "pytorch_model.bin.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "pytorch_model.bin"]
    out = {}
    for f in files:
        if not (path / f).is_file():
            raise CheckpointError(f"checkpoint shard {path / f} is missing")
        state = torch.load(path / f, map_location="cpu", weights_only=True)
        out.update({k: v.float().numpy() for k, v in state.items()})
    return out


def _write_safetensors_shards(tensors: Iterator[tuple[str, np.ndarray]], out: Path, max_shard_bytes: int):
    """Writes tensors to `model.safetensors`, or to numbered shards plus an index when they exceed
    `max_shard_bytes`. Only process 0 writes."""
    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    shard_bytes = 0
    for name, array in tensors:
        if shards[-1] and shard_bytes + array.nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append((name, np.ascontiguousarray(array)))
        shard_bytes += array.nbytes
    if not is_main_process():
        return
    if len(shards) == 1:
        _write_safetensors(out / SAFE_WEIGHTS, shards[0])
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(out / file, shard)
        weight_map.update({name: file for name, _ in shard})
        total += sum(a.nbytes for _, a in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _write_safetensors(file: Path, tensors: list[tuple[str, np.ndarray]]) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, array in tensors:
        if array.dtype not in _DTYPE_NAMES:
            raise CheckpointError(f"cannot write tensor {name} of dtype {array.dtype} to safetensors")
        header[name] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keeps tensor data 8-byte aligned
    with open(file, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for _, array in tensors:
            f.write(array.tobytes())


def _is_weight_or_config(name: str) -> bool:
    return (name == "config.json" or name.endswith(".safetensors") or name == SAFE_INDEX
            or name in _PICKLE_WEIGHTS)


def staging_dir(target: Path) -> Path:
    """An empty directory beside `target` to build it in, with the permissions a plain mkdir would
    give (mkdtemp makes it owner-only)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Moves `staging` to `target`; an existing `target` is set aside first and only deleted once
    the new directory is in place."""
    if not is_main_process():
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
