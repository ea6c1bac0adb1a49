"""Data sources: where rows to score come from, each behind a URI.

| URI | source |
|---|---|
| ``rows.csv``, ``file:///data/rows.csv`` | a CSV file with a header row |
| ``rows.jsonl`` (or ``.ndjson``) | one JSON object per line |
| ``rows.parquet``, ``folder/`` | a Parquet file, or a folder of ``.parquet`` files |
| ``sqlite:///path.db?table=t``, ``?query=SELECT ...`` | a SQLite table or query |
| ``postgresql://user@host:5432/db?table=t``, ``?query=...`` | a PostgreSQL table or query |

Stream sources (``foretell stream``):

| URI | source |
|---|---|
| ``redis://127.0.0.1:6379/0?stream=events&group=foretell`` | a Redis stream, consumer group |
| ``mqtt://127.0.0.1:1883/sensors/#?client_id=foretell`` | MQTT topics, QoS 1 |
| ``-``, ``events.jsonl``, ``events.jsonl?follow=true`` | JSON lines from stdin or a file |
"""

from __future__ import annotations

from pathlib import Path

from foretell.errors import UserError
from foretell.sources.base import Source
from foretell.sources.files import FILE_FORMATS, CsvSource, JsonlSource, ParquetSource, read_rows
from foretell.sources.stream import StreamSource

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


def open_stream_source(uri: str) -> StreamSource:
    """The stream source behind ``uri``."""
    if uri.startswith(("redis://", "rediss://")):
        from foretell.sources.redis_stream import RedisStreamSource

        return RedisStreamSource(uri)
    if uri.startswith("mqtt://"):
        from foretell.sources.mqtt import MqttSource

        return MqttSource(uri)
    from foretell.sources.lines import LinesSource

    if uri != "-":
        local_path(uri.partition("?")[0], "stream source")
    return LinesSource(uri)


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


__all__ = [
    "FILE_FORMATS",
    "Source",
    "StreamSource",
    "local_path",
    "open_source",
    "open_stream_source",
    "read_rows",
]
