"""Prometheus metrics of the server: requests, latency by stage, rows, validation, models.

| metric | type | labels |
|---|---|---|
| ``foretell_requests_total`` | counter | model, protocol, status |
| ``foretell_request_duration_seconds`` | histogram | model, protocol |
| ``foretell_requests_in_flight`` | gauge | model |
| ``foretell_stage_duration_seconds`` | histogram | model, stage |
| ``foretell_batch_rows`` | histogram | model |
| ``foretell_rows_scored_total`` | counter | model, version |
| ``foretell_rows_rejected_total`` | counter | model, version |
| ``foretell_validation_failures_total`` | counter | model, field, rule |
| ``foretell_model_ready`` | gauge | model, version |
| ``foretell_model_load_seconds`` | gauge | model, version |

Under ``foretell serve --workers N`` the workers keep their values in files of a shared folder
(prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``), and ``/metrics`` adds
up every worker's: counters and histograms summed (a dead worker's counts included), gauges as
their ``multiprocess_mode`` says.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

if TYPE_CHECKING:
    from foretell.pipeline.model import Batch

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServingMetrics:
    """The metrics one server process exposes on ``/metrics``, in their own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "foretell_requests",
            "Requests answered, by model, protocol and HTTP status.",
            ["model", "protocol", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "foretell_request_duration_seconds",
            "Time from request to response.",
            ["model", "protocol"],
            buckets=_LATENCY,
            registry=r,
        )
        self.in_flight = Gauge(
            "foretell_requests_in_flight",
            "Requests being answered now.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stage = Histogram(
            "foretell_stage_duration_seconds",
            "Time of each pipeline stage per batch.",
            ["model", "stage"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_rows = Histogram(
            "foretell_batch_rows",
            "Rows per scored batch.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384),
            registry=r,
        )
        self.scored = Counter(
            "foretell_rows_scored", "Rows scored.", ["model", "version"], registry=r
        )
        self.rejected = Counter(
            "foretell_rows_rejected",
            "Rows not scored because they broke the input schema.",
            ["model", "version"],
            registry=r,
        )
        self.violations = Counter(
            "foretell_validation_failures",
            "Broken input rules, by field and rule.",
            ["model", "field", "rule"],
            registry=r,
        )
        self.ready = Gauge(
            "foretell_model_ready",
            "1 when the model is loaded and serving (on every worker).",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.load_seconds = Gauge(
            "foretell_model_load_seconds",
            "Time the last load of the model took (the slowest worker's).",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def exposition(self) -> bytes:
        """The text ``/metrics`` answers: this process's metrics, or every worker's."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)  # type: ignore[no-untyped-call]
        return generate_latest(everyone)

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: on the hot path the lookup costs more
        than the update."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_batch(self, batch: Batch) -> None:
        """Records a scored batch: stage times, rows, rejected rows and broken rules."""
        name, version = batch.model.name, batch.model.version
        for stage, millis in batch.timings_ms.items():
            self.child(self.stage, name, stage).observe(millis / 1000.0)
        self.child(self.batch_rows, name).observe(batch.length)
        self.child(self.scored, name, version).inc(len(batch.usable))
        rejected = batch.length - len(batch.usable)
        if rejected:
            self.child(self.rejected, name, version).inc(rejected)
        for found in batch.violations.values():
            for v in found:
                self.violations.labels(name, v.field, v.rule).inc()

    def model_state(self, name: str, version: str | None, ready: bool, seconds: float) -> None:
        self.ready.labels(name, version or "").set(1 if ready else 0)
        if version:
            self.load_seconds.labels(name, version).set(seconds)
