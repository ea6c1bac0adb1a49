"""Rows from a file or standard input: CSV, JSON, JSONL or Parquet."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from foretell.errors import InputFormatError, NotFoundError

FILE_FORMATS = ("csv", "json", "jsonl", "parquet")
_SUFFIXES = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def detect_format(path: str, data: bytes | None = None) -> str:
    """The format named by the file's suffix, or sniffed from the first bytes of ``data``."""
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if data is not None:
        head = data.lstrip()[:1]
        if head == b"[":
            return "json"
        if head == b"{":
            return "jsonl" if b"\n{" in data.strip() else "json"
        if data.startswith(b"PAR1"):
            return "parquet"
        return "csv"
    raise InputFormatError(
        f"cannot tell the format of '{path}' from its name; use one of "
        f"{', '.join(sorted(_SUFFIXES))} or pass --format"
    )


def read_rows(path: str, fmt: str | None = None) -> list[dict[str, Any]] | pd.DataFrame:
    """Reads every row of ``path`` (``-`` for standard input) as records or a DataFrame."""
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"input file '{path}' does not exist") from None
        except OSError as exc:
            raise InputFormatError(f"input file '{path}' cannot be read: {exc.strerror}") from None
    fmt = fmt or detect_format(path, data)
    if fmt not in FILE_FORMATS:
        raise InputFormatError(f"format must be one of {', '.join(FILE_FORMATS)}; got '{fmt}'")
    try:
        if fmt == "csv":
            return pd.read_csv(io.BytesIO(data))
        if fmt == "parquet":
            return pd.read_parquet(io.BytesIO(data))
        if fmt == "jsonl":
            return [
                _record(orjson.loads(line), i + 1)
                for i, line in enumerate(data.splitlines())
                if line.strip()
            ]
        return _records(orjson.loads(data))
    except orjson.JSONDecodeError as exc:
        raise InputFormatError(f"'{path}' is not valid {fmt.upper()}: {exc}") from None
    except (ValueError, OSError) as exc:  # pandas and pyarrow parse errors
        raise InputFormatError(f"'{path}' is not a readable {fmt.upper()} file: {exc}") from None


def _records(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]
    if not isinstance(data, list):
        raise InputFormatError('a JSON input must be a list of records or {"instances": [...]}')
    return [_record(r, i + 1) for i, r in enumerate(data)]


def _record(row: Any, number: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise InputFormatError(f"record {number} must be a JSON object; got {type(row).__name__}")
    return row
