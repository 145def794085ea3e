"""The weight files of a Hugging Face checkpoint directory: safetensors (single file or sharded with
an index), read lazily through memory maps and written without a framework, and the pickle
`pytorch_model.bin` that metajax reads only when told to trust it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from metajax.host import is_main_process

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
}
_DTYPE_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, malformed, or does not match its config."""




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


def open_weights(path: Path, allow_pickle: bool) -> Mapping[str, np.ndarray]:
    index = path / SAFE_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map'")
        return SafetensorsReader([path / f for f in sorted(set(weight_map.values()))])
    if (path / SAFE_WEIGHTS).is_file():
        return SafetensorsReader([path / SAFE_WEIGHTS])
    pickles = [path / f for f in PICKLE_WEIGHTS if (path / f).is_file()]
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


def write_safetensors_shards(tensors: Iterator[tuple[str, np.ndarray]], out: Path, max_shard_bytes: int):
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


def is_weight_or_config(name: str) -> bool:
    return (name == "config.json" or name.endswith(".safetensors") or name == SAFE_INDEX
            or name in PICKLE_WEIGHTS)
