"""Reading JSON, JSONL, CSV and parquet records with errors that point at the file and line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qa_ebm.errors import DataError
from qa_ebm.io import READ_ERRORS, open_input, strip_compression_suffix

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield `(where, record)` pairs; `where` locates the record for error messages (`f.jsonl:12`)."""
    name = strip_compression_suffix(path)
    if name.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif name.endswith(".csv"):
        yield from _iter_csv(path)
    elif name.endswith(".jsonl"):
        yield from _iter_jsonl(path)
    elif name.endswith(".json"):
        yield from _iter_json(path)
    else:
        raise DataError(f"{path}: unsupported file type (expected one of {', '.join(RECORD_SUFFIXES)}, optionally .gz)")


def get_field(record: dict[str, Any], dotted: str) -> Any:
    """`get_field(r, "meta.url")` -> r["meta"]["url"]; KeyError when any part is missing."""
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def field_names(record: dict[str, Any]) -> str:
    """The record's keys for an error message, on one line: a key with a newline or control character in it
    is shown quoted (`'\\n'`), since the message must stay one line."""
    return ", ".join(k if k.isprintable() else repr(k) for k in sorted(map(str, record))) or "none"


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _reading(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield f"{path}:{n}", _as_record(_loads(line, f"{path}: line {n}"), f"{path}: line {n}")


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _reading(path) as f:
        text = f.read()
    obj = _loads(text, str(path))
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f'{path}: expected a JSON list of records (or {{"data": [...]}}), got {type(obj).__name__}')
    for i, rec in enumerate(obj):
        yield f"{path}[{i}]", _as_record(rec, f"{path}: record {i}")


def _iter_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _reading(path) as f:
        reader = csv.DictReader(f)
        try:
            for n, row in enumerate(reader, 2):
                yield f"{path}:{n}", dict(row)
        except csv.Error as e:  # a field past csv's size limit, a NUL, an unterminated quote at the end
            raise DataError(f"{path}: line {reader.line_num}: not readable as CSV ({e})") from e


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with open_input(path, "rb") as f:
            pf = pq.ParquetFile(f)
            row = 0
            for batch in pf.iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    yield f"{path}: row {row}", rec
                    row += 1
    except (pa.ArrowInvalid, *READ_ERRORS) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from e


class _reading:
    """Open a text input; decoding and decompression failures become DataErrors naming the file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.f = open_input(self.path, "rt")
        return self

    def __iter__(self):
        try:
            yield from self.f
        except READ_ERRORS as e:
            raise DataError(f"{self.path}: cannot read ({e.__class__.__name__}: {e})") from e

    def read(self) -> str:
        try:
            return self.f.read()
        except READ_ERRORS as e:
            raise DataError(f"{self.path}: cannot read ({e.__class__.__name__}: {e})") from e

    def __exit__(self, *exc):
        self.f.close()


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except ValueError as e:  # an integer literal longer than Python converts (4300 digits)
        raise DataError(f"{where}: not usable JSON ({e})") from e
    except RecursionError as e:
        raise DataError(f"{where}: JSON nested too deeply to read") from e


def _as_record(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj
