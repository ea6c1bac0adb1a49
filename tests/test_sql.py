"""SQL sources and destinations against a real SQLite file and the real PostgreSQL service.

PostgreSQL is expected on 127.0.0.1:5432, database ``test``, role ``postgres`` (or ``root``),
trust authentication. When it cannot be reached its tests fail rather than skip: a missing
service must not pass for a green run.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
import psycopg
import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from foretell.destinations.base import ERROR_COLUMNS
from foretell.destinations.sql import SqlDestination
from foretell.errors import UserError
from foretell.sources.sql import SqlSource
from tests.conftest import free_port

PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"


@functools.cache
def _pg_role() -> str:
    failures = []
    for role in ("postgres", "root"):
        try:
            with psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=role, dbname=PG_DB, connect_timeout=5
            ):
                return role
        except psycopg.Error as exc:
            failures.append(f"{role}: {str(exc).splitlines()[0]}")
    pytest.fail(
        f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}/{PG_DB} ({'; '.join(failures)}); "
        "the SQL tests need it"
    )


@dataclass
class Db:
    """One backend: URIs to it, an engine to set up tables, and the tables to drop."""

    backend: str
    base: str
    engine: Engine
    tables: list[str] = field(default_factory=list)

    def name(self) -> str:
        table = f"t_{uuid.uuid4().hex[:12]}"
        self.tables += [table, f"{table}_errors"]
        return table

    def uri(self, **params: str) -> str:
        return f"{self.base}?{urlencode(params, quote_via=quote)}"

    def run(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    if request.param == "sqlite":
        base = f"sqlite:///{tmp_path / 'test.db'}"
        engine = create_engine(base)
        with engine.connect():  # creates the file
            pass
    else:
        base = f"postgresql://{_pg_role()}@{PG_HOST}:{PG_PORT}/{PG_DB}"
        engine = create_engine(base.replace("postgresql://", "postgresql+psycopg://"))
    handle = Db(request.param, base, engine)
    yield handle
    with engine.begin() as conn:
        for table in handle.tables:
            conn.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
    engine.dispose()


def _people(db: Db, rows: int = 10, key: bool = True) -> str:
    """A table of ``rows`` people inserted in a scrambled order."""
    table = db.name()
    pk = " PRIMARY KEY" if key else ""
    db.run(f"CREATE TABLE {table} (id INTEGER{pk}, score FLOAT, name TEXT)")
    order = sorted(range(rows), key=lambda i: (i * 7) % rows)
    values = ", ".join(f"({i}, {i / 2}, 'n{i % 3}')" for i in order)
    db.run(f"INSERT INTO {table} VALUES {values}")
    return table


def _read_all(source: SqlSource, rows: int) -> tuple[list[int], pd.DataFrame]:
    chunks = list(source.chunks(rows))
    return [len(c) for c in chunks], pd.concat(chunks, ignore_index=True)


def _clean(message: str) -> None:
    """A user-facing error is one line, without SQLAlchemy's SQL dump or links."""
    assert "\n" not in message
    for noise in ("Traceback", "sqlalche.me", "[SQL", "Background on this error"):
        assert noise not in message


def _unreachable_base() -> str:
    return f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/{PG_DB}"


# --- sources -------------------------------------------------------------------------------------


def test_table_is_read_in_exact_chunks_in_key_order(db: Db) -> None:
    table = _people(db, rows=10)
    source = SqlSource(db.uri(table=table))
    assert source.columns() == ["id", "score", "name"]
    assert source.count() == 10
    sizes, frame = _read_all(source, 4)
    assert sizes == [4, 4, 2]
    assert frame["id"].tolist() == list(range(10))
    assert frame["score"].tolist() == [i / 2 for i in range(10)]
    again = pd.concat(list(source.chunks(4)), ignore_index=True)
    pd.testing.assert_frame_equal(frame, again)
    source.dispose()


def test_table_without_key_is_ordered_by_all_columns_or_order_by(db: Db) -> None:
    table = _people(db, rows=7, key=False)
    _, frame = _read_all(SqlSource(db.uri(table=table)), 3)
    assert frame["id"].tolist() == list(range(7))
    _, by_name = _read_all(SqlSource(db.uri(table=table), order_by="name"), 3)
    assert by_name["name"].tolist() == sorted(by_name["name"].tolist())


