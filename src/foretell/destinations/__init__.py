"""Data destinations: where results go, each behind a URI.

| URI | destination |
|---|---|
| ``out.parquet`` (or any folder) | a Parquet dataset: one part file per job and chunk |
| ``out.csv``, ``out.jsonl`` | one file, assembled when the job finishes |
| ``sqlite:///path.db?table=t`` | a SQLite table (the embedded default) |
| ``postgresql://user@host:5432/db?table=t`` | a PostgreSQL table |

Every job destination writes idempotently on (job, row key).
"""

from __future__ import annotations

from foretell.destinations.base import ERROR_COLUMNS, RESULT_COLUMNS, Destination
from foretell.destinations.files import ParquetDataset, StagedFile, write_results
from foretell.errors import UserError
from foretell.sources import SQL_SCHEMES, local_path


def open_destination(uri: str) -> Destination:
    """The destination behind ``uri``."""
    if uri.split("://", 1)[0] in SQL_SCHEMES and "://" in uri:
        from foretell.destinations.sql import SqlDestination

        return SqlDestination(uri)
    path = local_path(uri, "destination")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return StagedFile(uri, path, "csv")
    if suffix in (".jsonl", ".ndjson"):
        return StagedFile(uri, path, "jsonl")
    if suffix == ".parquet" or path.is_dir() or uri.endswith("/"):
        return ParquetDataset(uri, path)
    raise UserError(
        f"destination '{uri}' must end in .parquet (a dataset folder), .csv or .jsonl, or be "
        "a sqlite:// or postgresql:// URI"
    )


__all__ = ["ERROR_COLUMNS", "RESULT_COLUMNS", "Destination", "open_destination", "write_results"]
