"""The toy pretraining run, and the properties of the models shipped in metajax/assets/toy_model and
metajax/assets/toy_thinker."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

from metajax.sampling import Policy
from metajax.algorithms.toy_pretrain import (DEFAULT_OUT_DIR, SHIPPED_WORLD, ToyPretrainConfig, accuracy_table,
                                             eval_questions, format_table, pack_corpus, run_toy_pretrain)
from metajax.data import toy
from metajax.models import forward, load_hf
from metajax.pipelines import TOY_MODEL_DIRS


def test_pack_corpus_wraps_each_text_in_bos_and_eos_and_masks_only_bos():
    texts = ["[User] 12+3=?\n[Assistant] 15\n", "[User] 7=?\n[Assistant] 7\n"]
    rows = pack_corpus(texts, seq_len=16)
    stream = [t for tokens, _ in rows for t in tokens]
    mask = [m for _, row_mask in rows for m in row_mask]
    expected = []
    for text in texts:  # independent of the tokenizer: one id per character
        expected += [toy.BOS_ID] + [len(toy.SPECIAL_TOKENS) + toy.CHARACTERS.index(c) for c in text] + [toy.EOS_ID]
    assert stream == expected
    assert mask == [t != toy.BOS_ID for t in expected]
    assert [len(tokens) for tokens, _ in rows] == [16] * (len(expected) // 16) + [len(expected) % 16]


def test_config_rejects_heads_that_do_not_split_hidden():
    with pytest.raises(ValueError, match="num_heads"):
        ToyPretrainConfig(hidden_size=30, num_heads=4)


def test_tiny_run_writes_a_loadable_checkpoint_and_its_loss_falls(tmp_path):
    world = toy.ToyWorldConfig(min_operands=2, max_operands=3, n_train=0, n_eval=16)
    config = ToyPretrainConfig(world=world, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                               corpus_size=256, seq_len=64, batch_size=8, epochs=3, learning_rate=1e-2,
                               out_dir=str(tmp_path / "model"), eval_per_level=0)
    out = run_toy_pretrain(config, run_dir=tmp_path / "run", progress=False)

    loss = json.loads((tmp_path / "run" / "toy_pretrain.json").read_text())["loss"]
    # Untrained, the loss is about log(vocab) = 4.6; a few dozen updates learn the fixed format.
    assert loss[0] > 4.0
    assert np.mean(loss[-5:]) < 0.7 * loss[0]

    params, cfg = load_hf(out)
    assert cfg == config.model_config()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("[User] 12+34=?\n")["input_ids"]
    assert ids[0] == toy.BOS_ID and tokenizer.decode(ids, skip_special_tokens=True) == "[User] 12+34=?\n"
    assert tokenizer.eos_token_id in cfg.eos_token_ids
    logits = forward(params, cfg, jnp.asarray([ids]))
    assert logits.shape == (1, len(ids), cfg.vocab_size) and bool(jnp.isfinite(logits).all())


def _table(directory):
    params, cfg = load_hf(directory)
    policy = Policy.of(params, cfg, AutoTokenizer.from_pretrained(directory))
    rows = accuracy_table(policy, eval_questions(SHIPPED_WORLD, 40), max_new_tokens=128, batch_size=256)
    print(format_table(rows))
    return {r.difficulty: r for r in rows}


@pytest.fixture(scope="module")
def shipped_table():
    return _table(DEFAULT_OUT_DIR)


def test_thinking_base_thinks_everywhere_but_can_answer_easy_sums_directly():
    # Measured on up to 200 questions a level (assets/toy_thinker/README.md): it opens a thought on
    # every question by itself; forced to answer directly it is right 1.00, 0.96, 0.73, 0.21, 0.07.
    table = _table(TOY_MODEL_DIRS["toy_thinker"])
    levels = sorted(table)
    assert all(table[level].own_thought_rate >= 0.95 for level in levels), table
    assert all(table[level].thought >= 0.9 for level in levels), table
    assert table[levels[0]].direct >= 0.9 and table[levels[1]].direct >= 0.85
    assert table[levels[-1]].direct < 0.5


def test_shipped_model_is_small(shipped_table):
    params, _ = load_hf(DEFAULT_OUT_DIR)
    assert sum(x.size for x in jax.tree.leaves(params)) < 3_000_000


def test_shipped_model_answers_easy_questions_directly_but_not_hard_ones(shipped_table):
    # Measured on up to 200 questions a level: direct 1.00, 0.96, 0.81, 0.47, 0.20 (README.md).
    levels = sorted(shipped_table)
    direct = [shipped_table[level].direct for level in levels]
    assert direct[0] >= 0.9
    assert direct[-1] < 0.5
    assert all(later <= earlier + 0.05 for earlier, later in zip(direct, direct[1:])), direct


def test_shipped_model_answers_after_a_thought(shipped_table):
    # Measured on up to 200 questions a level: 1.00, 0.99, 0.99, 1.00, 0.99 (README.md).
    for level, row in shipped_table.items():
        assert row.thought >= 0.85, row
    hardest = shipped_table[max(shipped_table)]
    assert hardest.thought - hardest.direct >= 0.25, hardest
