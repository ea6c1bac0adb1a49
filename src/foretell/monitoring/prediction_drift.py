"""Prediction drift: the model's live outputs compared with its outputs on the training data.

Classifiers: the predicted label's frequencies; clustering models with named clusters: the
cluster name's; regressors: the predicted value; anomaly detectors: the score. The baseline is
``reference.outputs`` in model.yaml, the model's own predictions on its training data, stored
when the model is built (:func:`output_reference`). Labels and cluster names are tested like a
category input (chi-square, PSI), values and scores like a float input (PSI over the reference
histogram, Kolmogorov-Smirnov), with :mod:`foretell.monitoring.drift`'s functions and the same
``monitoring`` thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from foretell.monitoring.drift import categorical_drift, numeric_drift
from foretell.repository.reference import compute_reference
from foretell.repository.spec import Feature, FeatureReference, ModelSpec


def watched_outputs(spec: ModelSpec) -> list[Feature]:
    """The outputs whose distribution prediction drift watches, described as features."""
    if spec.task in ("classification", "text_classification"):
        return [Feature(name="label", dtype="category", categories=list(spec.labels or []))]
    if spec.task == "clustering" and spec.labels:
        return [Feature(name="cluster_name", dtype="category", categories=list(spec.labels))]
    if spec.task == "regression":
        return [Feature(name="value")]
    if spec.task == "anomaly_detection":
        return [Feature(name="score")]
    return []  # a top-k list has no one-dimensional distribution worth a test


def _columns(features: list[Feature], records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({f.name: [r.get(f.name) for r in records] for f in features})


def output_reference(
    spec: ModelSpec, records: Sequence[dict[str, Any]]
) -> dict[str, FeatureReference] | None:
    """Statistics of the watched outputs in ``records`` (the model's results on its training
    data), for ``reference.outputs``; None when the task has no watched output."""
    features = watched_outputs(spec)
    if not features or not records:
        return None
    return compute_reference(_columns(features, records), features).features


def prediction_drift(spec: ModelSpec, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Drift of each watched output over logged output ``records`` against the reference."""
    settings = spec.monitoring
    reference = spec.reference.outputs if spec.reference else None
    outputs: dict[str, Any] = {}
    if not reference or len(records) < settings.min_rows:
        return {"rows": len(records), "min_rows": settings.min_rows, "outputs": {}, "drifted": []}
    frame = _columns(watched_outputs(spec), records)
    for f in watched_outputs(spec):
        ref = reference.get(f.name)
        if ref is None:
            continue
        if f.dtype == "category":
            result = categorical_drift(ref, frame[f.name].tolist())
        else:
            values = pd.to_numeric(frame[f.name], errors="coerce").to_numpy(float)
            result = numeric_drift(f, ref, values)
        result["drifted"] = bool(
            result.get("psi", 0.0) > settings.psi or result.get("p_value", 1.0) < settings.p_value
        )
        outputs[f.name] = result
    return {
        "rows": len(records),
        "outputs": outputs,
        "drifted": sorted(n for n, r in outputs.items() if r["drifted"]),
    }
