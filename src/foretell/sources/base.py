"""The Source interface: a URI that yields its rows in deterministic chunks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import pandas as pd


class Source(ABC):
    """Rows to score, read chunk by chunk so memory does not grow with the input.

    Chunking is deterministic: for the same data and ``rows``, ``chunks`` yields the same
    chunks in the same order. A resumed job relies on it to skip the chunks already stored.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @abstractmethod
    def columns(self) -> list[str]:
        """The column names; opening the source here is how a bad URI or file fails early."""

    def count(self) -> int | None:
        """The number of rows, when it is cheap to know (for progress and ETA)."""
        return None

    @abstractmethod
    def chunks(self, rows: int) -> Iterator[pd.DataFrame]:
        """The rows in chunks of ``rows`` (the last may be shorter), in a stable order."""

    def check_key(self, key: str | None) -> None:
        """Fails with a clear error when the key column is missing."""
        from foretell.errors import UserError

        if key is not None and key not in self.columns():
            raise UserError(
                f"source '{self.uri}' has no key column '{key}'; its columns are "
                f"{', '.join(self.columns())}"
            )
