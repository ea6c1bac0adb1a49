"""Results into a SQL table (SQLite or PostgreSQL): one transaction per chunk, idempotent.

``sqlite:///path.db?table=t`` or ``postgresql://user@host:5432/db?table=t``. The table is
created on the first write, typed from the results (FLOAT, BIGINT, BOOLEAN, TEXT, timestamps)
with the primary key ``(job_id, row_key)``; an existing table must have exactly the results'
columns. Each chunk is inserted in one transaction with ``ON CONFLICT (job_id, row_key) DO
NOTHING``, so a chunk is stored whole or not at all and writing it again adds nothing.

Lists and mappings (a recommender's items and scores, a rejected row's input) are stored as
JSON text, and read back as that text. Timestamps are stored in UTC; SQLite keeps them without
an offset and :meth:`SqlDestination.read` gives them back as UTC.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import psycopg
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    MetaData,
    Table,
    Text,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError
from sqlalchemy.types import TypeEngine

from foretell.destinations.base import Destination
from foretell.errors import ForetellError, UserError
from foretell.sql_uri import open_engine, parse_sql_uri, reason

#: The primary key of every results or errors table.
KEY = ("job_id", "row_key")
#: Table names a destination creates: plain identifiers that need no quoting anywhere.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: Rows per executemany call (all of a chunk's calls share one transaction).
BATCH_ROWS = 10_000


class SqlDestination(Destination):
    """A table in a SQLite or PostgreSQL database; see the module's notes."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.target = parse_sql_uri(uri, query_allowed=False)
        self.table_name = self.target.table or ""
        if not _PLAIN_NAME.fullmatch(self.table_name):
            raise UserError(
                f"destination '{self.target.display}' names the table '{self.table_name}'; "
                "expected letters, digits and underscores, starting with a letter or underscore "
                "(at most 63)"
            )
        self._engine = open_engine(self.target, self, wal=True)
        self._table: Table | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.target.is_sqlite and not self.target.sqlite_path.parent.is_dir():
            raise UserError(
                f"cannot write '{self.target.display}': the folder "
                f"'{self.target.sqlite_path.parent}' does not exist; expected an existing folder"
            )
        try:
            with self._engine.connect():
                pass
        except SQLAlchemyError as exc:
            raise self._error("connect to", exc) from None

    def write(self, job_id: str, chunk: int, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        missing = [k for k in KEY if k not in frame.columns]
        if missing:
            raise ForetellError(f"results of chunk {chunk} lack the key column(s) {missing}")
        try:
            table = self._prepare(frame)
            values = {str(n): _values(frame[n], table.c[str(n)].type) for n in frame.columns}
            with self._engine.begin() as conn:
                if self.target.is_sqlite:
                    self._insert_many(conn, table, values)
                else:
                    self._copy_insert(conn, table, values)
        except (SQLAlchemyError, psycopg.Error) as exc:
            raise self._error(f"write chunk {chunk} of job '{job_id}' to", exc) from None

    def read(self, job_id: str) -> pd.DataFrame:
        try:
            with self._engine.connect() as conn:
                try:
                    table = Table(self.table_name, MetaData(), autoload_with=conn)
                except NoSuchTableError:
                    return pd.DataFrame()
                statement = select(table).where(table.c.job_id == job_id).order_by(table.c.row_key)
                result = conn.execute(statement)
                frame = pd.DataFrame.from_records(
                    [tuple(r) for r in result], columns=list(result.keys())
                )
        except SQLAlchemyError as exc:
            raise self._error("read", exc) from None
        for col in table.columns:
            if isinstance(col.type, DateTime):
                frame[col.name] = pd.to_datetime(frame[col.name], utc=True)
        return frame

    def errors_uri(self) -> str:
        return self.target.with_table(f"{self.table_name}_errors")

    def dispose(self) -> None:
        """Closes the pooled connections."""
        self._engine.dispose()

    def _prepare(self, frame: pd.DataFrame) -> Table:
        """The destination table: reflected and checked, or created from the frame's types."""
        with self._lock:
            if self._table is None:
                found = self._reflect()
                self._table = self._create(frame) if found is None else found
            table = self._table
        expected, given = {c.name for c in table.columns}, {str(c) for c in frame.columns}
        if expected != given:
            lacking, extra = sorted(expected - given), sorted(given - expected)
            raise UserError(
                f"table '{self.table_name}' in '{self.target.display}' does not match the "
                f"results: expected columns {', '.join(sorted(expected))}; the results lack "
                f"{', '.join(lacking) or 'none'} and add {', '.join(extra) or 'none'} "
                "(write to a new table or drop this one)"
            )
        return table

    def _reflect(self) -> Table | None:
        """The existing table, if any; it must be unique on (job_id, row_key)."""
        with self._engine.connect() as conn:
            found = inspect(conn)
            if not found.has_table(self.table_name):
                return None
            table = Table(self.table_name, MetaData(), autoload_with=conn)
            unique: list[Sequence[str | None]] = [
                found.get_pk_constraint(self.table_name)["constrained_columns"]
            ]
            unique += [u["column_names"] for u in found.get_unique_constraints(self.table_name)]
            unique += [i["column_names"] for i in found.get_indexes(self.table_name) if i["unique"]]
        if not any(set(columns) == set(KEY) for columns in unique):
            raise UserError(
                f"table '{self.table_name}' in '{self.target.display}' has no primary key or "
                "unique constraint on (job_id, row_key); expected one, so that writing a chunk "
                "again adds nothing (write to a new table and foretell creates it)"
            )
        return table

    def _create(self, frame: pd.DataFrame) -> Table:
        columns = [
            Column(str(name), _sql_type(frame[name]), primary_key=str(name) in KEY)
            for name in frame.columns
        ]
        table = Table(self.table_name, MetaData(), *columns)
        try:
            with self._engine.begin() as conn:
                table.create(conn, checkfirst=True)
        except SQLAlchemyError:
            # Another writer created it first: use theirs (and its columns are checked).
            found = self._reflect()
            if found is None:
                raise
            return found
        return table

    def _insert_many(self, conn: Connection, table: Table, values: dict[str, list[Any]]) -> None:
        """SQLite: INSERT ... ON CONFLICT DO NOTHING, executemany in batches.

        The statement is compiled once and given plain tuples: SQLAlchemy's per-row parameter
        handling would cost more than SQLite's own insert. Each column goes through its type's
        bind processor (timestamps to text, for one) once, as a whole.
        """
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(KEY))
        compiled = statement.compile(dialect=conn.dialect, column_keys=list(values))
        columns = []
        for name in compiled.positiontup or []:
            process = table.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
            try:
                columns.append([process(v) for v in values[name]] if process else values[name])
            except (TypeError, ValueError) as exc:
                raise UserError(
                    f"cannot store column '{name}' in '{self.target.display}' as "
                    f"{table.c[name].type}: {exc}"
                ) from None
        rows = list(zip(*columns, strict=True))
        for start in range(0, len(rows), BATCH_ROWS):
            conn.exec_driver_sql(compiled.string, rows[start : start + BATCH_ROWS])

    def _copy_insert(self, conn: Connection, table: Table, values: dict[str, list[Any]]) -> None:
        """PostgreSQL: COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING."""
        names = list(values)
        staging = Table(
            f"foretell_staging_{uuid.uuid4().hex}",
            MetaData(),
            *[Column(name, table.c[name].type) for name in names],
            prefixes=["TEMPORARY"],
            postgresql_on_commit="DROP",
        )
        staging.create(conn)
        copy_sql = psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
            psycopg.sql.Identifier(staging.name),
            psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, names)),
        )
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for row in zip(*values.values(), strict=True):
                copy.write_row(row)
        moved = postgresql.insert(table).from_select(names, select(staging))
        conn.execute(moved.on_conflict_do_nothing(index_elements=list(KEY)))

    def _error(self, action: str, exc: BaseException) -> UserError:
        return UserError(f"cannot {action} '{self.target.display}': {reason(exc)}")


