"""Parses sqlite:/// and postgresql:// URIs and opens their engines, for SQL sources and sinks.

Shared by :mod:`foretell.sources.sql`, :mod:`foretell.destinations.sql` and the monitoring
store (:mod:`foretell.monitoring.store`), so it sits outside all three: importing it brings
neither pandas nor the file formats. A URI names the database the SQLAlchemy way plus one
of two foretell parameters: ``table=<name>`` or ``query=<URL-encoded SELECT>``; any other
parameter (``sslmode``, ``connect_timeout``...) is passed on to the driver.
``postgresql://`` means psycopg 3 (``postgresql+psycopg://``).
"""

from __future__ import annotations

import re
import sqlite3
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from foretell.errors import UserError

#: How long SQLite waits for another connection's lock before giving up, in seconds.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: The page size of a SQLite file written with write-ahead logging, set when the file is new
#: (an existing file keeps its own). Logged predictions are about a kilobyte a row: with
#: SQLite's default 4,096-byte pages a row costs 6.9 us of CPU to insert and commit, 2.7 of
#: them in the kernel (a write per page to the log, a read and a write per page to
#: checkpoint it); with 16,384-byte pages 4.8 us and 10% less space (docs/benchmarks.md).
SQLITE_PAGE_BYTES = 16384
#: How long a PostgreSQL connection attempt may take, unless the URI sets connect_timeout.
POSTGRES_CONNECT_TIMEOUT_S = 10

_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
_EXAMPLES = "sqlite:///path/to/file.db?table=name or postgresql://user@host:5432/db?table=name"
# A colon before a word would make SQLAlchemy's text() read ':word' as a bind parameter.
_BIND_LIKE = re.compile(r"(?<![:\w\\]):(?=\w)")


def is_sql_uri(uri: str) -> bool:
    """Whether ``uri`` names a SQL database foretell can read or write."""
    return uri.split("://", 1)[0].lower() in _DRIVERS and "://" in uri


def hide_password(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***``: safe for messages and logs."""
    scheme, sep, rest = uri.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return uri
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{tail}"


@dataclass(frozen=True)
class SqlUri:
    """A parsed SQL URI: the SQLAlchemy URL to connect with, and the table or query it names."""

    uri: str
    url: URL
    table: str | None
    query: str | None

    @property
    def display(self) -> str:
        """The URI as the user wrote it, without its password."""
        return hide_password(self.uri)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database file (only meaningful when :attr:`is_sqlite`)."""
        return Path(self.url.database or "")

    def with_table(self, table: str) -> str:
        """The same URI (password included) naming ``table`` instead."""
        base, _, params = self.uri.partition("?")
        pairs = [(k, v) for k, v in parse_qsl(params, keep_blank_values=True) if k != "table"]
        return f"{base}?{urlencode([*pairs, ('table', table)], quote_via=quote)}"

    def text_query(self) -> str:
        """The query, with colons escaped so SQLAlchemy runs it exactly as written."""
        return _BIND_LIKE.sub(r"\\:", self.query or "")


def parse_sql_uri(uri: str, *, query_allowed: bool = True) -> SqlUri:
    """Parses ``uri``; exactly one of ``table`` and ``query`` (when allowed) must be given."""
    shown = hide_password(uri)
    try:
        url = make_url(uri)
    except ArgumentError:
        raise UserError(f"'{shown}' is not a valid database URI; expected {_EXAMPLES}") from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise UserError(
            f"database URI '{shown}' uses the unsupported scheme '{url.drivername}://'; "
            f"expected sqlite:/// or postgresql://"
        )
    params = dict(url.query)
    table, query = params.get("table"), params.get("query")
    for name, value in (("table", table), ("query", query)):
        if isinstance(value, tuple):
            raise UserError(
                f"database URI '{shown}' gives '{name}' {len(value)} times; expected one"
            )
    assert not isinstance(table, tuple) and not isinstance(query, tuple)
    query = query.strip().rstrip(";").strip() if query is not None else None
    if not query_allowed and query is not None:
        raise UserError(f"database URI '{shown}' has a 'query'; a destination needs '?table=name'")
    if (table is None) == (query is None) or table == "" or query == "":
        wanted = "'?table=name' or '?query=SELECT...'" if query_allowed else "'?table=name'"
        got = "both" if table is not None and query is not None else "neither or an empty one"
        raise UserError(f"database URI '{shown}' must give {wanted}; got {got}")
    url = url.set(drivername=driver).difference_update_query(["table", "query"])
    if driver == "sqlite" and url.database in (None, "", ":memory:"):
        raise UserError(
            f"SQLite URI '{shown}' names no database file; expected sqlite:///path/to/file.db"
        )
    return SqlUri(uri=uri, url=url, table=table, query=query)


def open_engine(target: SqlUri, owner: object, *, wal: bool = False) -> Engine:
    """An engine for ``target`` (pre-pinged pool), disposed of when ``owner`` is collected.

    SQLite gets a busy timeout and, if ``wal``, write-ahead logging so that a reader and a
    writer can overlap.
    """
    engine = _create(target, wal)
    weakref.finalize(owner, engine.dispose)  # closes pooled connections the owner forgot
    return engine


def _create(target: SqlUri, wal: bool) -> Engine:
    if not target.is_sqlite:
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in target.url.query:
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        return create_engine(target.url, pool_pre_ping=True, connect_args=connect_args)
    engine = create_engine(
        target.url, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if wal:  # the page size first: write-ahead logging fixes it
            cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_BYTES}")
            _write_ahead(cursor)
        cursor.close()

    return engine


def _write_ahead(cursor: Any) -> None:
    """Turns write-ahead logging on. Where several processes open a new file at once, SQLite
    answers all but one "database is locked" at once, without waiting out the busy timeout
    (two stream consumers started together failed so); so this waits and tries again."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def reason(exc: BaseException) -> str:
    """The driver's own first line about ``exc``, without SQLAlchemy's SQL and links."""
    cause = getattr(exc, "orig", None) or exc
    lines = [" ".join(line.split()) for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__
