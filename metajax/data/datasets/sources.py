"""Where rows come from: local files, the Hugging Face hub, or TFDS, one `RawRow` at a time.

Readers never judge a row's content (that is the parsers' job); they only report where each row
sits and whether it could be decoded at all, so that a broken line is reported, not lost.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

LOCAL_SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".arrow")


class DatasetError(ValueError):
    """A dataset could not be read; the message names the file or hub id and what to do."""


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One row as read, before parsing.

    Attributes:
      where: human-readable location, e.g. "data/gsm8k/test.jsonl line 17".
      index: 0-based position of the row in its source (blank JSONL lines do not count); used for
        ids of rows that carry none, so it must not depend on which rows later prove bad.
      row: the decoded row, or None when it could not be decoded.
      error: why the row could not be decoded (bad UTF-8, invalid JSON, not an object), else None.
    """

    where: str
    index: int
    row: Mapping[str, Any] | None
    error: str | None = None


def local_rows(path: str | Path, split: str) -> Iterator[RawRow]:
    """Rows of a local dataset.

    `path` is a file (.jsonl, .jsonl.gz, .json, .parquet, .arrow), a `datasets.save_to_disk` folder,
    or a directory holding one file or folder per split named `{split}` + a suffix above (the layout
    `python -m metajax.data.prepare` writes).
    """
    source = _resolve_local(Path(path), split)
    if source.is_dir():
        return _arrow_folder_rows(source)
    name = source.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_rows(source)
    if name.endswith(".json"):
        return _json_rows(source)
    if name.endswith(".parquet"):
        return _table_rows(source, _read_parquet(source))
    return _table_rows(source, _read_arrow(source))


def hub_rows(hub_id: str, subset: str | None, split: str) -> Iterator[RawRow]:
    """Rows of a Hugging Face hub dataset (from the local cache when offline)."""
    import datasets  # deferred: importing `datasets` costs seconds and local loading never needs it

    try:
        table = datasets.load_dataset(hub_id, subset, split=split)
    except Exception as err:  # the hub raises many types (offline, gated, missing config, ...)
        raise DatasetError(
            f"could not load {hub_id!r} (subset {subset!r}, split {split!r}) from the Hugging Face "
            f"hub: {type(err).__name__}: {err}. Without network access or a cached copy, download "
            "the dataset's files elsewhere and load them with source='local' (path=<file or "
            "folder>), or run `python -m metajax.data.prepare --out data/` for the datasets that "
            "have an offline source.") from err
    for index, row in enumerate(table):
        yield RawRow(f"hub:{hub_id} {split} row {index + 1}", index, row)


