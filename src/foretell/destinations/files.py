"""Results to a file or standard output: JSONL, CSV or Parquet."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from foretell.errors import InputFormatError

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted columns; lists become JSON text."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = orjson.dumps(value).decode()
        else:
            flat[name] = value
    return flat


def write_results(results: Iterable[dict[str, Any]], path: str | None) -> None:
    """Writes results to ``path`` (format from its suffix) or as JSONL to standard output.

    The file is written to a temporary name and renamed, so a failure leaves no partial file.
    """
    if path is None or path == "-":
        out = sys.stdout.buffer
        for r in results:
            out.write(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        out.flush()
        return
    target = Path(path)
    fmt = _FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise InputFormatError(
            f"output '{path}' must end in {', '.join(sorted(_FORMATS))} to say its format"
        )
    partial = target.with_name(f".{target.name}.partial")
    if fmt == "jsonl":
        with partial.open("wb") as handle:
            for r in results:
                handle.write(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    else:
        frame = pd.DataFrame([flatten(r) for r in results])
        if fmt == "csv":
            frame.to_csv(partial, index=False)
        else:
            frame.to_parquet(partial, index=False)
    partial.replace(target)
