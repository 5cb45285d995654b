"""Reading training data: a .jsonl/.json/.csv/.tsv/.parquet/.txt file, a dataset folder or a
hub id becomes a :class:`RawTable` of rows, each with the line or row number errors cite.

Bad input raises :class:`DatasetError` naming the file, the line or row, and what is wrong.
datasets and pyarrow are imported inside the functions that need them.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import DatasetError

EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
ROW_HINT = "fix or remove this row"


@dataclass
class RawTable:
    """Rows as read from a source, before normalising; ``numbers[i]`` is where ``rows[i]`` lives."""

    label: str  # what errors call the source: the file name or the hub id
    unit: str  # "line" for .jsonl, whose rows are numbered by line; "row" otherwise
    rows: list[dict]
    numbers: list[int]  # 1-based, one per row
    columns: list[str]  # every column seen, in first-seen order


def describe_type(value: Any) -> str:
    """How an error message names the type of ``value``: "an object", "a list", "text"..."""
    names = {dict: "an object", list: "a list", str: "text", type(None): "null", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _read_text(path: Path) -> str:
    """The file as text (UTF-8, a BOM dropped); DatasetError when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path.name}: not UTF-8 text (byte {exc.start})", "save the file as UTF-8"
        ) from None


def _union_columns(rows: list[dict]) -> list[str]:
    """Every key of every row, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _read_jsonl(path: Path) -> RawTable:
    """One JSON object per line, numbered by line; blank lines are skipped."""
    rows, numbers = [], []
    # split on "\n" only: str.splitlines would also cut at U+2028 inside JSON strings
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path.name}, line {n}: not valid JSON ({exc.msg})",
                'each line must hold one JSON object, e.g. {"prompt": ..., "completion": ...}',
            ) from None
        if not isinstance(row, dict):
            raise DatasetError(
                f"{path.name}, line {n}: expected a JSON object, got {describe_type(row)}",
                "each line must hold one JSON object",
            )
        rows.append(row)
        numbers.append(n)
    return RawTable(path.name, "line", rows, numbers, _union_columns(rows))


def _read_json(path: Path) -> RawTable:
    """A list of objects, or an object holding one under "data", "train" or "rows"."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path.name}, line {exc.lineno}: not valid JSON ({exc.msg})",
            "a .json file holds one list of rows; use .jsonl for one object per line",
        ) from None
    if isinstance(data, dict):
        key = next((k for k in ("data", "train", "rows") if isinstance(data.get(k), list)), None)
        data = data[key] if key else data
    if not isinstance(data, list):
        raise DatasetError(
            f"{path.name}: expected a list of rows, got {describe_type(data)}",
            'use [{...}, {...}] or {"data": [...]}',
        )
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DatasetError(
                f"{path.name}, row {n}: expected a JSON object, got {describe_type(row)}",
                "each row must be an object with named fields",
            )
    return RawTable(path.name, "row", data, list(range(1, len(data) + 1)), _union_columns(data))


def _read_delimited(path: Path, delimiter: str) -> RawTable:
    """A header row then data rows; DatasetError for a row with too many or too few fields."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long answers exceed the 128 KiB default
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    rows = []
    for n, row in enumerate(reader, 1):
        if None in row:
            raise DatasetError(
                f"{path.name}, row {n}: more fields than the header's {len(columns)}",
                "quote cells that contain the delimiter",
            )
        if any(v is None for v in row.values()):
            raise DatasetError(
                f"{path.name}, row {n}: fewer fields than the header's {len(columns)}",
                ROW_HINT,
            )
        rows.append(row)
    return RawTable(path.name, "row", rows, list(range(1, len(rows) + 1)), columns)


def _read_parquet(path: Path) -> RawTable:
    """Every row of the Parquet table; DatasetError when pyarrow cannot read it."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DatasetError(f"{path.name}: not a readable Parquet file ({exc})", "") from None
    rows = table.to_pylist()
    return RawTable(path.name, "row", rows, list(range(1, len(rows) + 1)), table.column_names)


def _read_txt(path: Path) -> RawTable:
    """One {"text": ...} row per blank-line-separated document."""
    docs = [d.strip() for d in re.split(r"\n\s*\n", _read_text(path))]
    rows = [{"text": d} for d in docs if d]
    return RawTable(path.name, "row", rows, list(range(1, len(rows) + 1)), ["text"])


def _from_dataset(ds: Any, label: str) -> RawTable:
    """The rows of a ``datasets.Dataset``, under ``label``."""
    rows = ds.to_list()
    return RawTable(label, "row", rows, list(range(1, len(rows) + 1)), list(ds.column_names))


def _read_folder(path: Path) -> RawTable:
    """A ``save_to_disk`` folder (its train split, else its first split), else the folder's only
    data file or its train.<ext>; DatasetError when there is none or no way to choose."""
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if any((path / m).exists() for m in markers):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DatasetError(f"{path.name}: cannot read the saved dataset ({exc})", "") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        return _from_dataset(ds, path.name)
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
    train = [f for f in files if f.stem.lower() == "train"]
    if len(files) == 1 or len(train) == 1:
        return _read_file((train or files)[0])
    if not files:
        raise DatasetError(
            f"{path.name}: the folder holds no dataset",
            "point at a data file (" + " ".join(EXTENSIONS) + ") or a datasets.save_to_disk folder",
        )
    raise DatasetError(
        f"{path.name}: the folder holds several data files ({', '.join(f.name for f in files)})",
        "point at one file, or name the training file train.<ext>",
    )


def _read_hub(name: str) -> RawTable:
    """The train split of hub dataset ``name``; DatasetError when it cannot be loaded."""
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:
        raise DatasetError(
            f"{name}: no such file or folder, and loading it from the Hugging Face hub failed "
            f"({type(exc).__name__}: {exc})",
            "check the path; a hub dataset needs a network connection the first time "
            "(you may be offline) - download it once or export it to a local file",
        ) from None
    return _from_dataset(ds, name)


_READERS = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".txt": _read_txt,
    ".csv": lambda p: _read_delimited(p, ","),
    ".tsv": lambda p: _read_delimited(p, "\t"),
}


def _read_file(path: Path) -> RawTable:
    """A data file read by its extension; DatasetError for an unknown type or an empty file."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"{path.name}: unsupported file type {path.suffix or '(no extension)'!r}",
            "use one of " + ", ".join(EXTENSIONS) + ", a dataset folder or a hub id",
        )
    if path.stat().st_size == 0:
        raise DatasetError(f"{path.name}: the file is empty", "add some training rows")
    return reader(path)


def _looks_like_hub_id(text: str) -> bool:
    """True for "name" or "owner/name" without a data-file extension."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text)) and (
        Path(text).suffix.lower() not in EXTENSIONS
    )


def read_source(source: str) -> RawTable:
    """Read ``source``: a data file (one of :data:`EXTENSIONS`), a dataset folder or a hub id.

    Returns at least one row. Raises :class:`DatasetError` naming the file and, where it
    applies, the line or row, for a missing source, an unreadable file or no rows.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        table = _read_folder(path)
    elif path.is_file():
        table = _read_file(path)
    elif _looks_like_hub_id(source):
        table = _read_hub(source)
    else:
        raise DatasetError(
            f"{path.name}: file not found ({path})", "check the path, or pick the file again"
        )
    if not table.rows:
        raise DatasetError(f"{table.label}: no data rows", "add some training rows")
    return table
