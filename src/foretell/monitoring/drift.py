"""Drift: logged inputs compared with the training data's reference statistics in model.yaml.

Numbers: population stability index over the reference histogram's bins, and the
Kolmogorov-Smirnov test against the reference distribution (its CDF interpolated from the
stored quantiles, an approximation) for floats, or a chi-square test over the histogram's bins
for integers and booleans (KS assumes continuous values); categories: the chi-square test
against the reference frequencies. Also the missing and out-of-range rates. A feature drifts
when its PSI passes the spec's ``monitoring.psi`` threshold or a test's p-value falls below
``monitoring.p_value``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from foretell.repository.spec import Feature, FeatureReference, ModelSpec

_EPS = 1e-4


def psi(reference: np.ndarray, observed: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins (counts)."""
    r = np.maximum(reference / max(reference.sum(), 1), _EPS)
    o = np.maximum(observed / max(observed.sum(), 1), _EPS)
    return float(np.sum((o - r) * np.log(o / r)))


def _cdf(ref: FeatureReference) -> Any:
    quantiles = ref.quantiles or {}
    levels = np.array([int(k[1:]) / 100 for k in quantiles])
    values = np.array(list(quantiles.values()), float)
    order = np.argsort(values, kind="stable")
    levels, values = levels[order], values[order]

    def cdf(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.interp(x, values, levels, left=0.0, right=1.0), dtype=float)

    return cdf


def numeric_drift(f: Feature, ref: FeatureReference, values: np.ndarray) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    out: dict[str, Any] = {"rows": len(values), "missing_rate": float(np.isnan(values).mean())}
    low = -np.inf if f.min is None else f.min
    high = np.inf if f.max is None else f.max
    out["out_of_range_rate"] = (
        float(((present < low) | (present > high)).mean()) if len(present) else 0.0
    )
    if ref.histogram and len(present):
        edges = np.array(ref.histogram["edges"], float)
        inner = np.concatenate([[-np.inf], edges[1:-1], [np.inf]])
        observed, _ = np.histogram(present, bins=inner)
        expected = np.array(ref.histogram["counts"], float)
        out["psi"] = psi(expected, observed.astype(float))
        if f.dtype != "float":  # discrete values: a chi-square test over the bins, not KS
            keep = expected > 0
            scaled = expected[keep] / expected[keep].sum() * observed[keep].sum()
            if observed[~keep].sum() == 0 and keep.sum() > 1:
                result = stats.chisquare(observed[keep], scaled)
                out["chi2"], out["p_value"] = float(result.statistic), float(result.pvalue)
            return out
    if ref.quantiles and len(present):
        result = stats.kstest(present, _cdf(ref))
        out["ks_statistic"], out["p_value"] = float(result.statistic), float(result.pvalue)
    return out


def categorical_drift(ref: FeatureReference, values: list[Any]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    out: dict[str, Any] = {
        "rows": len(values),
        "missing_rate": 1 - len(present) / max(len(values), 1),
    }
    frequencies = ref.frequencies or {}
    counts = Counter(str(v) for v in present)
    unknown = sum(c for k, c in counts.items() if k not in frequencies)
    out["out_of_range_rate"] = unknown / max(len(present), 1)
    if present and frequencies:
        cats = list(frequencies)
        observed = np.array([counts.get(c, 0) for c in cats] + [unknown], float)
        expected = np.array([frequencies[c] for c in cats] + [0.0], float)
        expected = np.maximum(expected, _EPS)
        expected = expected / expected.sum() * observed.sum()
        result = stats.chisquare(observed, expected)
        out["chi2"], out["p_value"] = float(result.statistic), float(result.pvalue)
        out["psi"] = psi(expected, observed)
    return out


def drift(spec: ModelSpec, inputs: pd.DataFrame) -> dict[str, Any]:
    """Drift of every feature with reference statistics, over the logged ``inputs``."""
    settings = spec.monitoring
    features: dict[str, Any] = {}
    if spec.reference is None or len(inputs) < settings.min_rows:
        return {
            "rows": len(inputs),
            "min_rows": settings.min_rows,
            "features": features,
            "drifted": [],
        }
    for f in spec.inputs:
        ref = spec.reference.features.get(f.name)
        if ref is None or f.name not in inputs:
            continue
        column = inputs[f.name]
        if f.dtype in ("float", "int", "bool"):
            values = pd.to_numeric(column, errors="coerce").to_numpy(float)
            result = numeric_drift(f, ref, values)
        elif f.dtype == "category":
            result = categorical_drift(ref, column.tolist())
        else:
            continue
        result["drifted"] = bool(
            result.get("psi", 0.0) > settings.psi or result.get("p_value", 1.0) < settings.p_value
        )
        features[f.name] = result
    return {
        "rows": len(inputs),
        "features": features,
        "drifted": sorted(n for n, r in features.items() if r["drifted"]),
    }
