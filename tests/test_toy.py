"""The toy world: questions, rationales, splits, rendered texts and the character tokenizer."""

import collections
import dataclasses
import os
import re
import string

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hypothesis
import hypothesis.strategies as st
import pytest

from metajax.data import toy

SMALL = toy.ToyWorldConfig(n_train=2000, n_eval=300, seed=3)
PRINTABLE = st.text(alphabet=st.sampled_from(string.printable), max_size=200)


def _operands(question):
    assert question.endswith("=?"), question
    return [int(x) for x in question[:-2].split("+")]


# --- questions and rationales -------------------------------------------------------------------

def test_examples_are_deterministic_by_seed():
    a = toy.make_examples(SMALL, 200, seed=7)
    assert a == toy.make_examples(SMALL, 200, seed=7)
    assert [e.question for e in a] != [e.question for e in toy.make_examples(SMALL, 200, seed=8)]


def test_example_fields_and_answers_match_an_independent_sum():
    for ex in toy.make_examples(SMALL, 500, seed=0):
        ops = _operands(ex.question)
        assert ex.difficulty == len(ops)
        assert all(10 <= x <= 99 for x in ops)
        assert ex.answer == str(sum(ops))
        assert (ex.answer_type, ex.dataset) == ("numeric", "toy")


def test_every_rationale_step_merges_the_first_two_numbers_and_ends_in_the_answer():
    seen = set()
    for ex in toy.make_examples(SMALL, 500, seed=1):
        ops = _operands(ex.question)
        seen.add(len(ops))
        if len(ops) == 1:
            assert ex.rationale == ""
            continue
        steps = ex.rationale.split(" = ")
        assert len(steps) == len(ops)
        assert [int(x) for x in steps[0].split("+")] == ops
        for before, after in zip(steps, steps[1:]):
            numbers = [int(x) for x in before.split("+")]
            assert [int(x) for x in after.split("+")] == [numbers[0] + numbers[1]] + numbers[2:]
        assert steps[-1] == ex.answer
    assert seen == set(range(1, 9))


def test_rationale_of_a_known_question():
    [ex] = [e for e in toy.make_examples(SMALL, 2000, seed=2) if e.difficulty == 3][:1]
    a, b, c = _operands(ex.question)
    assert ex.rationale == f"{a}+{b}+{c} = {a + b}+{c} = {a + b + c}"


def test_difficulty_distribution_follows_the_weights():
    weights = (0.0, 1.0, 2.0, 3.0, 0.0, 4.0, 0.0, 10.0)
    cfg = toy.ToyWorldConfig(difficulty_weights=weights)
    n = 20_000
    counts = collections.Counter(e.difficulty for e in toy.make_examples(cfg, n, seed=0))
    for d, w in zip(range(1, 9), weights):
        p = w / sum(weights)
        # Five binomial standard deviations: the draw is seeded, so this cannot flake.
        assert abs(counts[d] - n * p) <= 5 * (n * p * (1 - p)) ** 0.5 + 1e-9, (d, counts)


def test_difficulties_argument_restricts_and_renormalises():
    cfg = toy.ToyWorldConfig(difficulty_weights=(1, 1, 1, 1, 1, 1, 3, 1))
    counts = collections.Counter(
        e.difficulty for e in toy.make_examples(cfg, 4000, seed=0, difficulties=[7, 8]))
    assert set(counts) == {7, 8}
    assert abs(counts[7] / 4000 - 0.75) < 0.05
    with pytest.raises(ValueError, match="subset"):
        toy.make_examples(cfg, 5, seed=0, difficulties=[9])


def test_splits_are_disjoint_sized_and_deterministic():
    train, eval_ = toy.make_splits(SMALL)
    assert (len(train), len(eval_)) == (2000, 300)
    assert not {e.question for e in train} & {e.question for e in eval_}
    ids = [e.id for e in train + eval_]
    assert len(set(ids)) == len(ids)
    assert toy.make_splits(SMALL) == (train, eval_)
    assert toy.make_splits(dataclasses.replace(SMALL, seed=4))[1] != eval_


