"""The Destination interface: idempotent writes of scored chunks, keyed by (job, row key)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import pandas as pd

#: Columns every result row starts with; the model's outputs and the decision follow.
RESULT_COLUMNS = ["job_id", "row_key", "prediction_id", "model", "model_version"]
#: Columns of a rejected row in an errors destination.
ERROR_COLUMNS = ["job_id", "row_key", "error", "input"]


class Destination(ABC):
    """Where a job's results (or its rejected rows) are stored.

    ``write`` is idempotent on ``(job_id, row_key)``: writing a chunk again, after a crash or a
    retry, never duplicates a row; and a chunk is stored whole or not at all.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def check(self) -> None:
        """Fails early, with a clear error, when the destination cannot be written."""
        return None

    @abstractmethod
    def write(self, job_id: str, chunk: int, frame: pd.DataFrame) -> None:
        """Stores chunk number ``chunk`` of job ``job_id`` atomically and idempotently."""

    def finish(self, job_id: str) -> None:
        """Called once every chunk is written (a single-file destination assembles it here)."""
        return None

    @abstractmethod
    def read(self, job_id: str) -> pd.DataFrame:
        """Every row stored for ``job_id``: how jobs and tests check what was written."""

    def errors_uri(self) -> str:
        """The default destination of this one's rejected rows."""
        return f"{self.uri}.errors.jsonl"
