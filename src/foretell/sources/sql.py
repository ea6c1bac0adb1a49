"""Rows from a SQL table or query (SQLite or PostgreSQL), streamed in deterministic chunks.

``sqlite:///path.db?table=t`` or ``?query=SELECT...`` (URL-encoded), and the same for
``postgresql://user@host:5432/db``. Rows are streamed with a server-side cursor, so memory
holds one chunk at a time.

Order, which a resumed job relies on: a table is read ordered by ``order_by`` when given (the
job's key column, which should be unique), else by its primary key, else by all its columns. A
query is wrapped and ordered by ``order_by`` when given; otherwise it runs as written and keeps
its own order, so it must be deterministic itself (an ``ORDER BY`` over unique columns).

The query is the user's own SQL, run read-only as a subquery (one SELECT, no trailing
statements); table and column names are checked against the database and always quoted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    ColumnElement,
    FromClause,
    MetaData,
    Select,
    Table,
    TextualSelect,
    column,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from foretell.errors import UserError
from foretell.sources.base import Source
from foretell.sql_uri import open_engine, parse_sql_uri, reason


@dataclass(frozen=True)
class _Plan:
    """What reading needs, worked out once: the columns and the statements."""

    columns: list[str]
    rows: Select[Any] | TextualSelect
    counted: FromClause


class SqlSource(Source):
    """The rows of a table or query in a SQLite or PostgreSQL database."""

    def __init__(self, uri: str, order_by: str | None = None) -> None:
        super().__init__(uri)
        self.target = parse_sql_uri(uri)
        self.order_by = order_by
        self._engine = open_engine(self.target, self)
        self._plan_cache: _Plan | None = None

    def columns(self) -> list[str]:
        return list(self._plan().columns)

    def count(self) -> int | None:
        plan = self._plan()
        statement = select(func.count()).select_from(plan.counted)
        try:
            with self._engine.connect() as conn:
                return int(conn.execute(statement).scalar_one())
        except SQLAlchemyError as exc:
            raise self._error("count the rows of", exc) from None

    def chunks(self, rows: int) -> Iterator[pd.DataFrame]:
        if rows < 1:
            raise UserError(f"chunk size must be a positive number of rows; got {rows}")
        plan = self._plan()
        try:
            with self._engine.connect() as conn:
                streaming = conn.execution_options(stream_results=True, yield_per=rows)
                result = streaming.execute(plan.rows)
                for part in result.partitions(rows):
                    yield _frame(part, plan.columns)
        except SQLAlchemyError as exc:
            raise self._error("read", exc) from None

    def dispose(self) -> None:
        """Closes the pooled connections."""
        self._engine.dispose()

    def _plan(self) -> _Plan:
        if self._plan_cache is None:
            path = self.target.sqlite_path
            if self.target.is_sqlite and not path.is_file():  # connecting would create it
                raise UserError(
                    f"cannot open '{self.target.display}': the SQLite file '{path}' does not "
                    "exist; expected an existing database file"
                )
            self._plan_cache = self._plan_table() if self.target.table else self._plan_query()
        return self._plan_cache

    def _plan_table(self) -> _Plan:
        name = self.target.table or ""
        try:
            with self._engine.connect() as conn:
                try:
                    table = Table(name, MetaData(), autoload_with=conn)
                except NoSuchTableError:
                    known = sorted(inspect(conn).get_table_names())
                    raise UserError(
                        f"table '{name}' does not exist in '{self.target.display}'; expected one "
                        f"of: {_listing(known)}"
                    ) from None
        except SQLAlchemyError as exc:
            raise self._error("open", exc) from None
        names = [c.name for c in table.columns]
        order: list[Column[Any]]
        if self.order_by is not None:
            order = [table.c[self._known(self.order_by, names)]]
        else:
            order = list(table.primary_key.columns) or list(table.columns)
        return _Plan(names, select(table).order_by(*order), table)

    def _plan_query(self) -> _Plan:
        query = self.target.text_query()
        probe = text(f"SELECT * FROM ({query}) AS foretell_query LIMIT 0")
        try:
            with self._engine.connect() as conn:
                names = list(conn.execute(probe).keys())
        except SQLAlchemyError as exc:
            raise self._error("run the query of", exc) from None
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(
                f"the query of '{self.target.display}' returns the column(s) {', '.join(twice)} "
                "more than once; expected unique column names (use AS to rename)"
            )
        typed: TextualSelect = text(query).columns(*[column(n) for n in names])
        wrapped = typed.subquery("foretell_query")
        rows: Select[Any] | TextualSelect = typed
        if self.order_by is not None:
            by: ColumnElement[Any] = wrapped.c[self._known(self.order_by, names)]
            rows = select(wrapped).order_by(by)
        return _Plan(names, rows, wrapped)

    def _known(self, name: str, names: list[str]) -> str:
        if name not in names:
            raise UserError(
                f"cannot order '{self.target.display}' by '{name}': no such column; expected one "
                f"of: {_listing(names)}"
            )
        return name

    def _error(self, action: str, exc: SQLAlchemyError) -> UserError:
        return UserError(f"cannot {action} '{self.target.display}': {reason(exc)}")


def _listing(names: list[str], limit: int = 20) -> str:
    if not names:
        return "(none)"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _frame(rows: Any, columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records([tuple(r) for r in rows], columns=columns)
    for name in frame.columns:
        if not pd.api.types.is_object_dtype(frame[name].dtype):
            continue
        values = frame[name].dropna()
        if len(values) and isinstance(values.iloc[0], Decimal):
            frame[name] = frame[name].astype(float)  # NUMERIC columns: models expect floats
    return frame
