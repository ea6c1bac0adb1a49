"""Results to files: whole files for ``foretell predict``, idempotent destinations for jobs.

Job destinations: a Parquet dataset (a folder with one part file per job and chunk), and CSV
or JSONL files, assembled from staged part files when the job finishes. A part is written to a
temporary name and renamed, so a crash leaves whole parts only, and writing a chunk again
replaces its part: nothing is duplicated.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from foretell.destinations.base import Destination
from foretell.errors import InputFormatError, UserError

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


def _replace(frame: pd.DataFrame, target: Path, fmt: str) -> None:
    """Writes ``frame`` to ``target`` through a temporary file and an atomic rename."""
    partial = target.with_name(f".{target.name}.partial")
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), partial)
    elif fmt == "csv":
        frame.assign(**_json_lists(frame)).to_csv(partial, index=False)
    else:
        with partial.open("wb") as handle:
            for record in frame.to_dict("records"):
                handle.write(orjson.dumps(record, default=str, option=_OPTIONS) + b"\n")
    os.replace(partial, target)


_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC


def _json_lists(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        c: frame[c].map(lambda v: orjson.dumps(v, option=_OPTIONS).decode())
        for c in frame.columns
        if len(frame) and isinstance(frame[c].iloc[0], list)
    }


class ParquetDataset(Destination):
    """A folder of Parquet files, ``<job>-part-<chunk>.parquet``: readable as one dataset."""

    def __init__(self, uri: str, path: Path) -> None:
        super().__init__(uri)
        self.path = path

    def check(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"destination '{self.uri}' exists and is not a folder")
        if not self.path.parent.is_dir():
            raise UserError(f"destination '{self.uri}': folder '{self.path.parent}' does not exist")

    def write(self, job_id: str, chunk: int, frame: pd.DataFrame) -> None:
        self.path.mkdir(exist_ok=True)
        _replace(frame, self.path / f"{job_id}-part-{chunk:06d}.parquet", "parquet")

    def errors_uri(self) -> str:
        return str(self.path.with_name(f"{self.path.stem}.errors.parquet"))

    def read(self, job_id: str) -> pd.DataFrame:
        parts = sorted(self.path.glob(f"{job_id}-part-*.parquet"))
        if not parts:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


class StagedFile(Destination):
    """One CSV or JSONL file per job, assembled from staged parts when the job finishes."""

    def __init__(self, uri: str, path: Path, fmt: str) -> None:
        super().__init__(uri)
        self.path, self.fmt = path, fmt

    def _staging(self, job_id: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{job_id}.parts")

    def check(self) -> None:
        if not self.path.parent.is_dir():
            raise UserError(f"destination '{self.uri}': folder '{self.path.parent}' does not exist")

    def write(self, job_id: str, chunk: int, frame: pd.DataFrame) -> None:
        staging = self._staging(job_id)
        staging.mkdir(exist_ok=True)
        _replace(frame, staging / f"part-{chunk:06d}.{self.fmt}", self.fmt)

    def finish(self, job_id: str) -> None:
        staging = self._staging(job_id)
        parts = sorted(staging.glob(f"part-*.{self.fmt}")) if staging.is_dir() else []
        partial = self.path.with_name(f".{self.path.name}.partial")
        with partial.open("wb") as out:
            for i, part in enumerate(parts):
                with part.open("rb") as handle:
                    if self.fmt == "csv" and i > 0:
                        handle.readline()  # one header for the whole file
                    shutil.copyfileobj(handle, out)
        os.replace(partial, self.path)
        shutil.rmtree(staging, ignore_errors=True)

    def read(self, job_id: str) -> pd.DataFrame:
        staging = self._staging(job_id)
        files = sorted(staging.glob(f"part-*.{self.fmt}")) if staging.is_dir() else [self.path]
        frames = [
            pd.read_csv(f) if self.fmt == "csv" else pd.read_json(f, lines=True, dtype=False)
            for f in files
            if f.exists() and f.stat().st_size
        ]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True)
        return frame[frame["job_id"].astype(str) == job_id].reset_index(drop=True)
