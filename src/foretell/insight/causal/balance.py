"""Propensity scores and the diagnostics built on them: overlap of the treated and control
groups, and covariate balance (standardized mean differences) before and after adjustment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from foretell.errors import UserError
from foretell.insight.causal.question import Data

#: dowhy's weighting estimator clips propensities to [CLIP, 1 - CLIP]; beyond it overlap is weak.
CLIP = 0.05
#: A standardized mean difference above this marks a confounder as imbalanced (Austin, 2009).
SMD_LIMIT = 0.1
#: Fewer treated or control rows than this inside the common support means no overlap at all.
MIN_COMMON = 10
#: A propensity that ranks treated above controls this reliably (ROC AUC) leaves no overlap.
MAX_SEPARATION = 0.995


def propensity_model() -> Any:
    """The model of P(treated | confounders) every propensity method shares."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def propensity(data: Data) -> np.ndarray:
    """Each row's estimated probability of treatment given its confounders."""
    model = propensity_model().fit(data.x, data.t.astype(np.int64))
    scores: np.ndarray = model.predict_proba(data.x)[:, 1]
    return scores


@dataclass(frozen=True)
class Overlap:
    """Where the propensities of the two groups lie, and how many rows lack comparable peers."""

    treated: tuple[float, float]
    control: tuple[float, float]
    #: Share of rows whose propensity lies outside the range both groups cover.
    outside_support: float
    #: Share of rows with a propensity below CLIP or above 1 - CLIP.
    extreme: float

    def warning(self) -> str | None:
        if self.extreme <= 0.1:
            return None
        return (
            f"weak overlap: {self.extreme:.0%} of rows have a propensity below {CLIP} or above "
            f"{1 - CLIP}; matching reuses few peers and weighting clips their weights, so the "
            "estimates lean on few rows. Consider restricting the population"
        )


def overlap(scores: np.ndarray, data: Data) -> Overlap:
    treated, control = scores[data.t == 1], scores[data.t == 0]
    low = max(treated.min(), control.min())
    high = min(treated.max(), control.max())
    outside = (scores < low) | (scores > high)
    return Overlap(
        treated=(float(treated.min()), float(treated.max())),
        control=(float(control.min()), float(control.max())),
        outside_support=float(outside.mean()),
        extreme=float(((scores < CLIP) | (scores > 1 - CLIP)).mean()),
    )


def require_overlap(scores: np.ndarray, data: Data, before: np.ndarray) -> None:
    """Refuses data where the confounders (nearly) decide the treatment: the propensities of
    the groups do not meet, or rank treated above controls almost without exception."""
    from sklearn.metrics import roc_auc_score

    treated, control = scores[data.t == 1], scores[data.t == 0]
    low = max(treated.min(), control.min())
    high = min(treated.max(), control.max())
    common = min(
        ((treated >= low) & (treated <= high)).sum(), ((control >= low) & (control <= high)).sum()
    )
    separation = float(roc_auc_score(data.t, scores))
    if low < high and common >= MIN_COMMON and separation < MAX_SEPARATION:
        return
    worst = data.names[int(np.argmax(np.abs(before)))]
    extreme = float(((scores < CLIP) | (scores > 1 - CLIP)).mean())
    raise UserError(
        "no overlap: the confounders tell the treated from the controls almost perfectly (the "
        f"propensity ranks them apart with AUC {separation:.4f}; {extreme:.0%} of rows have a "
        f"propensity below {CLIP} or above {1 - CLIP}), so no adjustment can compare like with "
        f"like without extrapolating. The treatment is decided by the confounders (most of all "
        f"{worst!r}); restrict the data to a population where both groups occur"
    )


def smd(x: np.ndarray, t: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Standardized mean differences of each column of ``x`` between treated and controls,
    weighted means over the unweighted pooled standard deviation (so before and after share
    one scale)."""
    w = np.ones(len(t)) if weights is None else weights
    treated, control = t == 1, t == 0
    mean_t = np.average(x[treated], axis=0, weights=w[treated])
    mean_c = np.average(x[control], axis=0, weights=w[control])
    pooled = np.sqrt((x[treated].var(axis=0, ddof=1) + x[control].var(axis=0, ddof=1)) / 2)
    difference: np.ndarray = (mean_t - mean_c) / np.where(pooled > 0, pooled, 1.0)
    return difference


def matching_weights(scores: np.ndarray, t: np.ndarray, effect: str) -> np.ndarray:
    """How often each row is used by 1-nearest-neighbour matching on the propensity, with
    replacement, as dowhy's matching estimator matches (treated to controls for the ATT,
    controls to treated for the ATC, both for the ATE)."""
    from sklearn.neighbors import NearestNeighbors

    weights = np.zeros(len(t))
    directions = {"att": [(1, 0)], "atc": [(0, 1)], "ate": [(1, 0), (0, 1)]}[effect]
    for source, target in directions:
        rows, pool = np.flatnonzero(t == source), np.flatnonzero(t == target)
        finder = NearestNeighbors(n_neighbors=1, algorithm="ball_tree")
        finder.fit(scores[pool].reshape(-1, 1))
        found = finder.kneighbors(scores[rows].reshape(-1, 1), return_distance=False)[:, 0]
        weights[rows] += 1
        np.add.at(weights, pool[found], 1)
    return weights


def weighting_weights(scores: np.ndarray, t: np.ndarray, effect: str) -> np.ndarray:
    """Inverse propensity weights for the effect, with the propensity clipped as dowhy does."""
    p = np.clip(scores, CLIP, 1 - CLIP)
    weights: np.ndarray = t / p + (1 - t) / (1 - p)
    if effect == "att":
        weights = t + (1 - t) * p / (1 - p)
    elif effect == "atc":
        weights = t * (1 - p) / p + (1 - t)
    return weights


@dataclass(frozen=True)
class Balance:
    """Standardized mean differences per confounder: raw, after matching, after weighting."""

    names: tuple[str, ...]
    before: np.ndarray
    matched: np.ndarray
    weighted: np.ndarray

    def rows(self) -> list[tuple[str, float, float, float]]:
        return [
            (n, float(b), float(m), float(w))
            for n, b, m, w in zip(self.names, self.before, self.matched, self.weighted, strict=True)
        ]

    def imbalanced(self, which: str) -> list[str]:
        """Confounders still imbalanced after ``which`` adjustment (``matched``/``weighted``)."""
        values = self.matched if which == "matched" else self.weighted
        return [n for n, v in zip(self.names, values, strict=True) if abs(v) > SMD_LIMIT]


def balance(scores: np.ndarray, data: Data, effect: str) -> Balance:
    return Balance(
        names=data.names,
        before=smd(data.x, data.t),
        matched=smd(data.x, data.t, matching_weights(scores, data.t, effect)),
        weighted=smd(data.x, data.t, weighting_weights(scores, data.t, effect)),
    )