def test_query_is_read_in_chunks_with_its_own_order_or_order_by(db: Db) -> None:
    table = _people(db, rows=10)
    ordered = SqlSource(db.uri(query=f"SELECT id, name FROM {table} WHERE id >= 3 ORDER BY id"))
    assert ordered.columns() == ["id", "name"]
    assert ordered.count() == 7
    sizes, frame = _read_all(ordered, 3)
    assert sizes == [3, 3, 1]
    assert frame["id"].tolist() == list(range(3, 10))
    unordered = f"SELECT id, score FROM {table} WHERE id < 5"
    sizes, frame = _read_all(SqlSource(db.uri(query=unordered), order_by="score"), 2)
    assert sizes == [2, 2, 1]
    assert frame["id"].tolist() == [0, 1, 2, 3, 4]


def test_url_encoded_query_with_special_characters(db: Db) -> None:
    table = _people(db, rows=10)
    query = (
        f"SELECT id, ':x' || name AS label FROM {table} "
        "WHERE name LIKE 'n%' AND id >= 2 AND id <> 5 ORDER BY id;"
    )
    source = SqlSource(f"{db.base}?query={quote(query, safe='')}")
    _, frame = _read_all(source, 100)
    assert frame["id"].tolist() == [2, 3, 4, 6, 7, 8, 9]
    assert frame["label"].iloc[0] == ":xn2"


def test_missing_table_is_a_clear_error(db: Db) -> None:
    known = _people(db, rows=1)
    with pytest.raises(UserError) as caught:
        SqlSource(db.uri(table="no_such_table")).columns()
    message = caught.value.message
    _clean(message)
    assert "table 'no_such_table' does not exist" in message
    assert known in message  # the tables that do exist are listed


def test_bad_query_is_a_clear_error(db: Db) -> None:
    with pytest.raises(UserError) as caught:
        SqlSource(db.uri(query="SELEKT nothing FROM nowhere")).columns()
    _clean(caught.value.message)
    assert caught.value.message.startswith("cannot run the query of")


def test_query_cannot_smuggle_a_second_statement(db: Db) -> None:
    table = _people(db, rows=3)
    with pytest.raises(UserError):
        SqlSource(db.uri(query=f"SELECT 1 AS one; DROP TABLE {table}")).count()
    assert SqlSource(db.uri(table=table)).count() == 3


def test_table_name_injection_is_refused(db: Db) -> None:
    victim = _people(db, rows=3)
    with pytest.raises(UserError) as caught:
        SqlSource(db.uri(table=f"x; DROP TABLE {victim}")).columns()
    _clean(caught.value.message)
    assert "does not exist" in caught.value.message
    with pytest.raises(UserError, match="expected letters, digits and underscores"):
        SqlDestination(db.uri(table=f"x; DROP TABLE {victim}"))
    assert SqlSource(db.uri(table=victim)).count() == 3


@pytest.mark.parametrize("params", ["", "?sslmode=disable", "?table=a&query=SELECT%201"])
def test_table_or_query_is_required(db: Db, params: str) -> None:
    with pytest.raises(UserError) as caught:
        SqlSource(f"{db.base}{params}")
    _clean(caught.value.message)
    assert "must give '?table=name' or '?query=SELECT...'" in caught.value.message


def test_unknown_order_by_column_is_a_clear_error(db: Db) -> None:
    table = _people(db, rows=2)
    with pytest.raises(UserError, match=r"cannot order .* by 'nope': no such column"):
        SqlSource(db.uri(table=table), order_by="nope").columns()


def test_missing_sqlite_file_is_a_clear_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(UserError) as caught:
        SqlSource(f"sqlite:///{path}?table=t").columns()
    _clean(caught.value.message)
    assert "does not exist" in caught.value.message
    assert not path.exists()


def test_unreachable_server_is_a_clear_error_without_password() -> None:
    uri = f"{_unreachable_base()}?table=t"
    with pytest.raises(UserError) as caught:
        SqlSource(uri).columns()
    message = caught.value.message
    _clean(message)
    assert "s3cret" not in message
    assert "postgres:***@127.0.0.1" in message
    with pytest.raises(UserError) as caught:
        SqlDestination(uri).check()
    _clean(caught.value.message)
    assert caught.value.message.startswith("cannot connect to")
    assert "s3cret" not in caught.value.message


