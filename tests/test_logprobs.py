"""Sequence and chain log-probabilities against transformers' logits passed through torch.log_softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.batching import bucket, length_bucket, pad_rows
from metajax.models import load_hf
from metajax.models import forward, init_params
from metajax.models.config import ModelConfig
from metajax.models.logprobs import (chain_logprobs, score_continuations, score_sequences, sequence_logprobs,
                                     token_logprobs)

# Sums over up to 54 targets agree with transformers to a few 1e-5 (float32 logits within 1e-4 at
# worst); 1e-3 leaves room for that, while scoring the wrong position or token moves a sum by O(1).
ATOL = 1e-3


def _reference_token_logprobs(ckpt, tokens):
    """float64[len(tokens)]: log p(tokens[t] | tokens[:t]) from transformers for one unpadded
    sequence (entry 0, which has no context, is 0)."""
    import torch
    logits = torch.as_tensor(ckpt.logits(np.asarray(tokens)[None])[0, :-1], dtype=torch.float64)
    logp = torch.log_softmax(logits, dim=-1).numpy()
    return np.concatenate([[0.0], logp[np.arange(len(tokens) - 1), np.asarray(tokens)[1:]]])


def _reference_logprob(ckpt, context, answer):
    """log p(answer | context) from transformers."""
    return _reference_token_logprobs(ckpt, list(context) + list(answer))[len(context):].sum()


@pytest.fixture(scope="module")
def llama3(hf_checkpoint):
    ckpt = hf_checkpoint("llama3")
    params, cfg = load_hf(ckpt.path)
    return ckpt, params, cfg


def test_sequence_logprobs_match_transformers(llama3):
    ckpt, params, cfg = llama3
    rng = np.random.default_rng(0)
    lengths, context, width = (64, 50, 33, 12), 10, 64
    tokens = rng.integers(1, cfg.vocab_size, (len(lengths), width), dtype=np.int32)
    attention_mask = np.arange(width)[None] < np.array(lengths)[:, None]  # right padding
    target_mask = attention_mask & (np.arange(width)[None] >= context)

    ours = np.asarray(sequence_logprobs(params, cfg, tokens, target_mask, attention_mask=attention_mask))

    expected = [_reference_logprob(ckpt, row[:context], row[context:n]) for row, n in zip(tokens, lengths)]
    assert ours.shape == (len(lengths),) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=0)


TINY = ModelConfig.of("llama", vocab_size=100, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2)


def _full_vocabulary_reference(params, tokens, temperature):
    """(log p, entropy) [batch, seq - 1] from the whole float32 logits tensor, softmax at `temperature`."""
    logits = forward(params, TINY, tokens)[:, :-1] / temperature[:, None, None]
    logp = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return picked, -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def test_completion_len_scores_the_last_tokens_only():
    params = init_params(TINY, jax.random.key(0), std=0.2)
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 0, TINY.vocab_size)
    temperature = jnp.array([1.0, 0.5, 2.0])
    full = token_logprobs(params, TINY, tokens, temperature=temperature)
    for completion_len in (1, 4, 8):
        cut = token_logprobs(params, TINY, tokens, temperature=temperature, completion_len=completion_len)
        for ours, want in zip(cut, full):
            assert ours.shape == (3, completion_len)
            np.testing.assert_allclose(ours, want[:, -completion_len:], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="completion_len=9"):
        token_logprobs(params, TINY, tokens, completion_len=9)


@pytest.mark.parametrize("vocab_chunk", [100, 32, 7])
def test_chunked_token_logprobs_and_entropy_equal_the_full_vocabulary_ones(vocab_chunk):
    """Chunks that divide the vocabulary and chunks that leave a padded last chunk, gradients included."""
    params = init_params(TINY, jax.random.key(0), std=0.2)
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 0, TINY.vocab_size)
    temperature = jnp.array([1.0, 0.5, 2.0])

    def ours(p):
        logp, entropy = token_logprobs(p, TINY, tokens, temperature=temperature, vocab_chunk=vocab_chunk)
        return logp[:, 1:], entropy[:, 1:]

    logp, entropy = ours(params)
    want_logp, want_entropy = _full_vocabulary_reference(params, tokens, temperature)
    assert np.all(np.asarray(token_logprobs(params, TINY, tokens)[0][:, 0]) == 0.0)
    np.testing.assert_allclose(logp, want_logp, atol=1e-5, rtol=0)
    np.testing.assert_allclose(entropy, want_entropy, atol=1e-5, rtol=0)

    def objective(fn):
        return lambda p: jnp.sum(fn(p)[0] * jnp.arange(8.0)) + jnp.sum(fn(p)[1])

    grads = jax.grad(objective(ours))(params)
    want = jax.grad(objective(lambda p: _full_vocabulary_reference(p, tokens, temperature)))(params)
    for ours_leaf, want_leaf in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(ours_leaf, want_leaf, atol=1e-4 * float(np.abs(want_leaf).max()) + 1e-7)


def test_chain_logprobs_match_separately_scored_sequences(llama3):
    ckpt, params, cfg = llama3
    rng = np.random.default_rng(2)

    def draw(*lengths):
        return [rng.integers(1, cfg.vocab_size, n).tolist() for n in lengths]

    prompts, thoughts, answers = draw(3, 7, 1), draw(0, 12, 5), draw(2, 1, 6)
    direct = draw(4)[0]

    with_chain, without = chain_logprobs(params, cfg, prompts, thoughts, answers, direct_thought=direct)

    expected_chain = [_reference_logprob(ckpt, p + t, a) for p, t, a in zip(prompts, thoughts, answers)]
    expected_direct = [_reference_logprob(ckpt, p + direct, a) for p, a in zip(prompts, answers)]
    assert with_chain.shape == without.shape == (3,)
    np.testing.assert_allclose(with_chain, expected_chain, atol=ATOL, rtol=0)
    np.testing.assert_allclose(without, expected_direct, atol=ATOL, rtol=0)
    # Row 0 has an empty thought: both scores are of the same answer after prompt + (nothing | direct).
    assert not np.isclose(with_chain[0], without[0])


def test_score_sequences_over_several_batches(llama3):
    """Nine ragged sequences in batches of 8 (the second holds one real row), with targets anywhere
    after the first token."""
    ckpt, params, cfg = llama3
    rng = np.random.default_rng(3)
    lengths = (32, 2, 17, 9, 25, 3, 30, 11, 20)
    sequences = []
    for n in lengths:
        mask = rng.random(n) < 0.5
        mask[0], mask[rng.integers(1, n)] = False, True
        sequences.append((rng.integers(1, cfg.vocab_size, n).tolist(), mask.tolist()))

    ours = score_sequences(params, cfg, sequences, batch_size=8)

    expected = [_reference_token_logprobs(ckpt, tokens)[mask].sum() for tokens, mask in sequences]
    np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=0)


def test_shared_prefix_scores_match_transformers_on_the_whole_sequences(llama3):
    """Five prefixes (1 to 90 tokens) with 1 to 4 continuations each, in calls of two groups (so the last
    call pads a group and candidates), targets from a continuation's first token on or later: each
    sum equals transformers' over prefix + continuation, and `score_sequences` on the same rows."""
    ckpt, params, cfg = llama3
    rng = np.random.default_rng(4)
    groups = []
    for prefix_len, count in zip((1, 90, 17, 40, 5), (4, 1, 3, 2, 4)):
        continuations = []
        for _ in range(count):
            n = int(rng.integers(1, 30))
            mask = np.zeros(n, bool)
            mask[int(rng.integers(0, n)):] = True
            continuations.append((rng.integers(1, cfg.vocab_size, n).tolist(), mask.tolist()))
        groups.append((rng.integers(1, cfg.vocab_size, prefix_len).tolist(), continuations))

    ours = score_continuations(params, cfg, groups, batch_size=8)

    whole = [(prefix + tokens, [False] * len(prefix) + mask) for prefix, conts in groups for tokens, mask in conts]
    expected = [_reference_token_logprobs(ckpt, tokens)[mask].sum() for tokens, mask in whole]
    assert [len(x) for x in ours] == [len(conts) for _, conts in groups]
    np.testing.assert_allclose(np.concatenate(ours), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.concatenate(ours), score_sequences(params, cfg, whole), atol=1e-4, rtol=0)


