"""llama.cpp GGUF checkpoints in, Hugging Face names and layout out.

`read_gguf` turns a `.gguf` file into what a Hugging Face Llama checkpoint holds: a `config.json`
dict and float32 tensors named and laid out as in its safetensors (`[out, in]` weights), with every
quantised tensor dequantised and llama.cpp's rotary row permutation of q/k undone. `load_gguf` goes
on to metajax params; `gguf_to_hf` (also `python -m metajax.models.gguf IN.gguf OUT_DIR`) writes an
HF checkpoint directory with the GGUF's tokenizer, so every other tool can read the model.

Only the `llama` architecture (Llama 1/2/3/3.2 without rope_freqs, SmolLM2, Mistral-as-llama) is
read. Quantised weights come back as exactly the float32 values llama.cpp dequantises them to: the
model keeps its quantisation error, not its memory savings.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import jax.numpy as jnp
import numpy as np

from metajax.files import replace_dir, staging_dir
from metajax.models.hf_io import params_from_hf_tensors, save_hf
from metajax.progress import phase

SUPPORTED_ARCHITECTURES = ("llama",)

_GGUF_MAGIC = b"GGUF"

# llama.cpp tensor name -> Hugging Face name; `{i}` is the layer index.
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)")


class GGUFError(ValueError):
    """A file is not a readable GGUF checkpoint of a supported architecture."""


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The HF `config.json` dict and HF-named float32 tensors of a llama.cpp GGUF file.

    Returns:
      hf_config: a LlamaConfig-style dict (`model_type: "llama"`, sizes, rope, token ids).
      tensors: `model.embed_tokens.weight` float32[vocab, hidden],
        `model.layers.{i}.self_attn.q_proj.weight` float32[heads * head_dim, hidden], ... in HF's
        `[out, in]` layout; `lm_head.weight` only when the embedding is not tied.
    """
    reader = _open_reader(Path(path))
    architecture = _field(reader, "general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"{path}: GGUF architecture {architecture!r} is not supported; metajax reads "
            f"{list(SUPPORTED_ARCHITECTURES)} GGUF files (convert others from their HF checkpoint)")
    names = {tensor.name for tensor in reader.tensors}
    hf_config = _hf_config(reader, architecture, names, path)
    expected = _expected_shapes(hf_config)

    tensors = {}
    for tensor in reader.tensors:
        hf_name = _hf_tensor_name(tensor.name, hf_config["num_hidden_layers"], path)
        try:
            weight = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        except NotImplementedError as e:
            raise GGUFError(
                f"{path}: tensor {tensor.name!r} uses quantisation {tensor.tensor_type.name}, which the "
                f"installed gguf package cannot dequantise ({e}); upgrade gguf or requantise") from e
        if weight.shape != expected[hf_name]:
            raise GGUFError(
                f"{path}: tensor {tensor.name!r} ({hf_name}) has shape {weight.shape}, expected "
                f"{expected[hf_name]} from the file's metadata")
        if hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            weight = _unpermute_rotary_rows(weight, hf_config["head_dim"])
        tensors[hf_name] = weight

    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise GGUFError(f"{path}: GGUF file lacks tensors {missing}; the file is incomplete or not a "
                        "llama checkpoint")
    return hf_config, tensors


def load_gguf(path: str | os.PathLike, *, dtype=jnp.float32, mesh=None):
    """metajax `(params, cfg)` from a llama.cpp GGUF file (see `read_gguf`), cast to `dtype` and
    placed on `mesh` as `params_from_hf_tensors` does for safetensors."""
    hf_config, tensors = read_gguf(path)
    return params_from_hf_tensors(hf_config, tensors, dtype=dtype, mesh=mesh)


def gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes a float32 Hugging Face checkpoint directory (config.json, safetensors, tokenizer)
    from a GGUF file and returns its path.

    The directory appears complete or not at all: it is built in a temporary sibling and renamed
    into place. An existing non-empty `out_dir` is replaced only with `overwrite=True`.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace it")
    size_mb = gguf_path.stat().st_size / 2**20 if gguf_path.is_file() else 0
    with phase("convert", f"reading and dequantising {gguf_path} ({size_mb:.0f} MiB)"):
        params, cfg = load_gguf(gguf_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out_dir)
    try:
        with phase("convert", "writing the tokenizer"):
            _save_tokenizer(gguf_path, staging)
        with phase("convert", f"writing {cfg.num_params:,} float32 parameters to {out_dir}"):
            save_hf(params, cfg, staging)  # keeps the tokenizer files already in `staging`
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m metajax.models.gguf IN.gguf OUT_DIR [--overwrite]`."""
    parser = argparse.ArgumentParser(
        prog="python -m metajax.models.gguf",
        description="Convert a llama.cpp GGUF (llama architecture) to a float32 Hugging Face checkpoint.")
    parser.add_argument("gguf_path", help="input .gguf file")
    parser.add_argument("out_dir", help="output checkpoint directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    args = parser.parse_args(argv)
    try:
        out = gguf_to_hf(args.gguf_path, args.out_dir, overwrite=args.overwrite)
    except (GGUFError, FileExistsError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}")


def _save_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Writes the tokenizer embedded in the GGUF as HF tokenizer files into `out_dir`."""
    from transformers import AutoTokenizer  # slow to import; only conversion needs it

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, trust_remote_code=False)
    except Exception as e:  # transformers reports a GGUF without tokenizer as a bare KeyError
        raise GGUFError(f"{gguf_path}: transformers cannot build a tokenizer from this GGUF ({e!r}); "
                        "an HF checkpoint needs one, so convert a GGUF that embeds its tokenizer") from e
    tokenizer.save_pretrained(out_dir)


def _open_reader(path: Path):
    """A `gguf.GGUFReader` over `path`, with unreadable files reported as `GGUFError`."""
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    with open(path, "rb") as f:
        magic = f.read(len(_GGUF_MAGIC))
    if magic != _GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (starts with {magic!r}, not {_GGUF_MAGIC!r}); "
                        "pass a llama.cpp .gguf model")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, OverflowError) as e:
        # The reader memory-maps the file and fails in reshapes when it ends early.
        raise GGUFError(f"{path}: cannot parse the GGUF file ({e}); it is probably truncated or corrupt, "
                        "download it again") from e


def _hf_config(reader, arch: str, tensor_names: set[str], path) -> dict[str, Any]:
    """The LlamaConfig dict that `reader`'s `{arch}.*` and `tokenizer.ggml.*` metadata describe."""

    def required(key: str):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise GGUFError(f"{path}: GGUF metadata lacks {arch}.{key}; the file is not a complete "
                            f"{arch} checkpoint")
        return value

    if "rope_freqs.weight" in tensor_names:
        raise GGUFError(
            f"{path}: this GGUF stores Llama 3.1-style rope scaling only as a precomputed rope_freqs "
            "tensor, from which the HF rope_scaling parameters cannot be recovered; convert the model "
            "from its Hugging Face checkpoint instead")
    if _field(reader, f"{arch}.expert_count", 0):
        raise GGUFError(f"{path}: mixture-of-experts {arch} GGUF files are not supported")

    hidden = int(required("embedding_length"))
    num_heads = _scalar_heads(required("attention.head_count"), "attention.head_count", path)
    num_kv_heads = _scalar_heads(
        _field(reader, f"{arch}.attention.head_count_kv", num_heads), "attention.head_count_kv", path)
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // num_heads))
    value_dim = int(_field(reader, f"{arch}.attention.value_length", head_dim))
    rope_dim = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
    if value_dim != head_dim or rope_dim != head_dim:
        raise GGUFError(
            f"{path}: key_length={head_dim}, value_length={value_dim}, rope.dimension_count={rope_dim} "
            "differ; only full-width rotary attention with equal key and value widths is supported")
    vocab_size = _field(reader, f"{arch}.vocab_size")
    if vocab_size is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab_size = len(tokens.data) if tokens is not None else None
    if vocab_size is None:
        raise GGUFError(f"{path}: GGUF metadata gives no vocabulary size ({arch}.vocab_size or "
                        "tokenizer.ggml.tokens)")

    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab_size),
        "hidden_size": hidden,
        "intermediate_size": int(required("feed_forward_length")),
        "num_hidden_layers": int(required("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rms_norm_eps": float(required("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(required("context_length")),
        # llama.cpp omits the output matrix exactly when it is the embedding.
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
    }
    rope_scaling = _rope_scaling(reader, arch, path)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    for hf_key, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                             ("pad_token_id", "padding_token_id")):
        token_id = _field(reader, f"tokenizer.ggml.{gguf_key}")
        if token_id is not None:
            config[hf_key] = int(token_id)
    return config


def _rope_scaling(reader, arch: str, path) -> dict[str, Any] | None:
    """HF `rope_scaling` from `{arch}.rope.scaling.*`, or None when the file has none."""
    rope_type = _field(reader, f"{arch}.rope.scaling.type", "none")
    if rope_type == "none":
        return None
    factor = _field(reader, f"{arch}.rope.scaling.factor")
    if factor is None:
        raise GGUFError(f"{path}: {arch}.rope.scaling.type is {rope_type!r} but rope.scaling.factor is missing")
    scaling: dict[str, Any] = {"rope_type": rope_type, "factor": float(factor)}
    original_context = _field(reader, f"{arch}.rope.scaling.original_context_length")
    if original_context is not None:
        scaling["original_max_position_embeddings"] = int(original_context)
    return scaling


def _scalar_heads(value, key: str, path) -> int:
    if isinstance(value, list):
        raise GGUFError(f"{path}: per-layer {key} ({value}) is not supported; all layers must share it")
    return int(value)


def _field(reader, key: str, default=None):
    """The Python value of GGUF metadata `key` (str, int, float, bool, or a list), or `default`.

    float32 values come back as the shortest decimal with the same float32 (1e-05, not
    9.999999747378752e-06): that is the number the model's authors wrote before llama.cpp stored it.
    """
    field = reader.fields.get(key)
    if field is None:
        return default
    values = [_part_value(field.parts[i], field.types[-1]) for i in field.data]
    return values if field.types[0] == gguf.GGUFValueType.ARRAY else values[0]


def _part_value(part: np.ndarray, value_type: gguf.GGUFValueType):
    if value_type == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    scalar = part[0]
    if value_type == gguf.GGUFValueType.FLOAT32:
        return float(str(np.float32(scalar)))
    if value_type == gguf.GGUFValueType.BOOL:
        return bool(scalar)
    return scalar.item()


def _hf_tensor_name(gguf_name: str, num_layers: int, path) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_TENSORS and int(match.group(1)) < num_layers:
        return f"model.layers.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}"
    raise GGUFError(f"{path}: unexpected tensor {gguf_name!r} for a {num_layers}-layer llama GGUF; the "
                    "file holds parts (biases, experts, extra layers) metajax's Llama does not have")


def _expected_shapes(hf_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for the config (no `lm_head.weight` when tied)."""
    d, f = hf_config["hidden_size"], hf_config["intermediate_size"]
    q_rows = hf_config["num_attention_heads"] * hf_config["head_dim"]
    kv_rows = hf_config["num_key_value_heads"] * hf_config["head_dim"]
    layer = {
        "input_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (q_rows, d),
        "self_attn.k_proj.weight": (kv_rows, d),
        "self_attn.v_proj.weight": (kv_rows, d),
        "self_attn.o_proj.weight": (d, q_rows),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    shapes = {"model.embed_tokens.weight": (hf_config["vocab_size"], d), "model.norm.weight": (d,)}
    if not hf_config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (hf_config["vocab_size"], d)
    for i in range(hf_config["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    return shapes


def _unpermute_rotary_rows(weight: np.ndarray, head_dim: int) -> np.ndarray:
    """HF row order for a q/k projection float32[heads * head_dim, hidden] stored by llama.cpp.

    llama.cpp's converter interleaves each head's rows (`reshape(heads, 2, head_dim // 2, ...)
    .swapaxes(1, 2)`) so its rope rotates adjacent pairs; HF rotates the two halves of a head.
    """
    heads = weight.shape[0] // head_dim
    return weight.reshape(heads, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


if __name__ == "__main__":
    main()
