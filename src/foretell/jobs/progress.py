"""Progress of long jobs: a live bar with rows/s and ETA on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter(Protocol):
    """What a job tells about its progress."""

    def start(self, total: int | None, done: int) -> None: ...

    def advance(self, rows: int, rejected: int) -> None: ...

    def stop(self) -> None: ...


class Silent:
    """Reports nothing (the Python API's default)."""

    def start(self, total: int | None, done: int) -> None:
        return None

    def advance(self, rows: int, rejected: int) -> None:
        return None

    def stop(self) -> None:
        return None


class RowsPerSecond(TextColumn):
    def __init__(self) -> None:
        super().__init__("{task.fields[rate]}")


class Bar:
    """A rich progress bar on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, label: str, console: Console | None = None, every: float = 2.0) -> None:
        self.console = console or Console(stderr=True)
        self.label, self.every = label, every
        self.live = self.console.is_terminal and sys.stderr.isatty()
        self.rows = self.rejected = 0
        self.started = self.last = time.monotonic()
        self.total: int | None = None
        self.progress: Progress | None = None

    def start(self, total: int | None, done: int) -> None:
        self.total, self.rows = total, done
        self.started = self.last = time.monotonic()
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                RowsPerSecond(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total, completed=done, rate="")

    def _rate(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-9)

    def advance(self, rows: int, rejected: int) -> None:
        self.rows += rows
        self.rejected += rejected
        if self.progress is not None:
            rate = f"{self._rate():,.0f} rows/s"
            self.progress.update(self.task, advance=rows, rate=rate)
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self._line()

    def _line(self) -> None:
        total = f"/{self.total:,}" if self.total else ""
        self.console.print(
            f"{self.label}: {self.rows:,}{total} rows, {self.rejected:,} rejected, "
            f"{self._rate():,.0f} rows/s",
            markup=False,
            highlight=False,
        )

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        else:
            self._line()
