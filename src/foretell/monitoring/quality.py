"""Live quality: predictions joined with their ground truth, scored with scikit-learn's metrics.

Classifiers: accuracy, precision, recall, F1, ROC AUC, log loss and calibration (a reliability
curve and the expected calibration error); regressors: MAE, RMSE and R2; anomaly detectors:
precision, recall and F1 of the anomaly flag. Each per model version, plus the label delay.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
from sklearn import metrics

from foretell.repository.spec import ModelSpec


def quality(spec: ModelSpec, labelled: pd.DataFrame) -> dict[str, Any]:
    """Quality of ``spec``'s model per version over the labelled predictions."""
    if labelled.empty:
        return {"rows": 0, "versions": {}}
    outputs = labelled["outputs"].map(orjson.loads)
    truth = labelled["ground_truth"].map(orjson.loads)
    delay = (labelled["received_at"] - labelled["ts"]).to_numpy()
    versions = {}
    for version, index in labelled.groupby("version").groups.items():
        versions[str(version)] = _scores(
            spec, outputs.loc[index].tolist(), truth.loc[index].tolist()
        )
    return {
        "rows": len(labelled),
        "label_delay_seconds": {
            "median": float(np.median(delay)),
            "p90": float(np.quantile(delay, 0.9)),
        },
        "versions": versions,
    }


def _scores(spec: ModelSpec, outputs: list[Any], truth: list[Any]) -> dict[str, Any]:
    n = len(truth)
    if spec.task in ("classification", "text_classification"):
        return {"rows": n, **classification(spec.labels or [], outputs, truth)}
    if spec.task == "regression":
        y, pred = np.asarray(truth, float), np.array([o["value"] for o in outputs], float)
        return {
            "rows": n,
            "mae": float(metrics.mean_absolute_error(y, pred)),
            "rmse": float(metrics.root_mean_squared_error(y, pred)),
            "r2": float(metrics.r2_score(y, pred)) if n > 1 else None,
        }
    if spec.task == "anomaly_detection":
        y = np.asarray(truth, bool)
        pred = np.array([o["is_anomaly"] for o in outputs], bool)
        return {"rows": n, **_binary(y, pred)}
    return {"rows": n}


def _binary(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(metrics.accuracy_score(y, pred)),
        "precision": float(metrics.precision_score(y, pred, zero_division=0)),
        "recall": float(metrics.recall_score(y, pred, zero_division=0)),
        "f1": float(metrics.f1_score(y, pred, zero_division=0)),
    }


def classification(labels: list[str], outputs: list[Any], truth: list[Any]) -> dict[str, Any]:
    """Scores of a classifier; binary metrics treat the last label as the positive class."""
    y = np.array([str(t) for t in truth], dtype=object)
    pred = np.array([o["label"] for o in outputs], dtype=object)
    probs = np.array([[o["probabilities"][label] for label in labels] for o in outputs])
    binary = len(labels) == 2
    average = "binary" if binary else "macro"
    options: dict[str, Any] = {"zero_division": 0, "average": average}
    if binary:
        options["pos_label"] = labels[1]
    present = len(set(y)) > 1
    result: dict[str, Any] = {
        "accuracy": float(metrics.accuracy_score(y, pred)),
        "precision": float(metrics.precision_score(y, pred, labels=labels, **options)),
        "recall": float(metrics.recall_score(y, pred, labels=labels, **options)),
        "f1": float(metrics.f1_score(y, pred, labels=labels, **options)),
        # log_loss reads probability columns in sorted label order
        "log_loss": float(metrics.log_loss(y, probs[:, np.argsort(labels)], labels=sorted(labels))),
        "roc_auc": None,
    }
    if present:
        if binary:
            result["roc_auc"] = float(metrics.roc_auc_score(y == labels[1], probs[:, 1]))
        elif set(y) == set(labels):
            result["roc_auc"] = float(
                metrics.roc_auc_score(y, probs, multi_class="ovr", labels=labels)
            )
    if binary:
        result["calibration"] = calibration(y == labels[1], probs[:, 1])
    return result


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability curve (mean predicted vs observed rate per bin) and its expected error."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    curve, error = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            predicted, observed = float(p[mask].mean()), float(y[mask].mean())
            curve.append(
                {"bin": b, "rows": int(mask.sum()), "predicted": predicted, "observed": observed}
            )
            error += mask.mean() * abs(predicted - observed)
    return {"ece": float(error), "curve": curve}
