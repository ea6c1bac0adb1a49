"""Data sources: where rows to score come from, each behind a URI.

| URI | source |
|---|---|
| ``rows.csv``, ``file:///data/rows.csv`` | a CSV file with a header row |
| ``rows.jsonl`` (or ``.ndjson``) | one JSON object per line |
| ``rows.parquet``, ``folder/`` | a Parquet file, or a folder of ``.parquet`` files |
| ``sqlite:///path.db?table=t``, ``?query=SELECT ...`` | a SQLite table or query |
| ``postgresql://user@host:5432/db?table=t``, ``?query=...`` | a PostgreSQL table or query |
"""

from __future__ import annotations

from pathlib import Path

from foretell.errors import UserError
from foretell.sources.base import Source
from foretell.sources.files import FILE_FORMATS, CsvSource, JsonlSource, ParquetSource, read_rows

SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")


def local_path(uri: str, kind: str) -> Path:
    """The path of a ``file://`` or plain-path URI; any other scheme is refused."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    scheme = uri.split("://", 1)[0] if "://" in uri else None
    if scheme is not None:
        raise UserError(
            f"{kind} '{uri}' has the unknown scheme '{scheme}://'; use a file path, file://, "
            "sqlite:///path.db?table=t or postgresql://user@host/db?table=t"
        )
    return Path(uri)


def open_source(uri: str, order_by: str | None = None) -> Source:
    """The source behind ``uri``; ``order_by`` orders SQL rows (the job's key column)."""
    if uri.split("://", 1)[0] in SQL_SCHEMES and "://" in uri:
        from foretell.sources.sql import SqlSource

        return SqlSource(uri, order_by=order_by)
    path = local_path(uri, "source")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return CsvSource(uri, path)
    if suffix in (".jsonl", ".ndjson"):
        return JsonlSource(uri, path)
    if suffix in (".parquet", ".pq") or path.is_dir():
        return ParquetSource(uri, path)
    raise UserError(
        f"source '{uri}' must be a .csv, .jsonl or .parquet file, a folder of Parquet files, "
        "or a sqlite:// or postgresql:// URI"
    )


__all__ = ["FILE_FORMATS", "Source", "local_path", "open_source", "read_rows"]
