"""Dataset loaders: the benchmarks of RaM and ROI-Reasoning as normalised `Example`s.

    from metajax.data.datasets import DatasetSpec, load_dataset
    gsm8k = load_dataset(DatasetSpec("gsm8k", path="data/gsm8k", split="test"))
    arc = load_dataset(DatasetSpec("arc_easy", source="hf", split="validation"))   # needs hub or cache

Every dataset reads from local files in its own published layout (JSONL, JSON, Parquet, Arrow or a
`datasets.save_to_disk` folder; `python -m metajax.data.prepare --out data/` fills `data/` from
offline sources), from the Hugging Face hub, or from TFDS where the catalogue has it. A row that
does not fit its layout is an error naming the file, line and field, or, with on_bad_row="skip",
is skipped and counted (`read_dataset(spec).skipped`, and a warning from `load_dataset`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from metajax.data.datasets import parsers
from metajax.data.datasets.parsers import RowError, last_boxed
from metajax.data.datasets.sampling import sample_examples, split_examples
from metajax.data.datasets.sources import DatasetError, RawRow, hub_rows, local_rows, tfds_rows
from metajax.data.example import Example

__all__ = [
    "DATASETS", "BadRowError", "DatasetError", "DatasetFormat", "DatasetSpec", "LoadResult",
    "RowError", "last_boxed", "load_dataset", "read_dataset", "sample_examples", "split_examples",
]

logger = logging.getLogger(__name__)

Source = Literal["local", "hf", "tfds"]
SOURCES: tuple[str, ...] = ("local", "hf", "tfds")
RowParser = Callable[[Mapping[str, Any], str, str], Example]

# No shot or budget holds a text this long (about 25,000 tokens); a row past it is a broken export
# (a whole document pasted into one cell), and reading it on would only fail later, deep in a prompt.
MAX_TEXT_CHARS = 100_000


class BadRowError(DatasetError):
    """A row that does not fit its dataset's layout; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class DatasetFormat:
    """How to read one dataset: its row parser and where it lives upstream.

    Attributes:
      parse: row in the dataset's own layout -> Example (see `parsers`).
      hub_id, hub_subset: the usual Hugging Face hub dataset and config, used when a spec with
        source="hf" gives no path; None where no single hub copy is standard.
      tfds_name: the TFDS catalogue name ("ai2_arc/ARC-Easy"), None where TFDS lacks it.
    """

    parse: RowParser
    hub_id: str | None = None
    hub_subset: str | None = None
    tfds_name: str | None = None


