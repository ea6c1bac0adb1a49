"""A model's monitoring snapshot: quality, input and prediction drift, fairness and global
importance over its newest logged predictions (the monitor adds the alerts). Imported when a
report is first computed, mostly in the reporter process: its statistics need scipy and
scikit-learn, which a server of ONNX models would otherwise import at start for nothing.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pandas as pd

from foretell.insight.explain import global_importance
from foretell.monitoring.drift import drift
from foretell.monitoring.fairness import fairness
from foretell.monitoring.prediction_drift import prediction_drift
from foretell.monitoring.quality import quality
from foretell.monitoring.store import MonitoringStore
from foretell.repository.spec import ModelSpec


def measure(
    store: MonitoringStore, spec: ModelSpec, window: float, sample_rows: int
) -> dict[str, Any]:
    """The report of ``spec``'s model over the last ``window`` seconds, without alerts: quality,
    input and prediction drift, fairness and global importance, from at most ``sample_rows``
    of the newest logged (and labelled) predictions."""
    since = time.time() - window
    logged = store.predictions_of(spec.name, since, limit=sample_rows)
    inputs = (
        pd.DataFrame([orjson.loads(r) for r in logged["inputs"]]) if len(logged) else pd.DataFrame()
    )
    outputs = [orjson.loads(r) for r in logged["outputs"]] if len(logged) else []
    labelled = store.labelled(spec.name, since, limit=sample_rows)
    return {
        "model": spec.name,
        "window_seconds": window,
        "predictions": len(logged),
        "quality": quality(spec, labelled),
        "drift": {**drift(spec, inputs), "predictions": prediction_drift(spec, outputs)},
        "fairness": fairness(spec, labelled),
        "importance": global_importance(outputs),
    }


#: The reporter process's stores, by URI: opened once, kept for its later reports.
_STORES: dict[str, MonitoringStore] = {}


def measure_in(uri: str, spec: ModelSpec, window: float, sample_rows: int) -> dict[str, Any]:
    """:func:`measure` of the store at ``uri``: the reporter process's work."""
    store = _STORES.get(uri)
    if store is None:
        store = _STORES[uri] = MonitoringStore(uri)
    return measure(store, spec, window, sample_rows)