def _first(series: pd.Series[Any]) -> Any:
    values = series.dropna()
    return values.iloc[0] if len(values) else None


def _sql_type(series: pd.Series[Any]) -> TypeEngine[Any]:
    """The column type for a results column, from its dtype or its first value."""
    if str(series.name) in KEY:
        return Text()
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return Boolean()
    if pd.api.types.is_integer_dtype(dtype):
        return BigInteger()
    if pd.api.types.is_float_dtype(dtype):
        return Float()
    if isinstance(dtype, pd.DatetimeTZDtype):
        return DateTime(timezone=True)
    if pd.api.types.is_datetime64_dtype(dtype):
        return DateTime()
    value = _first(series)
    if isinstance(value, bool | np.bool_):
        return Boolean()
    if isinstance(value, int | np.integer):
        return BigInteger()
    if isinstance(value, float | np.floating):
        return Float()
    if isinstance(value, datetime):
        return DateTime(timezone=value.tzinfo is not None)
    return Text()  # strings, JSON of lists and mappings, and columns with no value yet


def _values(series: pd.Series[Any], sql_type: TypeEngine[Any]) -> list[Any]:
    """The column as plain Python values for the driver: NULL for missing, JSON for lists,
    timestamps in UTC (without an offset for a column that keeps none)."""
    dtype = series.dtype
    keep_offset = bool(getattr(sql_type, "timezone", False))
    missing = series.isna().to_numpy()
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        if isinstance(dtype, pd.DatetimeTZDtype):
            series = series.dt.tz_convert("UTC")
            series = series if keep_offset else series.dt.tz_localize(None)
        values: list[Any] = series.dt.to_pydatetime().tolist()
    elif pd.api.types.is_object_dtype(dtype):
        values = [
            None if m else _plain(v, keep_offset) for v, m in zip(series, missing, strict=True)
        ]
        return values
    else:  # numbers, booleans and strings: tolist() already gives Python values
        values = series.tolist()
    if missing.any():
        values = [None if m else v for v, m in zip(values, missing, strict=True)]
    return values


def _plain(value: Any, keep_offset: bool) -> Any:
    if isinstance(value, list | tuple | dict | np.ndarray):
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    if isinstance(value, str | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
            return value if keep_offset else value.replace(tzinfo=None)
    return value