def test_chain_logprobs_share_a_prompt_across_its_chains(llama3):
    """RaM's group: K = 3 chains of one question and one chain of another; each question's prompt and
    direct answer run once, and every score is still its own sequence's."""
    ckpt, params, cfg = llama3
    rng = np.random.default_rng(5)
    question, other = rng.integers(1, cfg.vocab_size, 20).tolist(), rng.integers(1, cfg.vocab_size, 9).tolist()
    prompts = [question, question, question, other]
    thoughts = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (6, 11, 0, 4)]
    answers = [[7, 8], [7, 8], [7, 8], [9]]

    with_chain, without = chain_logprobs(params, cfg, prompts, thoughts, answers, direct_thought=[3], batch_size=4)

    np.testing.assert_allclose(with_chain, [_reference_logprob(ckpt, p + t, a) for p, t, a in
                                            zip(prompts, thoughts, answers)], atol=ATOL, rtol=0)
    np.testing.assert_allclose(without, [_reference_logprob(ckpt, p + [3], a) for p, a in zip(prompts, answers)],
                               atol=ATOL, rtol=0)
    assert without[0] == without[1] == without[2]


@pytest.mark.parametrize("groups,message", [
    ([([], [([1], [True])])], "group 0: the prefix is empty"),
    ([([1], [([1, 2], [True])])], "group 0, continuation 0: 2 tokens but a target mask of 1"),
    ([([1], [([1], [True])]), ([1], [([1], [True]), ([2], [False])])], "group 1, continuation 1 has no target"),
])
def test_score_continuations_rejects_bad_inputs(llama3, groups, message):
    _, params, cfg = llama3
    with pytest.raises(ValueError, match=message):
        score_continuations(params, cfg, groups)