def test_unsupported_scheme_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="unsupported scheme 'mysql://'"):
        SqlSource("mysql://u@h/db?table=t")


# --- destinations --------------------------------------------------------------------------------


def _results(job: str, keys: range, **overrides: Any) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "job_id": job,
            "row_key": [str(k) for k in keys],
            "prediction_id": [f"{job}-{k}" for k in keys],
            "model": "churn",
            "model_version": "3",
            "probability": [k / 100 for k in keys],
            "label": list(keys),
            "flagged": [k % 2 == 0 for k in keys],
            "items": [["a", f"b{k}"] for k in keys],
            "decision": ["approve" if k % 2 else "review" for k in keys],
            "scored_at": [datetime(2024, 5, 1, 12, 0, k % 60, tzinfo=UTC) for k in keys],
        }
    )
    for name, value in overrides.items():
        frame[name] = value
    return frame


def test_destination_creates_a_typed_table_with_the_key(db: Db) -> None:
    table = db.name()
    SqlDestination(db.uri(table=table)).write("job-1", 0, _results("job-1", range(3)))
    found = inspect(db.engine)
    assert found.get_pk_constraint(table)["constrained_columns"] == ["job_id", "row_key"]
    types = {c["name"]: c["type"].compile(db.engine.dialect) for c in found.get_columns(table)}
    assert types["row_key"] == "TEXT"
    assert types["items"] == "TEXT"
    assert types["label"] == "BIGINT"
    assert types["probability"] in ("FLOAT", "DOUBLE PRECISION")
    assert types["flagged"] == "BOOLEAN"
    timestamp = "DATETIME" if db.backend == "sqlite" else "TIMESTAMP WITH TIME ZONE"
    assert types["scored_at"] == timestamp


def test_read_returns_exactly_the_rows_written(db: Db) -> None:
    destination = SqlDestination(db.uri(table=db.name()))
    written = _results("job-1", range(5))
    destination.write("job-1", 0, written)
    stored = destination.read("job-1")
    assert list(stored.columns) == list(written.columns)
    assert stored["row_key"].tolist() == ["0", "1", "2", "3", "4"]
    assert stored["probability"].tolist() == written["probability"].tolist()
    assert stored["label"].tolist() == [0, 1, 2, 3, 4]
    assert stored["flagged"].tolist() == [True, False, True, False, True]
    assert stored["items"].tolist() == [f'["a","b{k}"]' for k in range(5)]
    assert stored["scored_at"].tolist() == written["scored_at"].tolist()
    assert str(stored["scored_at"].dt.tz) == "UTC"
    assert destination.read("other-job").empty
    destination.dispose()


def test_writing_a_chunk_twice_stores_each_row_once(db: Db) -> None:
    destination = SqlDestination(db.uri(table=db.name()))
    destination.write("job-1", 0, _results("job-1", range(4)))
    destination.write("job-1", 0, _results("job-1", range(4), decision="changed"))
    stored = destination.read("job-1")
    assert len(stored) == 4
    assert "changed" not in stored["decision"].tolist()  # the first write wins


def test_two_jobs_are_stored_separately(db: Db) -> None:
    destination = SqlDestination(db.uri(table=db.name()))
    destination.write("job-1", 0, _results("job-1", range(3)))
    destination.write("job-2", 0, _results("job-2", range(5)))
    assert destination.read("job-1")["prediction_id"].tolist() == ["job-1-0", "job-1-1", "job-1-2"]
    assert len(destination.read("job-2")) == 5


def test_a_chunk_failing_midway_leaves_nothing_of_it(db: Db) -> None:
    destination = SqlDestination(db.uri(table=db.name()))
    destination.write("job-1", 0, _results("job-1", range(10)))
    # 25,000 rows: SQLite has inserted two 10,000-row batches when the bad value comes.
    bad = _results("job-1", range(10, 25_010))
    if db.backend == "sqlite":  # the driver cannot bind it
        bad["decision"] = [*bad["decision"][:20_000], *[object()] * 5_000]
    else:  # the server rejects it during the COPY
        bad["probability"] = [*bad["probability"][:20_000], *["not a number"] * 5_000]
    with pytest.raises(UserError) as caught:
        destination.write("job-1", 1, bad)
    _clean(caught.value.message)
    assert "cannot write chunk 1 of job 'job-1'" in caught.value.message
    assert len(destination.read("job-1")) == 10
    destination.write("job-1", 1, _results("job-1", range(10, 25_010)))
    assert len(destination.read("job-1")) == 25_010


