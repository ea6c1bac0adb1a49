"""Stream jobs: events in, decisions out, each stored exactly once, acknowledged after.

The loop reads a micro-batch (up to ``max_batch`` messages, waiting at most ``max_wait``
seconds for the first), scores it with the same pipeline as every other way in, and hands it
to a writer thread that stores the results idempotently keyed by message id, publishes
decisions and dead letters, and only then acknowledges the batch. Reading and scoring the next
batch overlaps with storing the last one; at most one scored batch waits for the writer, so a
slow destination slows consumption instead of growing memory (backpressure). If the
destination fails with an error that can pass (a database restarting, a broker unreachable),
the batch is retried with backoff; messages are never acknowledged before their results are
stored, and batches are acknowledged in the order they were read.

On stop (SIGTERM), reading ends, the batches already read are stored and acknowledged, and the
job returns; a batch whose destination is still failing then is left unacknowledged, so the
source delivers it again.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import orjson
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from foretell.destinations import ERROR_COLUMNS, Destination
from foretell.destinations.publish import Publisher
from foretell.errors import ForetellError, InputFormatError
from foretell.jobs.batch import Chunk, score_chunk
from foretell.pipeline import Model
from foretell.sources.stream import Message, StreamSource, decode_record

log = logging.getLogger("foretell.stream")
MESSAGE_ID = "message_id"
#: Latency buckets, in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Names of exception types (or of a type they derive from) that a retry can outlive.
_TRANSIENT = frozenset(
    {
        "ConnectionError",
        "TimeoutError",
        "OperationalError",
        "InterfaceError",
        "DisconnectionError",
        "BusyLoadingError",
        "TryAgainError",
    }
)


def transient(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, is one that passes: a connection lost
    or refused, a database restarting or locked, a timeout."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) or any(
            t.__name__ in _TRANSIENT for t in type(current).__mro__
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


class BatchHistogram(Collector):
    """A Prometheus histogram observed a whole batch at a time (one numpy pass, no per-value
    Python call): at tens of thousands of messages a second that matters."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: dict[str, str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = np.asarray(buckets, dtype=float)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self.total = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray[Any, Any]) -> None:
        if not len(values):
            return
        counts = np.bincount(
            np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts)
        )
        with self._lock:
            self.counts += counts
            self.total += float(values.sum())

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative, total = np.cumsum(self.counts), self.total
        buckets = [
            (repr(float(b)), float(c)) for b, c in zip(self.bounds, cumulative, strict=False)
        ]
        buckets.append(("+Inf", float(cumulative[-1])))
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), buckets, total)
        return [family]


