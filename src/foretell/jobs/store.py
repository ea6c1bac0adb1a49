"""The job store: a record of every batch job and of each chunk it has stored.

An embedded SQLite file (``foretell-data/foretell.db`` by default). A chunk is recorded only
after its results and its rejected rows are both stored, so a resumed job redoes at most the
chunks in flight when it stopped, and the idempotent destinations make redoing them harmless.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from foretell.errors import NotFoundError, UserError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL,
    source TEXT NOT NULL, destination TEXT NOT NULL, errors TEXT NOT NULL,
    key TEXT, chunk_rows INTEGER NOT NULL, engine TEXT NOT NULL, status TEXT NOT NULL,
    rows_in INTEGER NOT NULL DEFAULT 0, rows_scored INTEGER NOT NULL DEFAULT 0,
    rows_rejected INTEGER NOT NULL DEFAULT 0, seconds REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_chunks (
    job_id TEXT NOT NULL, chunk INTEGER NOT NULL, rows_in INTEGER NOT NULL,
    rows_scored INTEGER NOT NULL, rows_rejected INTEGER NOT NULL, seconds REAL NOT NULL,
    PRIMARY KEY (job_id, chunk)
);
"""


@dataclass
class Job:
    """What a job does and how far it got."""

    job_id: str
    model: str
    version: str
    source: str
    destination: str
    errors: str
    key: str | None
    chunk_rows: int
    engine: str
    status: str = "running"
    rows_in: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    seconds: float = 0.0
    message: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


class JobStore:
    """Jobs and their stored chunks in a SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection for the store's life, shared by the job's threads under a lock
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The connection, in one transaction (committed at the end, rolled back on error)."""
        with self._lock, self._db:
            self._db.row_factory = None
            yield self._db

    def close(self) -> None:
        self._db.close()

    def create(self, job: Job) -> Job:
        job.created_at = job.updated_at = time.time()
        fields = asdict(job)
        with self._connect() as db:
            try:
                db.execute(
                    f"INSERT INTO jobs ({', '.join(fields)}) VALUES "
                    f"({', '.join('?' * len(fields))})",
                    list(fields.values()),
                )
            except sqlite3.IntegrityError:
                raise UserError(
                    f"job '{job.job_id}' already exists; resume it with --resume {job.job_id}"
                ) from None
        return job

    def get(self, job_id: str) -> Job:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job '{job_id}' in the job store {self.path}")
        return Job(**dict(row))

    def done_chunks(self, job_id: str) -> set[int]:
        with self._connect() as db:
            rows = db.execute("SELECT chunk FROM job_chunks WHERE job_id = ?", (job_id,))
            return {int(r[0]) for r in rows}

    def record_chunk(
        self, job_id: str, chunk: int, rows_in: int, scored: int, rejected: int, seconds: float
    ) -> None:
        """Marks a chunk stored, and adds its counts to the job's, in one transaction."""
        with self._connect() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO job_chunks VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, chunk, rows_in, scored, rejected, seconds),
            ).rowcount
            if inserted:
                db.execute(
                    "UPDATE jobs SET rows_in = rows_in + ?, rows_scored = rows_scored + ?, "
                    "rows_rejected = rows_rejected + ?, updated_at = ? WHERE job_id = ?",
                    (rows_in, scored, rejected, time.time(), job_id),
                )

    def finish(self, job_id: str, status: str, seconds: float, message: str = "") -> Job:
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET status = ?, seconds = seconds + ?, message = ?, updated_at = ? "
                "WHERE job_id = ?",
                (status, seconds, message, time.time(), job_id),
            )
        return self.get(job_id)

    def list(self) -> list[Job]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM jobs ORDER BY created_at").fetchall()
        return [Job(**dict(r)) for r in rows]

    def describe(self, job_id: str) -> dict[str, Any]:
        return asdict(self.get(job_id))
