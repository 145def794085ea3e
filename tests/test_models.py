"""The decoder against transformers' PyTorch models, and its own modes against each other: padding,
packing, and prefill + decode_step versus one full forward pass.

Compilation dominates the run time on CPU, so the tests share one batch shape (BATCH, SEQ) and always
pass an attention mask: most calls for a config then hit one compiled forward. References for
shorter sequences use causality instead of new shapes: the logits at positions < n of an unpadded
row depend only on its first n tokens, so a sequence of length n is run as the prefix of a full row.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.models import decode_step, forward, load_hf, prefill

jit_forward = jax.jit(forward, static_argnums=1)
jit_prefill = jax.jit(prefill, static_argnums=1, static_argnames=("num_samples", "max_new_tokens", "cache_dtype"))
jit_decode_step = jax.jit(decode_step, static_argnums=1)

# 64 tokens: four times the llama3 config's original context of 16.
BATCH, SEQ = 4, 64


def _tokens(rng, shape, vocab):
    return rng.integers(1, vocab, size=shape, dtype=np.int32)


def _logits(params, cfg, tokens, mask=None):
    """float32[BATCH, SEQ, vocab]; no mask means every token is real."""
    mask = np.ones(tokens.shape, bool) if mask is None else mask
    return np.asarray(jit_forward(params, cfg, tokens, attention_mask=mask))


def _as_prefixes(rng, sequences, vocab):
    """int32[BATCH, SEQ]: each of at most BATCH sequences at the start of its own unpadded row,
    followed by random tokens (spare rows are all random)."""
    assert len(sequences) <= BATCH
    rows = _tokens(rng, (BATCH, SEQ), vocab)
    for row, seq in zip(rows, sequences):
        row[:len(seq)] = seq
    return rows


@pytest.mark.parametrize("name,sharded", [
    ("llama3", False), ("llama3", True), ("llama_linear", False), ("qwen2", True), ("qwen2_tied", False),
    ("qwen3", False), ("qwen3_tied", True),
])
def test_logits_match_transformers(hf_checkpoint, name, sharded):
    ckpt = hf_checkpoint(name, sharded=sharded)
    params, cfg = load_hf(ckpt.path)
    tokens = _tokens(np.random.default_rng(0), (BATCH, SEQ), cfg.vocab_size)

    ours = _logits(params, cfg, tokens)
    reference = ckpt.logits(tokens)

    assert ours.shape == reference.shape == (BATCH, SEQ, cfg.vocab_size)
    assert reference.std() > 0.3  # logits of order one, so 1e-4 is a tight bound
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


def test_config_reads_the_architecture_switches(hf_checkpoint):
    """The parity checkpoints really exercise what they are named after."""
    cfgs = {name: load_hf(hf_checkpoint(name).path)[1] for name in ("llama3", "qwen2_tied", "qwen3")}
    llama3 = cfgs["llama3"]
    assert (llama3.num_heads, llama3.num_kv_heads, llama3.rope_theta) == (4, 2, 5000.0)
    assert llama3.rope_scaling.rope_type == "llama3"
    assert llama3.rope_scaling.original_max_position_embeddings == 16
    assert cfgs["qwen2_tied"].qkv_bias and cfgs["qwen2_tied"].tie_word_embeddings
    assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].head_dim == 24 and not cfgs["qwen3"].tie_word_embeddings


def test_llama3_scaling_changes_logits_past_the_original_context(hf_checkpoint):
    """Guards the parity test against a vacuous pass: at 64 tokens the scaled frequencies matter."""
    params, cfg = load_hf(hf_checkpoint("llama3").path)
    tokens = _tokens(np.random.default_rng(0), (BATCH, SEQ), cfg.vocab_size)
    scaled = _logits(params, cfg, tokens)
    unscaled = _logits(params, dataclasses.replace(cfg, rope_scaling=None), tokens)
    assert np.abs(scaled - unscaled)[:, 16:].max() > 1e-2


def test_bfloat16_params_stay_close_to_float32(hf_checkpoint):
    path = hf_checkpoint("llama3").path
    params32, cfg = load_hf(path)
    params16, _ = load_hf(path, dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params16))
    tokens = _tokens(np.random.default_rng(1), (BATCH, SEQ), cfg.vocab_size)

    logits32 = _logits(params32, cfg, tokens)
    logits16 = _logits(params16, cfg, tokens)

    assert logits16.dtype == np.float32 and np.isfinite(logits16).all()
    # bf16 keeps 8 significant bits: each weight and activation is off by up to 2^-9 ~ 0.2% relative.
    # Independent rounding errors over the ~10 matmuls and norms of two blocks add up to about 1% of
    # the logits' scale; 3% leaves margin yet catches a real error (a wrong layout or a missing norm
    # moves logits by their own scale).
    relative = np.linalg.norm(logits16 - logits32) / np.linalg.norm(logits32)
    assert relative < 0.03
    # Argmax flips only where the top two logits are within that error of each other.
    assert (logits16.argmax(-1) == logits32.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_match_unpadded_rows(hf_checkpoint, side):
    params, cfg = load_hf(hf_checkpoint("llama3").path)
    rng = np.random.default_rng(2)
    rows = [_tokens(rng, (n,), cfg.vocab_size) for n in (SEQ, 41, 17, 5)]
    # Padding ids are random, not 0: attending to padding would change the logits.
    tokens = _tokens(rng, (BATCH, SEQ), cfg.vocab_size)
    mask = np.zeros((BATCH, SEQ), bool)
    for i, row in enumerate(rows):
        span = slice(SEQ - len(row), SEQ) if side == "left" else slice(0, len(row))
        tokens[i, span], mask[i, span] = row, True

    padded = _logits(params, cfg, tokens, mask)
    alone = _logits(params, cfg, _as_prefixes(rng, rows, cfg.vocab_size))

    for i, row in enumerate(rows):
        np.testing.assert_allclose(padded[i][mask[i]], alone[i, :len(row)], atol=1e-5, rtol=0)


def test_packed_segments_match_separate_sequences(hf_checkpoint):
    params, cfg = load_hf(hf_checkpoint("llama3").path)
    rng = np.random.default_rng(3)
    lengths = [(20, 30, 14), (64,), (1, 40, 23), (32, 32)]
    segments = [[_tokens(rng, (n,), cfg.vocab_size) for n in row] for row in lengths]
    tokens = np.stack([np.concatenate(row) for row in segments])
    segment_ids = np.stack([np.repeat(np.arange(len(row), dtype=np.int32), row) for row in lengths])

    packed = np.asarray(jit_forward(params, cfg, tokens, segment_ids=segment_ids))

    flat = [seg for row in segments for seg in row]
    alone = np.concatenate([_logits(params, cfg, _as_prefixes(rng, flat[i:i + BATCH], cfg.vocab_size))
                            for i in range(0, len(flat), BATCH)])[:len(flat)]
    expected = np.stack([np.concatenate([alone[k + j, :n] for j, n in enumerate(row)])
                         for k, row in zip(np.cumsum([0] + [len(r) for r in lengths]), lengths)])
    np.testing.assert_allclose(packed, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache_dtype,atol", [
    (None, 1e-4),
    # A bf16 cache rounds every stored key and value to 8 significant bits (relative error <= 2^-9):
    # attention outputs move by ~0.2% of their scale, and logits of order one (std ~0.8) by a few
    # 1e-3 after two blocks. 2e-2 leaves margin and is still far below what a wrong slot or position does.
    (jnp.bfloat16, 2e-2),
])
def test_decode_steps_match_forward(hf_checkpoint, cache_dtype, atol):
    """Teacher forcing: known continuations fed token by token reproduce the full-sequence logits,
    for left-padded prompts of different lengths and a different continuation per sample."""
    params, cfg = load_hf(hf_checkpoint("llama3").path)
    rng = np.random.default_rng(4)
    prompt_lengths, prompt_width, n, new = (12, 5), 12, 2, 8  # prompt 12 + 8 new > llama3's 16
    batch = len(prompt_lengths)
    prompts = [_tokens(rng, (p,), cfg.vocab_size) for p in prompt_lengths]
    continuations = _tokens(rng, (batch, n, new), cfg.vocab_size)

    padded_prompts = _tokens(rng, (batch, prompt_width), cfg.vocab_size)
    prompt_mask = np.zeros((batch, prompt_width), bool)
    for i, p in enumerate(prompts):
        padded_prompts[i, prompt_width - len(p):], prompt_mask[i, prompt_width - len(p):] = p, True

    first_logits, cache = jit_prefill(params, cfg, padded_prompts, prompt_mask, num_samples=n,
                                      max_new_tokens=new, cache_dtype=cache_dtype)
    if cache_dtype is not None:
        assert cache.k.dtype == cache.prompt_k.dtype == cache_dtype
    step_logits = []
    for t in range(new):
        positions = np.repeat(np.array(prompt_lengths, np.int32)[:, None], n, axis=1) + t
        logits, cache = jit_decode_step(params, cfg, continuations[:, :, t], positions, cache, jnp.int32(t))
        step_logits.append(np.asarray(logits))
    step_logits = np.stack(step_logits, axis=2)  # [batch, n, new, vocab]

    full = [np.concatenate([prompts[i], continuations[i, s]]) for i in range(batch) for s in range(n)]
    reference = _logits(params, cfg, _as_prefixes(rng, full, cfg.vocab_size)).reshape(batch, n, SEQ, -1)
    for i, p in enumerate(prompt_lengths):
        np.testing.assert_allclose(first_logits[i], reference[i, 0, p - 1], atol=atol, rtol=0)
        np.testing.assert_allclose(step_logits[i], reference[i, :, p:p + new], atol=atol, rtol=0)
