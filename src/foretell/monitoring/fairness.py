"""Fairness: how a classifier's labelled predictions differ between groups, with fairlearn.

For each input the spec names in ``monitoring.sensitive`` and each model version: per group,
the rows, selection rate (the share predicted positive), accuracy, true and false positive
rates (fairlearn's ``MetricFrame``), and over the groups the demographic parity difference and
the equalized odds difference. The positive class is the last label, as in
:mod:`foretell.monitoring.quality`; with more than two labels the rates are one-vs-rest.
fairlearn is the ``monitoring`` extra; only a spec naming a sensitive input needs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
from sklearn import metrics

from foretell.errors import MissingExtraError
from foretell.repository.spec import ModelSpec

#: The rates and accuracy reported for every group.
GROUP_METRICS = ("selection_rate", "accuracy", "true_positive_rate", "false_positive_rate")


def fairness(spec: ModelSpec, labelled: pd.DataFrame) -> dict[str, Any]:
    """Group metrics of ``spec``'s model per version over the labelled predictions, which
    carry the logged ``inputs`` (see ``MonitoringStore.labelled``)."""
    sensitive = spec.monitoring.sensitive
    if not sensitive:
        return {"sensitive": [], "rows": 0, "versions": {}}
    fairlearn = _fairlearn()
    labels = list(spec.labels or [])
    positive = labels[-1]
    out: dict[str, Any] = {
        "sensitive": list(sensitive),
        "positive_label": positive,
        "rows": len(labelled),
        "versions": {},
    }
    if labelled.empty:
        return out
    inputs = pd.DataFrame([orjson.loads(r) for r in labelled["inputs"]])
    truth = np.array([str(orjson.loads(t)) for t in labelled["ground_truth"]], dtype=object)
    pred = np.array([orjson.loads(o)["label"] for o in labelled["outputs"]], dtype=object)
    for version, index in labelled.groupby("version").groups.items():
        rows = labelled.index.get_indexer(index)
        out["versions"][str(version)] = {
            "rows": len(rows),
            "attributes": {
                name: group_metrics(
                    fairlearn, truth[rows], pred[rows], inputs[name].to_numpy()[rows], positive
                )
                for name in sensitive
            },
        }
    return out


def _fairlearn() -> Any:
    try:
        import fairlearn.metrics  # type: ignore[import-untyped]
    except ImportError:
        raise MissingExtraError("fairlearn", "monitoring", "fairness metrics") from None
    return fairlearn.metrics


def group_metrics(
    fairlearn: Any, truth: np.ndarray, pred: np.ndarray, groups: np.ndarray, positive: str
) -> dict[str, Any]:
    """Per-group metrics and the parity differences of one sensitive attribute, with the
    ``fairlearn.metrics`` module."""

    def one_vs_rest(metric: Any) -> Any:
        return lambda y_true, y_pred: metric(
            (y_true == positive).astype(int), (y_pred == positive).astype(int), pos_label=1
        )

    groups = np.array(["(missing)" if g is None else str(g) for g in groups], dtype=object)
    frame = fairlearn.MetricFrame(
        metrics={
            "rows": lambda y_true, y_pred: len(y_true),
            "selection_rate": one_vs_rest(fairlearn.selection_rate),
            "accuracy": metrics.accuracy_score,
            "true_positive_rate": one_vs_rest(fairlearn.true_positive_rate),
            "false_positive_rate": one_vs_rest(fairlearn.false_positive_rate),
        },
        y_true=truth,
        y_pred=pred,
        sensitive_features=groups,
    )
    by_group = {
        str(group): {"rows": int(row["rows"]), **{m: float(row[m]) for m in GROUP_METRICS}}
        for group, row in frame.by_group.iterrows()
    }
    y, y_pred = (truth == positive).astype(int), (pred == positive).astype(int)
    return {
        "groups": by_group,
        "demographic_parity_difference": float(
            fairlearn.demographic_parity_difference(y, y_pred, sensitive_features=groups)
        ),
        "equalized_odds_difference": float(
            fairlearn.equalized_odds_difference(y, y_pred, sensitive_features=groups)
        ),
    }