def test_split_disjointness_holds_where_questions_are_scarce():
    # 3 operand values x 1 operand: eval takes some, train must avoid them all.
    cfg = toy.ToyWorldConfig(min_operands=1, max_operands=2, operand_min=10, operand_max=12,
                             n_train=200, n_eval=4, seed=0)
    train, eval_ = toy.make_splits(cfg)
    assert not {e.question for e in train} & {e.question for e in eval_}
    assert {e.difficulty for e in train} == {1, 2}


def test_levels_below_held_out_min_operands_may_be_shared_with_training():
    # 2..3 single-digit operands: 100 two-operand questions, and an eval split that takes most.
    cfg = toy.ToyWorldConfig(min_operands=2, max_operands=3, operand_min=0, operand_max=9,
                             n_train=3000, n_eval=600, held_out_min_operands=3, seed=0)
    train, eval_ = toy.make_splits(cfg)
    eval_by_level = {d: {e.question for e in eval_ if e.difficulty == d} for d in (2, 3)}
    train_by_level = {d: {e.question for e in train if e.difficulty == d} for d in (2, 3)}
    assert not train_by_level[3] & eval_by_level[3]
    assert train_by_level[2] & eval_by_level[2]
    assert len(train_by_level[2]) == 100  # every pair is drawn: nothing of level 2 is withheld
    corpus_questions = {(_DIRECT.fullmatch(text) or _THOUGHT.fullmatch(text)).group(1)
                        for text in toy.pretraining_corpus(cfg, 2000, seed=3)}
    assert not corpus_questions & eval_by_level[3]
    assert corpus_questions & eval_by_level[2]
    # Holding out every level leaves level 2 only the pairs the eval split did not take.
    strict_train, strict_eval = toy.make_splits(dataclasses.replace(cfg, held_out_min_operands=1))
    assert strict_eval == eval_
    assert not {e.question for e in strict_train} & {e.question for e in strict_eval}


def test_exhausted_difficulty_is_a_clear_error():
    cfg = toy.ToyWorldConfig(min_operands=1, max_operands=1, operand_min=10, operand_max=11,
                             n_train=5, n_eval=50)
    with pytest.raises(ValueError, match="eval split"):
        toy.make_splits(cfg)


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_operands=0), "min_operands"),
    (dict(min_operands=5, max_operands=4), "min_operands"),
    (dict(operand_min=50, operand_max=40), "operand_min"),
    (dict(difficulty_weights=(1.0, 2.0)), "one weight each"),
    (dict(difficulty_weights=(0.0,) * 8), "positive sum"),
    (dict(p_thought=1.5), "p_thought"),
    (dict(p_thought=(0.5,) * 7 + (1.2,)), "p_thought"),
    (dict(p_thought=(0.5, 0.5)), "one share each"),
    (dict(n_eval=-1), "n_eval"),
    (dict(held_out_min_operands=0), "held_out_min_operands"),
])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toy.ToyWorldConfig(**kwargs)


# --- rendered texts -----------------------------------------------------------------------------

def test_rendered_strings_are_exact():
    assert toy.render_direct("12+7=?", "19") == "[User] 12+7=?\n[Assistant] 19\n"
    assert (toy.render_with_thought("12+7+30=?", "12+7=19 19+30=49", "49")
            == "[User] 12+7+30=?\n<thought> 12+7=19 19+30=49 </thought>\n[Assistant] 49\n")
    with pytest.raises(ValueError, match="render_direct"):
        toy.render_with_thought("37=?", "", "37")


_DIRECT = re.compile(r"\[User\] ([\d+]+=\?)\n\[Assistant\] (\d+)\n")
_THOUGHT = re.compile(
    r"\[User\] ([\d+]+=\?)\n<thought> ([\d+= ]+) </thought>\n\[Assistant\] (\d+)\n")


def test_pretraining_corpus_mixes_formats_and_avoids_eval_questions():
    cfg = toy.ToyWorldConfig(n_train=100, n_eval=400, p_thought=0.3)
    texts = toy.pretraining_corpus(cfg, 3000, seed=5)
    assert texts == toy.pretraining_corpus(cfg, 3000, seed=5)
    eval_questions = {e.question for e in toy.make_splits(cfg)[1]}
    thought, multi = 0, 0
    for text in texts:
        m = _THOUGHT.fullmatch(text) or _DIRECT.fullmatch(text)
        assert m, text
        question, answer = m.group(1), m.groups()[-1]
        ops = _operands(question)
        assert answer == str(sum(ops))
        assert question not in eval_questions
        multi += len(ops) > 1
        thought += m.re is _THOUGHT
        if m.re is _THOUGHT:
            assert m.group(2).split(" = ")[-1] == answer
    assert abs(thought / multi - 0.3) < 0.04


