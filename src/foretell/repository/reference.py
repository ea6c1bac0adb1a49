"""Reference statistics of training data, stored in the spec as the baseline for drift."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from foretell.repository.spec import Feature, FeatureReference, Reference

QUANTILES = (0.01, *(i / 20 for i in range(1, 20)), 0.99)


def compute_reference(frame: pd.DataFrame, inputs: Sequence[Feature], bins: int = 10) -> Reference:
    """Per-feature statistics of ``frame``: quantiles and a histogram for numbers, frequencies
    for categories and list items, and length statistics for text."""
    features = {f.name: _feature(frame[f.name], f, bins) for f in inputs}
    return Reference(rows=len(frame), features=features)


def _feature(column: pd.Series, f: Feature, bins: int) -> FeatureReference:
    n = len(column)
    missing = column.isna() if f.dtype != "list" else column.map(lambda v: v is None)
    present = column[~missing]
    missing_rate = round(float(missing.mean()) if n else 0.0, 6)
    if f.dtype in ("category", "list"):
        items: list[Any] = (
            [x for v in present for x in v] if f.dtype == "list" else present.astype(str).tolist()
        )
        counts = Counter(items)
        total = sum(counts.values()) or 1
        frequencies = {str(k): round(c / total, 6) for k, c in counts.most_common()}
        return FeatureReference(count=n, missing_rate=missing_rate, frequencies=frequencies)
    values = (
        present.astype(str).str.len().to_numpy(np.float64)
        if f.dtype == "text"
        else present.to_numpy(np.float64)
    )
    if len(values) == 0:
        return FeatureReference(count=n, missing_rate=missing_rate)
    counts_, edges = np.histogram(values, bins=bins)
    return FeatureReference(
        count=n,
        missing_rate=missing_rate,
        mean=round(float(values.mean()), 6),
        std=round(float(values.std()), 6),
        quantiles={f"p{round(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES},
        histogram={"edges": edges.tolist(), "counts": counts_.astype(float).tolist()},
    )
