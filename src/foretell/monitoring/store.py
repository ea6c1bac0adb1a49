"""The monitoring store: the prediction log and ground-truth feedback, in SQLite or PostgreSQL.

URI: ``sqlite:///foretell-data/monitoring.db`` (the embedded default) or
``postgresql://user@host:5432/db``; ``?table=PREFIX`` names the tables ``PREFIX_predictions``
and ``PREFIX_feedback`` (default prefix ``foretell``).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from foretell.sql_uri import open_engine, parse_sql_uri

if TYPE_CHECKING:
    import pandas as pd

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
#: The columns of a logged prediction, in the order :meth:`MonitoringStore.log_values` takes.
LOGGED = (
    "prediction_id",
    "model",
    "version",
    "ts",
    "inputs",
    "outputs",
    "decision",
    "latency_ms",
)


def _with_prefix(uri: str) -> str:
    if "table=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}table=foretell"


class MonitoringStore:
    """Logged predictions and the ground truth that arrives for them later."""

    def __init__(self, uri: str) -> None:
        target = parse_sql_uri(_with_prefix(uri), query_allowed=False)
        if target.is_sqlite:
            target.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        self.uri = target.display
        #: The URI as given, secrets included: for the prediction log's writer process only.
        self.connect_uri = uri
        self.engine = open_engine(target, self, wal=True)
        self.is_sqlite = target.is_sqlite
        # only the dialect in use is imported: PostgreSQL's costs a server 14 MiB
        self.dialect = importlib.import_module(
            f"sqlalchemy.dialects.{'sqlite' if target.is_sqlite else 'postgresql'}"
        )
        meta = sa.MetaData()
        prefix = target.table or "foretell"
        self.predictions = sa.Table(
            f"{prefix}_predictions",
            meta,
            sa.Column("prediction_id", sa.Text, primary_key=True),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("version", sa.Text, nullable=False),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("inputs", sa.Text, nullable=False),
            sa.Column("outputs", sa.Text, nullable=False),
            sa.Column("decision", sa.Text),
            sa.Column("latency_ms", sa.Float),
            sa.Index(f"{prefix}_predictions_model_ts", "model", "ts"),
        )
        self.feedback = sa.Table(
            f"{prefix}_feedback",
            meta,
            sa.Column("prediction_id", sa.Text, primary_key=True),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("ground_truth", sa.Text, nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
        )
        meta.create_all(self.engine)
        self._insert = self._insert_statement()

    def log(self, rows: Sequence[dict[str, Any]]) -> None:
        """Stores predictions (idempotent on prediction id); a column a row leaves out is NULL."""
        self.log_values([tuple(map(row.get, LOGGED)) for row in rows])

    def log_values(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """:meth:`log` for rows given as tuples of the :data:`LOGGED` columns, in that order,
        as the prediction log's writer builds them."""
        if not rows:
            return
        # SQLite takes the rows, PostgreSQL one array per column (see _insert_statement)
        values = rows if self.is_sqlite else tuple(map(list, zip(*rows, strict=True)))
        with self.engine.begin() as db:
            db.exec_driver_sql(self._insert, values)

    def _insert_statement(self) -> str:
        """The prediction log's insert, idempotent on prediction id, straight to the driver:
        SQLAlchemy's per-row parameter processing cost more than the insert itself, under the
        interpreter lock that serving needs."""
        columns = [self.predictions.c[name] for name in LOGGED]
        quote = self.engine.dialect.identifier_preparer
        names = ", ".join(quote.format_column(c) for c in columns)
        into = f"INSERT INTO {quote.format_table(self.predictions)} ({names})"
        if self.is_sqlite:
            return f"{into} VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
        # one statement over one array per column, sent in binary: psycopg's executemany
        # adapts every value in Python, at about SQLAlchemy's cost
        arrays = ", ".join(f"%b::{c.type.compile(self.engine.dialect)}[]" for c in columns)
        into = into.replace("%", "%%")  # else a % in the table's name reads as a marker
        return f"{into} SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"

    def add_feedback(self, model: str, items: Sequence[tuple[str, Any]]) -> int:
        """Stores ground truth per prediction id; a later value replaces an earlier one."""
        now = time.time()
        rows = [
            {
                "prediction_id": pid,
                "model": model,
                "ground_truth": orjson.dumps(truth).decode(),
                "received_at": now,
            }
            for pid, truth in items
        ]
        if not rows:
            return 0
        insert = self.dialect.insert(self.feedback)
        upsert = insert.on_conflict_do_update(
            index_elements=["prediction_id"],
            set_={
                "ground_truth": insert.excluded.ground_truth,
                "received_at": insert.excluded.received_at,
            },
        )
        with self.engine.begin() as db:
            db.execute(upsert, rows)
        return len(rows)

    def predictions_of(self, model: str, since: float = 0.0, limit: int = 100_000) -> pd.DataFrame:
        """Logged predictions of ``model`` since ``since`` (epoch seconds), newest last."""
        import pandas as pd  # only readers need it: the supervisor of --workers starts sooner

        p = self.predictions
        query = (
            sa.select(p)
            .where(p.c.model == model, p.c.ts >= since)
            .order_by(p.c.ts.desc())
            .limit(limit)
        )
        with self.engine.connect() as db:
            frame = pd.DataFrame(db.execute(query).mappings().all())
        return frame.iloc[::-1].reset_index(drop=True) if len(frame) else frame

    def labelled(self, model: str, since: float = 0.0, limit: int | None = None) -> pd.DataFrame:
        """Predictions of ``model`` that have ground truth, oldest first: inputs, outputs,
        truth, version and delay (inputs, outputs and truth as JSON text); the newest ``limit``
        of them when given."""
        import pandas as pd

        p, f = self.predictions, self.feedback
        query = (
            sa.select(
                p.c.prediction_id,
                p.c.version,
                p.c.ts,
                p.c.inputs,
                p.c.outputs,
                f.c.ground_truth,
                f.c.received_at,
            )
            .join(f, f.c.prediction_id == p.c.prediction_id)
            .where(p.c.model == model, p.c.ts >= since)
            .order_by(p.c.ts.desc(), p.c.prediction_id.desc())  # one batch shares a time
            .limit(limit)
        )
        with self.engine.connect() as db:
            frame = pd.DataFrame(db.execute(query).mappings().all())
        return frame.iloc[::-1].reset_index(drop=True) if len(frame) else frame

    def known(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are logged predictions."""
        p = self.predictions
        with self.engine.connect() as db:
            rows = db.execute(sa.select(p.c.prediction_id).where(p.c.prediction_id.in_(ids)))
            return {r[0] for r in rows}

    def dispose(self) -> None:
        self.engine.dispose()