def test_pretraining_corpus_per_level_thought_shares():
    shares = (0.0, 0.1, 0.5, 0.9)
    cfg = toy.ToyWorldConfig(min_operands=2, max_operands=5, operand_min=0, operand_max=9,
                             n_train=10, n_eval=50, p_thought=shares)
    n = 8000
    texts = toy.pretraining_corpus(cfg, n, seed=3)
    seen = {d: [0, 0] for d in cfg.difficulties}  # level -> [texts, with a thought]
    for text in texts:
        m = _THOUGHT.fullmatch(text) or _DIRECT.fullmatch(text)
        assert m, text
        counts = seen[len(_operands(m.group(1)))]
        counts[0] += 1
        counts[1] += m.re is _THOUGHT
    for d, share in zip(cfg.difficulties, shares):
        total, thought = seen[d]
        # Four binomial standard errors: a false failure about once in 15,000 runs per level.
        assert abs(thought / total - share) <= 4 * (share * (1 - share) / total) ** 0.5 + 1e-9, d
    # An explicit p_thought still overrides every level's share.
    assert all("<thought>" in t for t in toy.pretraining_corpus(cfg, 200, seed=3, p_thought=1.0))


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_pretraining_corpus_extreme_mixtures(p):
    texts = toy.pretraining_corpus(SMALL, 300, seed=0, p_thought=p)
    for text in texts:
        single = len(_operands(text.split("\n")[0].removeprefix("[User] "))) == 1
        assert ("<thought>" in text) == (p == 1.0 and not single)


# --- tokenizer ----------------------------------------------------------------------------------

TOKENIZER = toy.build_tokenizer()


def test_special_token_ids():
    assert [TOKENIZER.token_to_id(t) for t in ("<pad>", "<s>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert (toy.PAD_ID, toy.BOS_ID, toy.EOS_ID, toy.UNK_ID) == (0, 1, 2, 3)
    assert TOKENIZER.get_vocab_size() == 4 + len(set(string.printable))


def test_vocabulary_covers_formats_and_roi_tags():
    text = (toy.THOUGHT_FORMAT.format(question="12+7=?", thought="12+7=19", answer="19")
            + "<predicted_level>Level-3</predicted_level> \\boxed{NA}")
    ids = TOKENIZER.encode(text, add_special_tokens=False).ids
    assert toy.UNK_ID not in ids
    assert len(ids) == len(text)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(PRINTABLE)
def test_tokenizer_round_trip_one_token_per_character(s):
    enc = TOKENIZER.encode(s, add_special_tokens=False)
    assert TOKENIZER.decode(enc.ids, skip_special_tokens=False) == s
    hypothesis.assume(not any(t in s for t in toy.SPECIAL_TOKENS))
    assert enc.tokens == list(s)
    with_bos = TOKENIZER.encode(s).ids
    assert with_bos == [toy.BOS_ID] + enc.ids


def test_unknown_characters_map_to_unk():
    assert TOKENIZER.encode("1é2", add_special_tokens=False).ids[1] == toy.UNK_ID


def test_transformers_loads_the_saved_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    toy.save_tokenizer(tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    # " ." and " '" are what transformers' clean-up would mangle.
    text = "[User] 12+7=?\n<thought> a . b 'c , d </thought>\n[Assistant] 19\n  "
    ids = hf(text)["input_ids"]
    assert ids == [toy.BOS_ID] + TOKENIZER.encode(text, add_special_tokens=False).ids
    assert len(ids) == len(text) + 1
    assert hf.decode(ids, skip_special_tokens=True) == text
    batch = hf(["ab", "abcd"], padding=True)["input_ids"]
    assert batch[0][-2:] == [toy.PAD_ID, toy.PAD_ID] and len(batch[0]) == 5
