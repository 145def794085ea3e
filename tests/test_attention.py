"""Every attention implementation against the plain reference: outputs and gradients, with padding
and packed segments, across several query blocks; and decode attention against full attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.models import ModelConfig, forward, init_params
from metajax.models.attention import (ATTENTION_IMPLEMENTATIONS, attention, blockwise_attention, decode_attention,
                                      prefix_attention, reference_attention)
from metajax.models.decode import cpu_decode_layout, decode_step, prefill

B, T, HQ, HKV, HD = 2, 37, 4, 2, 8  # 37 tokens: blocks of 8 leave a partial last block


def _inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (B, T, HQ, HD))
    k = jax.random.normal(keys[1], (B, T, HKV, HD))
    v = jax.random.normal(keys[2], (B, T, HKV, HD))
    index = np.arange(T)
    valid = np.ones((B, T), bool)
    valid[1, :5] = False  # row 1 is left-padded
    segments = np.zeros((B, T), np.int32)
    segments[0, 20:] = 1  # row 0 packs two sequences
    allowed = (index[None, :] <= index[:, None])[None] & valid[:, None, :] & (segments[:, None, :] == segments[:, :, None])
    # Queries that see no key (padding) produce implementation-defined values; compare the rest.
    return q, k, v, jnp.asarray(allowed), jnp.asarray(allowed.any(-1))


@pytest.mark.parametrize("implementation", [i for i in ATTENTION_IMPLEMENTATIONS if i != "reference"])
def test_each_implementation_matches_the_reference_with_its_gradients(implementation, monkeypatch):
    import metajax.models.attention as attention_module
    monkeypatch.setattr(attention_module, "ATTENTION_BLOCK", 8)
    q, k, v, allowed, real = _inputs()
    weights = jax.random.normal(jax.random.key(1), (B, T, HQ, HD)) * real[..., None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * weights)

    ours = lambda q, k, v: attention(q, k, v, allowed, implementation=implementation, causal=True)
    ref = lambda q, k, v: reference_attention(q, k, v, allowed)
    out, expected = ours(q, k, v), ref(q, k, v)
    np.testing.assert_allclose(np.where(real[..., None, None], out, 0), np.where(real[..., None, None], expected, 0),
                               atol=2e-6, rtol=2e-6)
    grads = jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2))(q, k, v)
    expected_grads = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
    for name, g, e in zip("qkv", grads, expected_grads):
        np.testing.assert_allclose(g, e, atol=2e-5, rtol=2e-5, err_msg=f"d loss / d {name}")


def test_blockwise_blocks_skip_nothing_a_query_sees():
    """Block sizes that do and do not divide the length, and one block covering everything, agree."""
    q, k, v, allowed, real = _inputs(seed=3)
    outs = [blockwise_attention(q, k, v, allowed, block=size) for size in (5, 8, 64)]
    for out in outs[1:]:
        np.testing.assert_allclose(np.where(real[..., None, None], out, 0), np.where(real[..., None, None], outs[0], 0),
                                   atol=2e-6, rtol=2e-6)


def test_blockwise_needs_a_causal_mask():
    q, k, v, allowed, _ = _inputs()
    with pytest.raises(ValueError, match="causal"):
        attention(q, k, v, allowed, implementation="blockwise", causal=False)


def test_an_unknown_implementation_is_refused_by_the_config():
    with pytest.raises(ValueError, match="attention='flash' is not one of"):
        ModelConfig.of("llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, attention="flash")


def test_forward_logits_agree_across_implementations_over_several_blocks():
    cfg = ModelConfig.of("llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=512)
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 300), 0, 64)  # 300 > 2 * ATTENTION_BLOCK
    mask = jnp.ones((2, 300), bool).at[1, :40].set(False)
    logits = {name: forward(params, dataclasses.replace(cfg, attention=name), tokens, attention_mask=mask)
              for name in ATTENTION_IMPLEMENTATIONS}
    for name in ATTENTION_IMPLEMENTATIONS:
        np.testing.assert_allclose(np.asarray(logits[name])[mask], np.asarray(logits["reference"])[mask],
                                   atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("unstacked", [False, True])
def test_decode_attention_equals_full_attention_over_the_same_keys(unstacked):
    """A prefill plus two decode steps gives the logits a full forward gives at those positions,
    over stacked layers and over per-layer buffers (`cpu_decode_layout`, the XLA:CPU decode loop's)."""
    cfg = ModelConfig.of("llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=128)
    params = init_params(cfg, jax.random.key(0))
    prompt = jax.random.randint(jax.random.key(2), (2, 12), 0, 64)
    mask = jnp.ones((2, 12), bool).at[0, :3].set(False)  # left padding
    extra = jnp.array([[5, 9], [7, 1]], jnp.int32)
    _, cache = prefill(params, cfg, prompt, mask, num_samples=1, max_new_tokens=4)
    step_params, cache = cpu_decode_layout(params, cache) if unstacked else (params, cache)
    positions = jnp.sum(mask, axis=1, dtype=jnp.int32)[:, None]
    step_logits = []
    for i in range(2):
        logits, cache = decode_step(step_params, cfg, extra[:, i:i + 1], positions + i, cache, jnp.int32(i))
        step_logits.append(logits[:, 0])
    full = forward(params, cfg, jnp.concatenate([prompt, extra], axis=1),
                   attention_mask=jnp.concatenate([mask, jnp.ones((2, 2), bool)], axis=1))
    np.testing.assert_allclose(np.stack(step_logits, 1), full[:, 12:], atol=1e-5, rtol=1e-5)
    k, prompt_k = (jnp.stack(cache.k), jnp.stack(cache.prompt_k)) if unstacked else (cache.k, cache.prompt_k)
    assert k.shape == (2, 2, 1, 2, 8, 4) and prompt_k.shape == (2, 2, 2, 8, 12)  # keys [.., hd, slots]


def test_decode_attention_ignores_unwritten_slots():
    keys = jax.random.split(jax.random.key(4), 6)
    q = jax.random.normal(keys[0], (1, 2, 4, 8))
    k_self, v_self = jax.random.normal(keys[1], (1, 2, 2, 8)), jax.random.normal(keys[2], (1, 2, 2, 8))
    prompt_k, prompt_v = jax.random.normal(keys[3], (1, 2, 8, 6)), jax.random.normal(keys[4], (1, 2, 6, 8))
    gen = jax.random.normal(keys[5], (1, 2, 2, 8, 5))
    earlier = jnp.arange(5) < 2
    out = decode_attention(q, k_self, v_self, prompt_k, prompt_v, jnp.ones((1, 6), bool), gen,
                           gen.swapaxes(-1, -2), earlier)
    garbage = gen.at[..., 2:].set(1e3)
    out2 = decode_attention(q, k_self, v_self, prompt_k, prompt_v, jnp.ones((1, 6), bool), garbage,
                            gen.swapaxes(-1, -2).at[..., 2:, :].set(-1e3), earlier)
    np.testing.assert_allclose(out, out2, atol=1e-6)


@pytest.mark.parametrize("block", [8, 64])
def test_prefix_attention_equals_full_attention_over_prefix_and_continuation(block):
    """C = 3 continuations of each of 2 prefixes (one left-padded, one continuation right-padded) against
    the reference over [prefix | continuation] keys; 37 query positions in blocks of 8 leave a partial
    last block, blocks of 64 take them at once."""
    c, p = 3, 11
    keys = jax.random.split(jax.random.key(7), 5)
    q = jax.random.normal(keys[0], (B, c, T, HQ, HD))
    k, v = (jax.random.normal(key, (B, c, T, HKV, HD)) for key in keys[1:3])
    prefix_k, prefix_v = (jax.random.normal(key, (B, p, HKV, HD)) for key in keys[3:])
    prefix_mask = np.ones((B, p), bool)
    prefix_mask[1, :4] = False
    valid = np.ones((B, c, T), bool)
    valid[0, 2, 30:] = False
    index = np.arange(T)
    allowed_self = (index[None, :] <= index[:, None]) & valid[:, :, None, :]

    ours = prefix_attention(q, k, v, prefix_k.transpose(0, 2, 3, 1), prefix_v.transpose(0, 2, 1, 3), prefix_mask,
                            allowed_self, block=block)

    flat = lambda x: x.reshape(B * c, *x.shape[2:])  # noqa: E731
    shared = lambda x: jnp.repeat(x, c, axis=0)  # noqa: E731
    allowed = np.concatenate([np.broadcast_to(prefix_mask[:, None, None], (B, c, T, p)), allowed_self], axis=-1)
    want = reference_attention(flat(q), jnp.concatenate([shared(prefix_k), flat(k)], axis=1),
                               jnp.concatenate([shared(prefix_v), flat(v)], axis=1), flat(allowed))
    np.testing.assert_allclose(np.asarray(flat(ours))[flat(valid)], np.asarray(want)[flat(valid)], atol=1e-5)