@pytest.mark.parametrize("prompts,thoughts,answers,message", [
    ([[1], [2]], [[3]], [[4], [5]], "got 2 prompts, 1 thoughts and 2 answers"),
    ([[1], [2]], [[3], [3]], [[4], []], "triple 1: the answer is empty"),
    ([[]], [[3]], [[4]], "triple 0: the prompt is empty"),
])
def test_chain_logprobs_rejects_bad_inputs(llama3, prompts, thoughts, answers, message):
    _, params, cfg = llama3
    with pytest.raises(ValueError, match=message):
        chain_logprobs(params, cfg, prompts, thoughts, answers)


@pytest.mark.parametrize("sequences,message", [
    ([([1, 2, 3], [False, True])], "sequence 0: 3 tokens but a target mask of 2"),
    ([([1, 2], [False, True]), ([1, 2], [False, False])], "sequence 1 has no target token to score"),
])
def test_score_sequences_rejects_bad_inputs(llama3, sequences, message):
    _, params, cfg = llama3
    with pytest.raises(ValueError, match=message):
        score_sequences(params, cfg, sequences)


# ----------------------------------------------------------------------------------------------
# The padding helpers chain_logprobs and score_sequences batch with.


@pytest.mark.parametrize("n,minimum,expected", [(0, 16, 16), (1, 16, 16), (16, 16, 16), (17, 16, 32),
                                                (100, 16, 128), (1, 1, 1), (3, 1, 4), (64, 1, 64)])
def test_bucket(n, minimum, expected):
    assert bucket(n, minimum=minimum) == expected


@pytest.mark.parametrize("n,expected", [(1, 16), (17, 32), (128, 128), (129, 160), (200, 224), (257, 320),
                                        (896, 896), (903, 1024), (1025, 1280), (1500, 1536)])
def test_length_bucket_steps_four_times_per_octave_above_128(n, expected):
    assert length_bucket(n) == expected
    assert expected - n < max(expected / 5, 16)  # the padding wasted


@pytest.mark.parametrize("left", [False, True])
def test_pad_rows(left):
    tokens, mask = pad_rows([[5, 6, 7], [8], []], length=4, pad_id=9, left=left)
    if left:
        expected = [[9, 5, 6, 7], [9, 9, 9, 8], [9, 9, 9, 9]]
    else:
        expected = [[5, 6, 7, 9], [8, 9, 9, 9], [9, 9, 9, 9]]
    assert tokens.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(mask, np.array(expected) != 9)


def test_pad_rows_rejects_rows_longer_than_the_length():
    with pytest.raises(ValueError, match="row 1 has 3 tokens, more than the padded length 2"):
        pad_rows([[1], [1, 2, 3]], length=2)
