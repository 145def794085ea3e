"""Hugging Face checkpoints out and back in: `save_hf` read by transformers, exact round trips,
safe overwrites, and a clear error for every malformed checkpoint."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from metajax.models import CheckpointError, UnsupportedModelError, forward, load_hf, param_specs, save_hf
from metajax.models import weight_files

jit_forward = jax.jit(forward, static_argnums=1)

# The shape test_models.py compiles for, so these tests reuse its compiled forward.
BATCH, SEQ = 4, 64
SMALL_SHARDS = 32 * 1024


def _random_params(cfg, seed):
    """Params drawn with numpy from the declared shapes, independent of `init_params` and the loader:
    matrices of std 0.1 (logits of order one), norms around 1 and biases around 0."""
    rng = np.random.default_rng(seed)

    def draw(spec):
        noise = rng.standard_normal(spec.shape).astype(np.float32)
        scale, offset = {"normal": (0.1, 0.0), "ones": (0.3, 1.0), "zeros": (0.3, 0.0)}[spec.init]
        return jnp.asarray(offset + scale * noise)

    return jax.tree.map(draw, param_specs(cfg), is_leaf=lambda x: hasattr(x, "logical_axes"))


def _write_tokenizer(directory, num_tokens):
    from tokenizers import Tokenizer, models
    vocab = {f"tok{i}": i for i in range(num_tokens)}
    Tokenizer(models.WordLevel(vocab, unk_token="tok0")).save(str(directory / "tokenizer.json"))


def _files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------------------------
# Saving.


@pytest.mark.parametrize("name,sharded", [("qwen2_tied", False), ("llama3", True), ("qwen3", True)])
def test_save_hf_loads_in_transformers_with_the_same_logits(hf_checkpoint, tmp_path, name, sharded):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = load_hf(hf_checkpoint(name).path)[1]
    params = _random_params(cfg, seed=1)
    out = save_hf(params, cfg, tmp_path / "out", **({"max_shard_bytes": SMALL_SHARDS} if sharded else {}))

    shards = sorted(p.name for p in out.glob("*.safetensors"))
    if sharded:
        assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert sorted(set(index["weight_map"].values())) == shards
    else:
        assert shards == ["model.safetensors"]
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tokens = np.random.default_rng(0).integers(1, cfg.vocab_size, (BATCH, SEQ), dtype=np.int32)
    with torch.no_grad():
        reference = model.float().eval()(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()

    ours = np.asarray(jit_forward(params, cfg, tokens, attention_mask=np.ones((BATCH, SEQ), bool)))
    assert reference.std() > 0.3
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("max_shard_bytes", [SMALL_SHARDS, 2**30])
def test_save_then_load_is_exact(hf_checkpoint, tmp_path, max_shard_bytes):
    cfg = load_hf(hf_checkpoint("qwen3_tied").path)[1]
    params = _random_params(cfg, seed=2)
    loaded, loaded_cfg = load_hf(save_hf(params, cfg, tmp_path / "out", max_shard_bytes=max_shard_bytes))
    assert loaded_cfg == cfg
    _assert_trees_equal(loaded, params)


def test_save_in_bfloat16_round_trips(hf_checkpoint, tmp_path):
    cfg = load_hf(hf_checkpoint("qwen2").path)[1]
    params = _random_params(cfg, seed=3)
    out = save_hf(params, cfg, tmp_path / "out", dtype=jnp.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded, _ = load_hf(out, dtype=jnp.bfloat16)
    _assert_trees_equal(loaded, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_overwrite_keeps_other_files_and_drops_stale_shards(hf_checkpoint, tmp_path):
    cfg = load_hf(hf_checkpoint("llama3").path)[1]
    path = tmp_path / "ckpt"
    save_hf(_random_params(cfg, seed=4), cfg, path, max_shard_bytes=SMALL_SHARDS)
    _write_tokenizer(path, 100)
    (path / "README.md").write_text("model card")
    tokenizer = (path / "tokenizer.json").read_bytes()

    new_params = _random_params(cfg, seed=5)
    save_hf(new_params, cfg, path)

    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                      "tokenizer.json"]
    assert (path / "tokenizer.json").read_bytes() == tokenizer
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    _assert_trees_equal(load_hf(path)[0], new_params)


def test_interrupted_save_leaves_the_previous_checkpoint(hf_checkpoint, tmp_path, monkeypatch):
    cfg = load_hf(hf_checkpoint("llama3").path)[1]
    path = tmp_path / "ckpt"
    old_params = _random_params(cfg, seed=6)
    save_hf(old_params, cfg, path, max_shard_bytes=SMALL_SHARDS)
    _write_tokenizer(path, 100)
    before = _files(path)

    write = weight_files._write_safetensors
    calls = []

    def write_then_fail(file, tensors):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        write(file, tensors)

    monkeypatch.setattr(weight_files, "_write_safetensors", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_hf(_random_params(cfg, seed=7), cfg, path, max_shard_bytes=SMALL_SHARDS)

    assert len(calls) == 2  # the failure came after one shard was written
    assert _files(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or backup directory left
    _assert_trees_equal(load_hf(path)[0], old_params)


def test_overwrite_keeps_subdirectories(hf_checkpoint, tmp_path):
    cfg = load_hf(hf_checkpoint("qwen2").path)[1]
    path = tmp_path / "ckpt"
    save_hf(_random_params(cfg, seed=9), cfg, path)
    (path / "original").mkdir()
    (path / "original" / "params.json").write_text("{}")
    save_hf(_random_params(cfg, seed=10), cfg, path)
    assert (path / "original" / "params.json").read_text() == "{}"


def test_failed_swap_restores_the_previous_checkpoint(hf_checkpoint, tmp_path, monkeypatch):
    cfg = load_hf(hf_checkpoint("qwen2").path)[1]
    path = tmp_path / "ckpt"
    save_hf(_random_params(cfg, seed=11), cfg, path)
    before = _files(path)
    rename, calls = Path.rename, []

    def rename_then_fail(self, target):
        calls.append(self)
        if len(calls) == 2:  # the old checkpoint is set aside; now moving the new one in fails
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_then_fail)
    with pytest.raises(OSError, match="rename failed"):
        save_hf(_random_params(cfg, seed=12), cfg, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert _files(path) == before


def test_save_refuses_to_overwrite_when_asked(hf_checkpoint, tmp_path):
    cfg = load_hf(hf_checkpoint("qwen2").path)[1]
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError, match="exists; pass overwrite=True"):
        save_hf(_random_params(cfg, seed=8), cfg, tmp_path / "ckpt", overwrite=False)


# ----------------------------------------------------------------------------------------------
# Loading malformed checkpoints.


@pytest.fixture
def checkpoint_copy(hf_checkpoint, tmp_path):
    """`copy(name, sharded=False) -> Path`: a private copy of a session checkpoint to break."""
    def copy(name="llama3", sharded=False):
        return shutil.copytree(hf_checkpoint(name, sharded=sharded).path, tmp_path / "ckpt")
    return copy


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _edit_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory .*nowhere does not exist"):
        load_hf(tmp_path / "nowhere")


def test_missing_config(checkpoint_copy):
    path = checkpoint_copy()
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_hf(path)


def test_no_weights(checkpoint_copy):
    path = checkpoint_copy()
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors"):
        load_hf(path)


def test_missing_shard(checkpoint_copy):
    path = checkpoint_copy(sharded=True)
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint shard .*{shard.name} is missing"):
        load_hf(path)


def test_shards_without_index(checkpoint_copy):
    path = checkpoint_copy(sharded=True)
    (path / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="has safetensors shards but no model.safetensors.index.json"):
        load_hf(path)


def test_tensor_of_the_wrong_shape(checkpoint_copy):
    path = checkpoint_copy()
    name = "model.layers.1.self_attn.k_proj.weight"  # [2 kv heads * 16, 64]
    _edit_tensors(path, lambda t: t.update({name: np.zeros((40, 64), np.float32)}))
    message = rf"tensor {name} has shape \(40, 64\), but config.json implies \(32, 64\)"
    with pytest.raises(CheckpointError, match=message):
        load_hf(path)


def test_missing_tensor(checkpoint_copy):
    path = checkpoint_copy()
    _edit_tensors(path, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*model\.layers\.0\.mlp\.up_proj\.weight"):
        load_hf(path)


def test_embedding_rows_do_not_match_vocab_size(checkpoint_copy):
    path = checkpoint_copy()
    _edit_config(path, vocab_size=200)
    message = "vocabulary mismatch: .* has 160 rows but config.json says vocab_size=200"
    with pytest.raises(CheckpointError, match=message):
        load_hf(path)


def test_tokenizer_larger_than_vocabulary(checkpoint_copy):
    path = checkpoint_copy()
    _write_tokenizer(path, 160)  # exactly the embedding size: fine
    load_hf(path)
    _write_tokenizer(path, 161)
    with pytest.raises(CheckpointError, match="tokenizer.json has 161 tokens but the model's vocab_size is 160"):
        load_hf(path)


def test_pickle_weights_are_refused_unless_allowed(hf_checkpoint, tmp_path):
    import torch
    ckpt = hf_checkpoint("qwen2_tied")
    path = tmp_path / "ckpt"
    ckpt.model.config.save_pretrained(path)
    # The legacy format: a pickled state dict (transformers 5 no longer writes it itself).
    torch.save(ckpt.model.state_dict(), path / "pytorch_model.bin")

    with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model.bin\).*execute arbitrary "
                                              r"code.*save_pretrained\(out, safe_serialization=True\)"):
        load_hf(path)
    from_pickle, _ = load_hf(path, allow_pickle=True)
    _assert_trees_equal(from_pickle, load_hf(ckpt.path)[0])


def test_unsupported_model_type(checkpoint_copy):
    path = checkpoint_copy()
    _edit_config(path, model_type="gpt2")
    message = r"model_type 'gpt2'; metajax supports \['llama', 'qwen2', 'qwen3'\]"
    with pytest.raises(UnsupportedModelError, match=message):
        load_hf(path)


def test_unsupported_rope_type(checkpoint_copy):
    path = checkpoint_copy()
    yarn = dict(rope_type="yarn", factor=4.0, rope_theta=5000.0, original_max_position_embeddings=16)
    _edit_config(path, rope_parameters=yarn, rope_scaling=yarn)  # transformers 5 and 4 spellings
    with pytest.raises(UnsupportedModelError, match=r"rope_type 'yarn' is not supported; supported: .*'llama3'"):
        load_hf(path)


@pytest.mark.parametrize("keep_bytes,message", [(None, "is truncated: tensor .* runs past the end"),
                                                (5, "truncated header")])
def test_truncated_safetensors(checkpoint_copy, keep_bytes, message):
    path = checkpoint_copy()
    file = path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2 if keep_bytes is None else keep_bytes])
    with pytest.raises(CheckpointError, match=message):
        load_hf(path)


def test_a_model_directory_that_ships_python_code_loads_without_running_it(tmp_path):
    """A checkpoint whose config and tokenizer point at Python files (`auto_map`, as Hub repos with
    custom code do) loads from its safetensors and tokenizer.json alone; the files never run."""
    from metajax.config import load_config
    from metajax.pipelines import TOY_MODEL_DIRS, load_policy

    model = tmp_path / "model"
    shutil.copytree(TOY_MODEL_DIRS["toy"], model)
    ran = tmp_path / "ran"
    for name in ("tokenization_custom", "configuration_custom", "modeling_custom"):
        (model / f"{name}.py").write_text(f"open({str(ran / name)!r}, 'w').close()\n"
                                          "from transformers import PreTrainedTokenizerFast as CustomTokenizer\n"
                                          "from transformers import PretrainedConfig as CustomConfig\n")
    for name, auto_map in (("tokenizer_config.json", {"AutoTokenizer": ["tokenization_custom.CustomTokenizer"] * 2}),
                           ("config.json", {"AutoConfig": "configuration_custom.CustomConfig",
                                            "AutoModelForCausalLM": "modeling_custom.CustomModel"})):
        fields = json.loads((model / name).read_text())
        (model / name).write_text(json.dumps({**fields, "auto_map": auto_map}))
    ran.mkdir()
    custom = load_policy(load_config(None, [f"model.path={model}"]))
    toy = load_policy(load_config(None, ["model.path=toy"]))
    assert list(ran.iterdir()) == []
    assert custom.encode("12+34 = 46") == toy.encode("12+34 = 46")
    for a, b in zip(jax.tree.leaves(custom.params), jax.tree.leaves(toy.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