DATASETS: dict[str, DatasetFormat] = {
    "gsm8k": DatasetFormat(parsers.parse_gsm8k, "openai/gsm8k", "main", tfds_name="gsm8k"),
    "math": DatasetFormat(parsers.parse_math, "DigitalLearningGmbH/MATH-lighteval"),
    "math500": DatasetFormat(parsers.parse_math, "HuggingFaceH4/MATH-500"),
    "aime": DatasetFormat(parsers.parse_aime, "AI-MO/aimo-validation-aime"),
    "arc_easy": DatasetFormat(parsers.parse_multiple_choice, "allenai/ai2_arc", "ARC-Easy",
                              tfds_name="ai2_arc/ARC-Easy"),
    "arc_challenge": DatasetFormat(parsers.parse_multiple_choice, "allenai/ai2_arc", "ARC-Challenge",
                                   tfds_name="ai2_arc/ARC-Challenge"),
    "commonsense_qa": DatasetFormat(parsers.parse_multiple_choice, "tau/commonsense_qa"),
    "mmlu": DatasetFormat(parsers.parse_multiple_choice, "cais/mmlu", "all"),
    "mmlu_cf": DatasetFormat(parsers.parse_multiple_choice, "microsoft/MMLU-CF"),
    "strategyqa": DatasetFormat(parsers.parse_strategyqa, "ChilleD/StrategyQA"),
    "proofwriter": DatasetFormat(parsers.parse_proofwriter, "tasksource/proofwriter"),
    "champ": DatasetFormat(parsers.parse_champ),
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Which examples to load.

    Attributes:
      name: a key of DATASETS ("gsm8k", "math", "math500", "aime", "arc_easy", ...).
      source: "local" files, the Hugging Face hub ("hf"), or TensorFlow Datasets ("tfds").
      path: local: a file, a save_to_disk folder, or a directory of per-split files; hf: a hub id;
        tfds: a catalogue name. Optional for hf/tfds, where DATASETS gives the usual one.
      split: the split to read ("test", "train", "validation", or a file stem such as "2025").
      subset: the hub config name (e.g. "main" for openai/gsm8k); None takes DATASETS' default.
      limit: keep at most this many examples, chosen by `seed` (see `sample_examples`).
      seed: seeds the `limit` sample.
      on_bad_row: "error" stops at the first bad row; "skip" drops it and counts it.
    """

    name: str
    source: Source = "local"
    path: str | None = None
    split: str = "test"
    subset: str | None = None
    limit: int | None = None
    seed: int = 0
    on_bad_row: Literal["error", "skip"] = "error"

    def __post_init__(self):
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; supported: {sorted(DATASETS)}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive number of examples or None, got {self.limit}")
        if self.source == "local" and not self.path:
            raise ValueError(f"{self.name}: source='local' needs a path (a file or a directory of "
                             "per-split files, e.g. from `python -m metajax.data.prepare --out data/`)")


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What `read_dataset` found: the examples, and one message (where and why) per skipped row."""

    examples: tuple[Example, ...]
    skipped: tuple[str, ...]


def load_dataset(spec: DatasetSpec, *, skipped: list[str] | None = None) -> list[Example]:
    """The examples `spec` names; skipped bad rows (on_bad_row="skip") are logged with their count,
    and their messages appended to `skipped` when given."""
    result = read_dataset(spec)
    if skipped is not None:
        skipped.extend(result.skipped)
    if result.skipped:
        logger.warning("%s: skipped %d bad rows; first: %s", spec.name, len(result.skipped),
                       result.skipped[0])
    return list(result.examples)


def read_dataset(spec: DatasetSpec) -> LoadResult:
    """Reads and parses every row of `spec`'s source, then applies `limit`.

    Raises:
      BadRowError: a row does not fit (on_bad_row="error"), naming where and which field.
      DatasetError: the source cannot be read or holds no usable row.
    """
    parse = DATASETS[spec.name].parse
    examples: list[Example] = []
    skipped: list[str] = []
    first_seen: dict[str, str] = {}
    for raw in _rows(spec):
        problem = raw.error
        if problem is None:
            try:
                example = parse(raw.row, spec.name, f"{spec.split}-{raw.index}")
                _check_lengths(example)
                if example.id in first_seen:
                    raise RowError("id", f"repeats id {example.id!r} (first at {first_seen[example.id]})")
            except RowError as err:
                problem = str(err)
        if problem is not None:
            message = f"{raw.where}: {problem}"
            if spec.on_bad_row == "error":
                raise BadRowError(f"{message}. Fix the row, or set on_bad_row='skip' to skip and "
                                  "count bad rows.")
            skipped.append(message)
            continue
        first_seen[example.id] = raw.where
        examples.append(example)
    if not examples:
        raise DatasetError(f"{spec.name} ({spec.source}, {spec.path or 'default'}, split "
                           f"{spec.split!r}) holds no usable rows; {len(skipped)} were skipped")
    if spec.limit is not None:
        examples = sample_examples(examples, min(spec.limit, len(examples)), spec.seed)
    return LoadResult(tuple(examples), tuple(skipped))


def _check_lengths(example: Example) -> None:
    texts = {"question": example.question, "answer": example.answer, "rationale": example.rationale or "",
             **{f"choices[{i}]": choice for i, choice in enumerate(example.choices)}}
    for field, text in texts.items():
        if len(text) > MAX_TEXT_CHARS:
            raise RowError(field, f"is {len(text):,} characters long, over the {MAX_TEXT_CHARS:,} that any "
                           "prompt could hold")


def _rows(spec: DatasetSpec) -> Iterator[RawRow]:
    fmt = DATASETS[spec.name]
    if spec.source == "local":
        return local_rows(spec.path, spec.split)
    if spec.source == "hf":
        hub_id = spec.path or fmt.hub_id
        if hub_id is None:
            raise DatasetError(f"{spec.name} has no standard hub copy; pass path=<hub id>")
        subset = spec.subset if spec.subset is not None or spec.path else fmt.hub_subset
        return hub_rows(hub_id, subset, spec.split)
    name = spec.path or fmt.tfds_name
    if name is None:
        raise DatasetError(f"the TFDS catalogue has no {spec.name}; use source='hf' or 'local'")
    return tfds_rows(name, spec.split)
