"""The prediction log: every scored row (or a sample) written off the hot path.

Serving threads hand whole scored batches to a bounded queue; one writer thread turns them into
rows and stores what gathered within ``LINGER_S`` in one transaction. A full queue makes serving
wait rather than drop a prediction; a failed write is retried, counted and logged, never raised
into serving. ``close()`` flushes what is queued, so a graceful shutdown loses nothing that was
answered.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from foretell.monitoring.store import MonitoringStore

if TYPE_CHECKING:
    from prometheus_client import Counter

    from foretell.pipeline.model import Batch

log = logging.getLogger("foretell.predlog")
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class PredictionLog:
    """Logs scored batches to a :class:`MonitoringStore` from a background thread."""

    #: The most queued batches written in one transaction.
    GROUP = 256
    #: How long the writer lets batches gather before writing them, in seconds.
    LINGER_S = 0.05

    def __init__(
        self,
        store: MonitoringStore,
        sample_rate: float = 1.0,
        capacity: int = 1024,
        failures: Counter | None = None,
    ) -> None:
        self.store, self.sample_rate, self.failures = store, sample_rate, failures
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=capacity)
        self.written = 0
        self.writer = threading.Thread(target=self._run, name="foretell-predlog", daemon=True)
        self.writer.start()

    def observe(self, batch: Batch) -> None:
        """Queues a scored batch (waits if the writer is far behind)."""
        if len(batch.usable):
            self.queue.put(batch)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            # one transaction for everything queued, after a short wait for more: a commit per
            # 1-row request would cap serving at the store's commits per second, and each
            # transaction costs the CPU of some ten rows, much of it under the GIL
            batches = [self.queue.get()]
            if batches[0] is not None and self.queue.qsize() < self.GROUP:
                time.sleep(self.LINGER_S)
            while len(batches) < self.GROUP and not self.queue.empty():
                batches.append(self.queue.get_nowait())
            stopping = any(batch is None for batch in batches)
            rows = [row for batch in batches if batch is not None for row in self._rows(batch)]
            if rows:
                self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        for attempt in range(5):
            try:
                self.store.log(rows)
                self.written += len(rows)
                return
            except Exception as exc:  # the store is down: retry, then count and go on
                log.warning(
                    "writing %d predictions failed (%s); attempt %d",
                    len(rows),
                    exc,
                    attempt + 1,
                )
                time.sleep(min(0.2 * 2**attempt, 3.0))
        if self.failures is not None:
            self.failures.inc(len(rows))
        log.error("dropped %d predictions after 5 failed writes", len(rows))

    def _rows(self, batch: Batch) -> list[dict[str, Any]]:
        kept: Sequence[int] = range(len(batch.usable))
        if self.sample_rate < 1.0:  # sampled first: a row left out costs nothing more
            kept = [j for j in kept if random.random() < self.sample_rate]
            if not kept:
                return []
        model = batch.model
        records = batch.records()  # with the explanation and uncertainty when asked for
        latency = float(sum(batch.timings_ms.values()))
        names = model.spec.feature_names
        now = time.time()
        positions = batch.usable[kept] if len(kept) < len(batch.usable) else batch.usable
        # whole columns at a time: a Python call per value would hold the GIL that serving needs
        whole = len(positions) == batch.length
        columns = [_values(batch.inputs[n], positions, whole) for n in names]
        rows = []
        for j, row, values in zip(
            kept, positions.tolist(), zip(*columns, strict=True), strict=True
        ):
            inputs = dict(zip(names, values, strict=True))  # orjson writes NaN as null
            rows.append(
                {
                    "prediction_id": batch.prediction_ids[row],
                    "model": model.name,
                    "version": model.version,
                    "ts": now,
                    "inputs": orjson.dumps(inputs, option=_OPTIONS).decode(),
                    "outputs": orjson.dumps(records[j], option=_OPTIONS).decode(),
                    "decision": str(batch.decisions[j]),
                    "latency_ms": latency,
                }
            )
        return rows

    def close(self, timeout: float = 30.0) -> None:
        """Writes everything queued, then stops the writer."""
        self.queue.put(None)
        self.writer.join(timeout)


def _values(column: Any, rows: np.ndarray, whole: bool) -> list[Any]:
    """The values of ``column`` at ``rows`` as plain Python values; ``whole``: ``rows`` are all
    of its rows, in order, which spares indexing a copy."""
    if isinstance(column, np.ndarray):
        values: list[Any] = (column if whole else column[rows]).tolist()
        return values
    return list(column) if whole else [column[i] for i in rows.tolist()]
