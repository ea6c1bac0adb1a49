"""Stream jobs: events in, decisions out, each stored exactly once, acknowledged after.

The loop reads a micro-batch (up to ``max_batch`` messages or ``max_wait`` seconds), scores it
with the same pipeline as every other way in, writes results idempotently keyed by message id,
publishes decisions and dead letters, and only then acknowledges the batch. One batch is in
flight at a time, so a slow destination slows consumption instead of growing memory. If the
destination fails, the batch is retried with backoff; messages are never acknowledged before
their results are stored.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from foretell.destinations import Destination
from foretell.destinations.publish import Publisher
from foretell.errors import ForetellError, InputFormatError
from foretell.jobs.batch import Chunk, score_chunk
from foretell.pipeline import Model
from foretell.sources.stream import Message, StreamSource, decode_record

log = logging.getLogger("foretell.stream")
MESSAGE_ID = "message_id"


class StreamMetrics:
    """Prometheus metrics of a stream job, in their own registry."""

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
        self.lag = Gauge(
            "foretell_stream_lag",
            "Messages waiting in the source.",
            ["model"],
            registry=self.registry,
        ).labels(**labels)
        self.latency = Histogram(
            "foretell_stream_latency_seconds",
            "From the event's time to its result stored.",
            ["model"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ).labels(**labels)
        self.batch = Histogram(
            "foretell_stream_batch_size",
            "Messages per micro-batch.",
            ["model"],
            registry=self.registry,
            buckets=(1, 8, 32, 128, 512, 2048),
        ).labels(**labels)
        self.retries = Counter(
            "foretell_stream_write_retries",
            "Failed writes retried.",
            ["model"],
            registry=self.registry,
        ).labels(**labels)


@dataclass
class StreamTotals:
    batches: int = 0
    scored: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)


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
        max_batch: int = 500,
        max_wait: float = 0.05,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.model, self.source, self.destination = model, source, destination
        self.dead_letters, self.output = dead_letters, output
        self.job_id = job_id or f"stream-{model.name}"
        self.max_batch, self.max_wait = max_batch, max_wait
        self.metrics = metrics or StreamMetrics(model.name)
        self.totals = StreamTotals()
        self.batch_number = time.time_ns()

    def run(self, stop: threading.Event, exit_when_idle: float | None = None) -> StreamTotals:
        idle_since = time.monotonic()
        while not stop.is_set():
            messages = self.source.read(self.max_batch, self.max_wait)
            if not messages:
                ended = getattr(self.source, "ended", False)
                if ended or (exit_when_idle and time.monotonic() - idle_since > exit_when_idle):
                    break
                continue
            idle_since = time.monotonic()
            if self._process(messages, stop):
                self.source.ack(messages)
            lag = self.source.lag()
            if lag is not None:
                self.metrics.lag.set(lag)
        return self.totals

    def _process(self, messages: list[Message], stop: threading.Event) -> bool:
        """Scores and stores one micro-batch; False if stopped before it was stored."""
        records, dead = [], []
        for m in messages:
            try:
                records.append({**decode_record(m.body), MESSAGE_ID: m.id})
            except InputFormatError as exc:
                dead.append(self._dead(m.id, exc.message, m.body))
        self.batch_number += 1
        results = pd.DataFrame()
        if records:
            frame = pd.DataFrame.from_records(records)
            scored = score_chunk(
                self.model, self.job_id, Chunk(self.batch_number, 0, frame), MESSAGE_ID
            )
            results = scored.results
            dead.extend({str(k): v for k, v in r.items()} for r in scored.errors.to_dict("records"))
        if not self._retry(lambda: self._store(results, dead), stop):
            return False
        times = {m.id: m.event_time for m in messages}
        now = time.time()
        for key in results["row_key"] if len(results) else []:
            if times.get(key) is not None:
                self.metrics.latency.observe(max(0.0, now - float(times[key] or now)))
        self.metrics.batch.observe(len(messages))
        self.metrics.scored.inc(len(results))
        self.metrics.dead.inc(len(dead))
        self.totals.batches += 1
        self.totals.scored += len(results)
        self.totals.dead += len(dead)
        return True

    def _dead(self, message_id: str, reason: str, body: Any) -> dict[str, Any]:
        text = (
            body.decode("utf-8", "replace")
            if isinstance(body, bytes)
            else (body if isinstance(body, str) else orjson.dumps(body, default=str).decode())
        )
        return {"job_id": self.job_id, "row_key": message_id, "error": reason, "input": text}

    def _store(self, results: pd.DataFrame, dead: list[dict[str, Any]]) -> None:
        if len(results):
            self.destination.write(self.job_id, self.batch_number, results)
        if dead:
            if isinstance(self.dead_letters, Publisher):
                self.dead_letters.publish(dead)
            else:
                self.dead_letters.write(self.job_id, self.batch_number, pd.DataFrame(dead))
        if self.output is not None and len(results):
            self.output.publish(
                [{str(k): v for k, v in r.items()} for r in results.to_dict("records")]
            )

    def _retry(self, action: Any, stop: threading.Event) -> bool:
        delay = 0.2
        while True:
            try:
                action()
                return True
            except ForetellError:
                raise
            except Exception as exc:  # a destination that is down: wait and try again
                self.metrics.retries.inc()
                log.warning(
                    "storing a batch failed (%s: %s); retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                if stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