class StreamMetrics:
    """Prometheus metrics of a stream job, in their own registry.

    ``foretell_stream_messages_total{outcome}`` (scored or dead), ``..._dead_letters_total``,
    ``..._messages_per_second`` (over the last 10 s), ``..._lag`` (messages waiting in the
    source, where it knows), ``..._latency_seconds`` (event time to result stored),
    ``..._batch_size`` and ``..._write_retries_total``.
    """

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model": model}
        self.messages = Counter(
            "foretell_stream_messages",
            "Messages handled, by outcome (scored or dead).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.scored = self.messages.labels(outcome="scored", **labels)
        self.dead = self.messages.labels(outcome="dead", **labels)
        self.dead_letters = Counter(
            "foretell_stream_dead_letters",
            "Messages sent to the dead letters (not JSON, invalid, or failing to score).",
            ["model"],
            registry=self.registry,
        ).labels(**labels)
        self.lag = Gauge(
            "foretell_stream_lag",
            "Messages waiting in the source (Redis: not yet read by the group, or pending).",
            ["model"],
            registry=self.registry,
        ).labels(**labels)
        self._recent: deque[tuple[float, int]] = deque()
        self._recent_lock = threading.Lock()
        Gauge(
            "foretell_stream_messages_per_second",
            "Messages handled per second over the last 10 seconds.",
            ["model"],
            registry=self.registry,
        ).labels(**labels).set_function(self.rate)
        self.latency = BatchHistogram(
            "foretell_stream_latency_seconds",
            "From the event's time (its Redis id, or its arrival) to its result stored.",
            labels,
            LATENCY_BUCKETS,
            self.registry,
        )
        self.batch = Histogram(
            "foretell_stream_batch_size",
            "Messages per micro-batch.",
            ["model"],
            registry=self.registry,
            buckets=(1, 8, 32, 128, 512, 2048, 8192),
        ).labels(**labels)
        self.retries = Counter(
            "foretell_stream_write_retries",
            "Failed writes (or reads) retried.",
            ["model"],
            registry=self.registry,
        ).labels(**labels)

    def handled(self, count: int, window: float = 10.0) -> None:
        now = time.monotonic()
        with self._recent_lock:
            self._recent.append((now, count))
            while self._recent and self._recent[0][0] < now - window:
                self._recent.popleft()

    def rate(self, window: float = 10.0) -> float:
        now = time.monotonic()
        with self._recent_lock:
            recent = [(t, n) for t, n in self._recent if t >= now - window]
        return sum(n for _, n in recent) / window


@dataclass
class StreamTotals:
    batches: int = 0
    scored: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    number: int
    messages: list[Message]
    results: pd.DataFrame
    dead: list[dict[str, Any]]
    event_times: np.ndarray[Any, Any]  # of the result rows, NaN where unknown


class StreamJob:
    """Consumes ``source`` with ``model`` until ``stop`` is set (or the source is idle)."""

    def __init__(
        self,
        model: Model,
        source: StreamSource,
        destination: Destination,
        dead_letters: Destination | Publisher,
        output: Publisher | None = None,
        job_id: str | None = None,
        max_batch: int = 2000,
        max_wait: float = 0.05,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.model, self.source, self.destination = model, source, destination
        self.dead_letters, self.output = dead_letters, output
        self.job_id = job_id or f"stream-{model.name}"
        self.max_batch, self.max_wait = max(1, max_batch), max_wait
        self.metrics = metrics or StreamMetrics(model.name)
        self.totals = StreamTotals()
        self.batch_number = time.time_ns()

    # -- the reading side: read, decode, score --------------------------------------------

    def run(self, stop: threading.Event, exit_when_idle: float | None = None) -> StreamTotals:
        """Consumes until ``stop`` is set, the source ends, or it was idle ``exit_when_idle``
        seconds; every batch read by then is stored and acknowledged before this returns."""
        scored: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        failure: list[BaseException] = []
        writer = threading.Thread(
            target=self._write_loop,
            args=(scored, stop, failure),
            name="foretell-stream-write",
            daemon=True,
        )
        writer.start()
        try:
            self._read_loop(scored, writer, stop, failure, exit_when_idle)
        finally:
            _hand_over(scored, None, writer)
            writer.join()
        if failure:
            raise failure[0]
        return self.totals

    def _read_loop(
        self,
        scored: queue.Queue[_Batch | None],
        writer: threading.Thread,
        stop: threading.Event,
        failure: list[BaseException],
        exit_when_idle: float | None,
    ) -> None:
        idle_since = time.monotonic()
        next_lag = 0.0
        while not stop.is_set() and not failure:
            now = time.monotonic()
            if now >= next_lag:
                self._update_lag()
                next_lag = now + 1.0
            messages = self._read(stop)
            if not messages:
                ended = getattr(self.source, "ended", False)
                if ended or (exit_when_idle and time.monotonic() - idle_since > exit_when_idle):
                    break
                continue
            idle_since = time.monotonic()
            if not _hand_over(scored, self._score(messages), writer):
                break
        self._update_lag()

    def _read(self, stop: threading.Event) -> list[Message]:
        delay = 0.2
        while True:
            try:
                return self.source.read(self.max_batch, self.max_wait)
            except Exception as exc:
                if not transient(exc):
                    raise
                self.metrics.retries.inc()
                log.warning(
                    "reading the source failed (%s: %s); retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                if stop.wait(delay):
                    return []
                delay = min(delay * 2, 5.0)

    def _update_lag(self) -> None:
        try:
            lag = self.source.lag()
        except Exception as exc:  # the gauge waits for the source to be back
            log.debug("no lag: %s", exc)
            return
        if lag is not None:
            self.metrics.lag.set(lag)

    def _score(self, messages: list[Message]) -> _Batch:
        """Decodes and scores one micro-batch; bad messages become dead letters."""
        self.batch_number += 1
        records: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        by_id: dict[str, Message] = {}
        for m in messages:
            if m.id in by_id:  # delivered twice in one batch (MQTT may): keep the first
                continue
            by_id[m.id] = m
            try:
                records.append({**decode_record(m.body), MESSAGE_ID: m.id})
            except InputFormatError as exc:
                dead.append(self._dead(m, exc.message))
        results = pd.DataFrame()
        times = np.empty(0)
        if records:
            results, rejected = self._score_records(records)
            dead.extend(self._dead(by_id[key], reason) for key, reason in rejected)
            times = np.array(
                [by_id[k].event_time for k in results["row_key"]] if len(results) else [],
                dtype=float,
            )
        return _Batch(self.batch_number, messages, results, dead, times)

    def _score_records(
        self, records: list[dict[str, Any]]
    ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
        """Results and rejections (message id, reason); a batch the pipeline cannot take as a
        whole is scored one message at a time, so one poison message cannot stop the job."""
        try:
            frame = pd.DataFrame.from_records(records)
            scored = score_chunk(
                self.model, self.job_id, Chunk(self.batch_number, 0, frame), MESSAGE_ID
            )
        except Exception as exc:
            every = self._all_rejected(records)
            if every is not None:
                return pd.DataFrame(), every
            if len(records) == 1:
                reason = exc.message if isinstance(exc, ForetellError) else repr(exc)
                return pd.DataFrame(), [(str(records[0][MESSAGE_ID]), f"scoring failed: {reason}")]
            log.warning("scoring a batch failed (%r); scoring its messages one by one", exc)
            parts, rejected = [], []
            for record in records:
                part, rejects = self._score_records([record])
                if len(part):
                    parts.append(part)
                rejected.extend(rejects)
            return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), rejected
        errors = scored.errors
        return scored.results, list(
            zip(errors["row_key"].astype(str), errors["error"].astype(str), strict=True)
        )

    def _all_rejected(self, records: list[dict[str, Any]]) -> list[tuple[str, str]] | None:
        """The rejections when the pipeline rejects every record (the results table of a
        batch without one usable row cannot be built), else None."""
        try:
            batch = self.model.run(pd.DataFrame.from_records(records))
            rejected = batch.errors()
        except Exception:
            return None
        if len(batch.usable) or len(rejected) != len(records):
            return None
        return [(str(records[row][MESSAGE_ID]), reason) for row, reason in rejected.items()]

    def _dead(self, message: Message, reason: str) -> dict[str, Any]:
        """A dead letter: the message's key, why, and the message as it came (as text)."""
        body = message.body
        if isinstance(body, bytes):
            text = body.decode("utf-8", "replace")
        elif isinstance(body, str):
            text = body
        else:
            try:
                text = orjson.dumps(body, default=str).decode()
            except TypeError:  # what orjson cannot write (an integer beyond 64 bits)
                text = json.dumps(body, default=str)
        return {"job_id": self.job_id, "row_key": message.id, "error": reason, "input": text}

    # -- the writing side: store, publish, acknowledge --------------------------------------

    def _write_loop(
        self,
        scored: queue.Queue[_Batch | None],
        stop: threading.Event,
        failure: list[BaseException],
    ) -> None:
        abandoned = False
        while (batch := scored.get()) is not None:
            if abandoned or failure:
                continue  # never acknowledge past a batch left unstored (files keep offsets)
            try:
                if not self._retry(partial(self._store, batch), stop):
                    abandoned = True
                    continue
                if not self._retry(partial(self.source.ack, batch.messages), stop):
                    abandoned = True
                    continue
                self._account(batch)
            except BaseException as exc:
                failure.append(exc)

    def _store(self, batch: _Batch) -> None:
        if len(batch.results):
            self.destination.write(self.job_id, batch.number, batch.results)
        if batch.dead:
            if isinstance(self.dead_letters, Publisher):
                self.dead_letters.publish(batch.dead)
            else:
                frame = pd.DataFrame(batch.dead, columns=ERROR_COLUMNS)
                self.dead_letters.write(self.job_id, batch.number, frame)
        if self.output is not None and len(batch.results):
            self.output.publish(records(batch.results))

    def _account(self, batch: _Batch) -> None:
        times = batch.event_times[~np.isnan(batch.event_times)]
        self.metrics.latency.observe_many(np.maximum(time.time() - times, 0.0))
        self.metrics.batch.observe(len(batch.messages))
        self.metrics.scored.inc(len(batch.results))
        self.metrics.dead.inc(len(batch.dead))
        self.metrics.dead_letters.inc(len(batch.dead))
        self.metrics.handled(len(batch.messages))
        self.totals.batches += 1
        self.totals.scored += len(batch.results)
        self.totals.dead += len(batch.dead)

    def _retry(self, action: Callable[[], None], stop: threading.Event) -> bool:
        """Runs ``action`` until it succeeds (True) or ``stop`` is set while it fails (False).

        foretell's own errors that are not transient (a table whose columns do not match)
        are raised: retrying cannot help them.
        """
        delay = 0.2
        while True:
            try:
                action()
                return True
            except ForetellError as exc:
                if not transient(exc):
                    raise
                self._failed(exc, delay)
            except Exception as exc:  # a destination or broker that is down: wait, try again
                self._failed(exc, delay)
            if stop.wait(delay):
                return False
            delay = min(delay * 2, 5.0)

    def _failed(self, exc: Exception, delay: float) -> None:
        self.metrics.retries.inc()
        message = exc.message if isinstance(exc, ForetellError) else str(exc)
        log.warning(
            "storing a batch failed (%s: %s); retrying in %.1f s",
            type(exc).__name__,
            message,
            delay,
        )


def _hand_over(
    scored: queue.Queue[_Batch | None], item: _Batch | None, writer: threading.Thread
) -> bool:
    """Puts ``item`` for the writer; False if the writer ended and cannot take it."""
    while writer.is_alive():
        try:
            scored.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of a results frame as plain dicts, fast (column lists, not ``to_dict``);
    timestamps as text, as ``str`` writes them."""
    names = [str(c) for c in frame.columns]
    columns: list[list[Any]] = []
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_datetime64_any_dtype(series.dtype):
            values = series.to_numpy()
            if len(values) and not series.isna().any() and (values == values[0]).all():
                columns.append([str(series.iloc[0])] * len(series))  # scored_at: one per batch
            else:
                columns.append([None if v == "NaT" else v for v in series.astype(str).tolist()])
        else:
            columns.append(series.tolist())
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