def test_existing_table_with_other_columns_is_a_clear_error(db: Db) -> None:
    table = db.name()
    db.run(
        f"CREATE TABLE {table} (job_id TEXT, row_key TEXT, old_score FLOAT, "
        "PRIMARY KEY (job_id, row_key))"
    )
    with pytest.raises(UserError) as caught:
        SqlDestination(db.uri(table=table)).write("job-1", 0, _results("job-1", range(2)))
    message = caught.value.message
    _clean(message)
    assert f"table '{table}'" in message
    assert "lack old_score" in message
    assert "add decision, flagged, items" in message


def test_existing_table_without_the_key_is_a_clear_error(db: Db) -> None:
    table = db.name()
    columns = ", ".join(f"{name} TEXT" for name in _results("job-1", range(1)).columns)
    db.run(f"CREATE TABLE {table} ({columns})")
    with pytest.raises(UserError) as caught:
        SqlDestination(db.uri(table=table)).write("job-1", 0, _results("job-1", range(2)))
    _clean(caught.value.message)
    assert "no primary key or unique constraint on (job_id, row_key)" in caught.value.message


def test_errors_destination_is_a_sibling_table(db: Db) -> None:
    table = db.name()
    errors_uri = SqlDestination(db.uri(table=table)).errors_uri()
    assert errors_uri == db.uri(table=f"{table}_errors")
    errors = SqlDestination(errors_uri)
    rejected = pd.DataFrame(
        {
            "job_id": ["job-1"] * 2,
            "row_key": ["7", "9"],
            "error": ["age: must be >= 0", "income: missing"],
            "input": [{"age": -1}, {"age": 3, "income": None}],
        }
    )
    errors.write("job-1", 0, rejected[ERROR_COLUMNS])
    stored = errors.read("job-1")
    assert stored["input"].tolist() == ['{"age":-1}', '{"age":3,"income":null}']


def test_destination_accepts_a_query_free_uri_only(db: Db) -> None:
    with pytest.raises(UserError, match="a destination needs '\\?table=name'"):
        SqlDestination(db.uri(query="SELECT 1"))


def test_check_fails_when_the_sqlite_folder_is_missing(tmp_path: Path) -> None:
    destination = SqlDestination(f"sqlite:///{tmp_path / 'nowhere' / 'out.db'}?table=results")
    with pytest.raises(UserError) as caught:
        destination.check()
    _clean(caught.value.message)
    assert "does not exist" in caught.value.message
    SqlDestination(f"sqlite:///{tmp_path / 'out.db'}?table=results").check()


def test_sqlite_reader_and_writer_overlap(tmp_path: Path) -> None:
    base = f"sqlite:///{tmp_path / 'shared.db'}"
    destination = SqlDestination(f"{base}?table=results")
    destination.write("job-1", 0, _results("job-1", range(100)))
    reading = SqlSource(f"{base}?table=results").chunks(10)
    first = next(reading)  # the reader now holds an open read transaction
    destination.write("job-2", 0, _results("job-2", range(100)))
    rest = list(reading)
    assert len(first) + sum(len(c) for c in rest) == 100  # the reader's snapshot
    assert len(destination.read("job-2")) == 100


def test_write_ahead_logging_waits_for_a_new_file_another_process_holds(tmp_path: Path) -> None:
    # several processes opening a new file at once (two stream consumers started together):
    # SQLite answers all but one switch to write-ahead logging "database is locked" at once,
    # without its busy timeout; here a connection without one meets a file held for 0.3 s
    from foretell.sql_uri import _write_ahead

    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.3, holder.execute, ["COMMIT"]).start()
    with closing(sqlite3.connect(path, timeout=0)) as conn:
        _write_ahead(conn.cursor())
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    holder.close()
