"""Request rate, latency percentiles and error rate of each model over time.

The server's Prometheus counters only ever grow, so a rate needs two readings. This module keeps
a bounded ring buffer of readings, taken whenever a monitoring page is fetched (at most one per
``every`` seconds), plus one when the server starts. A stretch nobody watched becomes one point:
its average. The history lives in the server process's memory and starts empty on a restart;
Prometheus scraping ``/metrics`` is the durable record.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from foretell.monitoring.metrics import ServingMetrics

PERCENTILES = (0.5, 0.9, 0.99)


@dataclass
class Reading:
    """One model's cumulative counts at one moment."""

    requests: float = 0.0
    client_errors: float = 0.0
    server_errors: float = 0.0
    #: Cumulative latency histogram: upper bound in seconds -> requests at or below it.
    buckets: dict[float, float] = field(default_factory=dict)


@dataclass
class Point:
    """What happened between two readings."""

    at: float
    rate: float
    client_error_rate: float | None
    server_error_rate: float | None
    latency_ms: dict[float, float | None]


class Traffic:
    """Readings of the request counters and latency histogram of every model, ring-buffered."""

    def __init__(self, metrics: ServingMetrics, capacity: int = 720, every: float = 5.0) -> None:
        self.metrics, self.every = metrics, every
        self.readings: deque[tuple[float, dict[str, Reading]]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.sample()

    def sample(self) -> None:
        """Takes a reading unless the last one is younger than ``every`` seconds."""
        now = time.time()
        with self._lock:
            if self.readings and now - self.readings[-1][0] < self.every:
                return
            self.readings.append((now, self._read()))

    def _read(self) -> dict[str, Reading]:
        readings: dict[str, Reading] = {}
        for family in self.metrics.requests.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    r = readings.setdefault(s.labels["model"], Reading())
                    r.requests += s.value
                    status = s.labels["status"]
                    if status.startswith("4"):
                        r.client_errors += s.value
                    elif status.startswith("5"):
                        r.server_errors += s.value
        for family in self.metrics.duration.collect():
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    r = readings.setdefault(s.labels["model"], Reading())
                    bound = float(s.labels["le"])
                    r.buckets[bound] = r.buckets.get(bound, 0.0) + s.value
        return readings

    def history(self, model: str) -> list[Point]:
        """``model``'s traffic between each pair of consecutive readings, oldest first."""
        with self._lock:
            readings = list(self.readings)
        points = []
        for (t0, before), (t1, after) in itertools.pairwise(readings):
            a, b = before.get(model, Reading()), after.get(model, Reading())
            count = b.requests - a.requests
            delta = {k: v - a.buckets.get(k, 0.0) for k, v in b.buckets.items()}
            points.append(
                Point(
                    at=t1,
                    rate=count / (t1 - t0),
                    client_error_rate=(b.client_errors - a.client_errors) / count
                    if count
                    else None,
                    server_error_rate=(b.server_errors - a.server_errors) / count
                    if count
                    else None,
                    latency_ms={q: _quantile(q, delta) for q in PERCENTILES},
                )
            )
        return points


def _quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile in milliseconds of a cumulative histogram, interpolated within the bucket
    it falls in (as Prometheus's ``histogram_quantile`` does)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower * 1000.0  # beyond the last finite bound: its value is unknown
            share = (rank - below) / (count - below) if count > below else 1.0
            return (lower + (bound - lower) * share) * 1000.0
        lower, below = bound, count
    return None
