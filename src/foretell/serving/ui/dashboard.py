"""The monitoring page's charts: traffic over time, live quality over time, drift per feature."""

from __future__ import annotations

from typing import Any

import numpy as np
from markupsafe import Markup

from foretell.monitoring.store import MonitoringStore
from foretell.repository.spec import ModelSpec
from foretell.serving.ui import charts
from foretell.serving.ui.traffic import Point

#: The quality metric drawn over time, per task, and whether it is a share (drawn in %).
HEADLINE_METRIC = {
    "classification": ("accuracy", True),
    "text_classification": ("accuracy", True),
    "regression": ("mae", False),
    "anomaly_detection": ("f1", True),
}


def traffic(history: list[Point]) -> list[tuple[str, Markup]]:
    """Request rate, latency percentiles and error rates, one chart each."""
    rate = {"requests/s": [(p.at, p.rate) for p in history]}
    latency = {
        f"p{q * 100:g}": [(p.at, p.latency_ms[q]) for p in history] for q in (0.5, 0.9, 0.99)
    }
    errors = {
        "4xx": [(p.at, p.client_error_rate) for p in history],
        "5xx": [(p.at, p.server_error_rate) for p in history],
    }
    return [
        ("Request rate", charts.line_chart(rate, "Requests per second")),
        ("Latency", charts.line_chart(latency, "Latency percentiles in milliseconds")),
        (
            "Error rate",
            charts.line_chart(errors, "Share of requests answered with an error", charts.percent),
        ),
    ]


def quality_over_time(
    store: MonitoringStore, spec: ModelSpec, window: float, now: float, buckets: int = 12
) -> tuple[str, Markup] | None:
    """The task's headline quality metric per version, in ``buckets`` slices of the window."""
    from foretell.monitoring.quality import quality  # scikit-learn: not at every server's start

    metric = HEADLINE_METRIC.get(spec.task)
    if metric is None:
        return None
    name, share = metric
    labelled = store.labelled(spec.name, now - window, limit=100_000)
    edges = np.linspace(now - window, now, buckets + 1)
    series: dict[str, list[tuple[float, float | None]]] = {}
    if len(labelled):
        slot = np.clip(
            np.searchsorted(edges, labelled["ts"].to_numpy(), side="right") - 1, 0, buckets - 1
        )
        for i in range(buckets):
            chunk = labelled[slot == i]
            scores = quality(spec, chunk)["versions"] if len(chunk) else {}
            for version in sorted(set(labelled["version"].astype(str))):
                value = scores.get(version, {}).get(name)
                series.setdefault(f"v{version}", []).append((float(edges[i + 1]), value))
    title = f"Live {name} by version, from predictions with ground truth"
    return (
        f"Quality ({name})",
        charts.line_chart(series, title, charts.percent if share else charts.number),
    )


def drift(spec: ModelSpec, report: dict[str, Any]) -> Markup | None:
    """Population stability index of each input, the spec's threshold marked."""
    found = report["drift"]["features"]
    scores = {name: r["psi"] for name, r in found.items() if "psi" in r}
    if not scores:
        return None
    threshold = spec.monitoring.psi
    return charts.bar_chart(
        scores,
        "Population stability index of each input against the training data",
        lambda v: f"{v:.3f}",
        highlight=report["drift"]["drifted"],
        line=(threshold, f"drift above {threshold:g}"),
    )


def quality_table(report: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """Each version's scalar quality metrics, formatted."""
    return [
        (
            version,
            {
                k: charts.number(v)
                for k, v in scores.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            },
        )
        for version, scores in report["quality"]["versions"].items()
    ]