def tfds_rows(name: str, split: str) -> Iterator[RawRow]:
    """Rows of a TensorFlow Datasets catalogue entry, with bytes decoded and class labels named."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetError(
            f"source='tfds' needs tensorflow-datasets, which is not installed: pip install "
            f"'metajax[tfds]' (or use source='hf' or source='local' for {name!r}).") from err
    try:
        table, info = tfds.load(name, split=split, with_info=True, shuffle_files=False)
    except Exception as err:  # TFDS raises many types (not prepared, offline, unknown name, ...)
        raise DatasetError(
            f"could not load TFDS dataset {name!r} split {split!r}: {type(err).__name__}: {err}. "
            "Prepare it once with network access (tfds build) or use source='local'.") from err
    for index, example in enumerate(tfds.as_numpy(table)):
        where = f"tfds:{name} {split} row {index + 1}"
        try:
            yield RawRow(where, index, _from_tfds(example, info.features))
        except UnicodeDecodeError as err:
            yield RawRow(where, index, None, f"bad UTF-8: {err}")


def _resolve_local(path: Path, split: str) -> Path:
    if path.is_file() or _is_arrow_folder(path):
        return path
    if not path.is_dir():
        raise DatasetError(f"{path} does not exist; pass a data file, a save_to_disk folder, or a "
                           "directory of per-split files (see `python -m metajax.data.prepare`).")
    found = [path / (split + suffix) for suffix in LOCAL_SUFFIXES if (path / (split + suffix)).is_file()]
    if _is_arrow_folder(path / split):
        found.append(path / split)
    if len(found) != 1:
        present = sorted(p.name for p in path.iterdir())
        problem = "no file" if not found else f"{len(found)} files"
        raise DatasetError(
            f"{path}: {problem} for split {split!r} (looked for {split}{{{','.join(LOCAL_SUFFIXES)}}} "
            f"or a save_to_disk folder {split}/); the directory holds {present}.")
    return found[0]


def _is_arrow_folder(path: Path) -> bool:
    return path.is_dir() and (path / "state.json").is_file()


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    opener = gzip.open if path.name.endswith(".gz") else open
    index = 0
    with opener(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield RawRow(where, index, None, f"bad UTF-8 at byte {err.start} of the line")
            except json.JSONDecodeError as err:
                yield RawRow(where, index, None, f"invalid JSON: {err.msg} (column {err.colno})")
            else:
                yield _object_row(where, index, row)
            index += 1


def _json_rows(path: Path) -> Iterator[RawRow]:
    """A JSON array of rows, or BIG-bench's task.json layout {"examples": [rows]}."""
    data = path.read_bytes()
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: bad UTF-8 at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} line {err.lineno}: invalid JSON: {err.msg}") from None
    if isinstance(document, Mapping) and isinstance(document.get("examples"), list):
        document = document["examples"]
    if not isinstance(document, list):
        raise DatasetError(f"{path}: expected a JSON array of rows or an object with an "
                           f"'examples' array, got {type(document).__name__}")
    for index, row in enumerate(document):
        yield _object_row(f"{path} row {index + 1}", index, row)


def _object_row(where: str, index: int, row: Any) -> RawRow:
    if isinstance(row, Mapping):
        return RawRow(where, index, row)
    return RawRow(where, index, None, f"expected a JSON object, got {type(row).__name__}")


def _arrow_folder_rows(folder: Path) -> Iterator[RawRow]:
    """A `datasets.save_to_disk` folder: its arrow shards, in the order state.json lists them."""
    state = json.loads((folder / "state.json").read_text())
    shards = [folder / entry["filename"] for entry in state.get("_data_files", [])]
    offset = 0
    for shard in shards or sorted(folder.glob("*.arrow")):
        rows = _read_arrow(shard)
        for index, row in enumerate(rows):
            yield RawRow(f"{shard} row {index + 1}", offset + index, row)
        offset += len(rows)


def _table_rows(path: Path, rows: list[dict[str, Any]]) -> Iterator[RawRow]:
    for index, row in enumerate(rows):
        yield RawRow(f"{path} row {index + 1}", index, row)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a broken file
        raise DatasetError(f"{path}: not a readable Parquet file: {err}") from err


def _read_arrow(path: Path) -> list[dict[str, Any]]:
    """An Arrow IPC file; `datasets` writes the streaming flavour, other tools the file flavour."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all().to_pylist()
    except pa.ArrowInvalid:
        pass
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all().to_pylist()
    except pa.ArrowInvalid as err:
        raise DatasetError(f"{path}: not a readable Arrow file: {err}") from err


def _from_tfds(value: Any, feature: Any) -> Any:
    """numpy values from `tfds.as_numpy` -> plain Python, the layout HF and the parsers expect.

    Text arrives as bytes and ClassLabel features as ints (ai2_arc's labels and answerKey), so the
    feature spec is walked alongside the value to turn labels back into their names.
    """
    if isinstance(value, Mapping):
        fields = getattr(feature, "feature", feature)  # a Sequence wraps its FeaturesDict
        return {key: _from_tfds(item, fields[key]) for key, item in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "ndim") and value.ndim > 0:
        return [_from_tfds(item, feature) for item in value]
    if hasattr(feature, "int2str"):
        return feature.int2str(int(value))
    return value.item() if hasattr(value, "item") else value
