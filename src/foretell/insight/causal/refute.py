"""Refutation checks: ways to try to break an estimate, after dowhy's refuters.

* placebo treatment: the treatment replaced by a random permutation of itself. A sound method
  then finds no effect; it survives when the placebo effect is within the estimate's own
  interval half-width of zero.
* random common cause: an independent random column added to the confounders. A sound
  estimate does not move; it survives when the new estimate stays inside the interval.
* data subsets: the method refitted on random 80% subsets. It survives when the subset
  estimates stay, on average, inside the interval.

They run the same method as the estimate (not dowhy's refuter classes, which only re-run
dowhy's own estimators), so every method, 2SLS and AIPW included, is checked alike. Passing
them cannot prove an estimate right (no check can detect an unmeasured confounder), but
failing one shows it wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from foretell.insight.causal.estimates import Estimate
from foretell.insight.causal.methods import Method
from foretell.insight.causal.question import Data

CHECKS = ("placebo treatment", "random common cause", "data subsets")
SUBSET = 0.8


@dataclass(frozen=True)
class Refutation:
    """The outcome of one check on one method's estimate; ``survives`` is None when the check
    does not apply to the method."""

    method: str
    check: str
    original: float
    values: tuple[float, ...]
    survives: bool | None
    detail: str

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def verdict(self) -> str:
        return {True: "survives", False: "FAILS", None: "n/a"}[self.survives]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "check": self.check,
            "original": self.original,
            "refuted_mean": self.mean if self.values else None,
            "survives": self.survives,
            "detail": self.detail,
        }


def refute(
    method: Method, data: Data, estimate: Estimate, runs: int = 5, seed: int = 0
) -> list[Refutation]:
    """Every check of :data:`CHECKS` on ``estimate``, each refitting ``method`` ``runs`` times."""
    rng = np.random.default_rng(seed + 1)
    return [
        _placebo(method, data, estimate, runs, rng, seed),
        _common_cause(method, data, estimate, runs, rng, seed),
        _subsets(method, data, estimate, runs, rng, seed),
    ]


def _placebo(
    method: Method, data: Data, est: Estimate, runs: int, rng: np.random.Generator, seed: int
) -> Refutation:
    if method.instrument:
        return Refutation(
            method.name,
            CHECKS[0],
            est.value,
            (),
            None,
            "does not apply to 2SLS: a permuted treatment has no first stage to identify from",
        )
    values = tuple(
        method.point(data.with_treatment(rng.permutation(data.t)), est.effect, seed)
        for _ in range(runs)
    )
    mean = float(np.mean(values))
    survives = abs(mean) <= est.half_width
    return Refutation(
        method.name,
        CHECKS[0],
        est.value,
        values,
        survives,
        f"placebo effect {mean:+.4g} (expected 0, tolerance ±{est.half_width:.3g})",
    )


def _common_cause(
    method: Method, data: Data, est: Estimate, runs: int, rng: np.random.Generator, seed: int
) -> Refutation:
    if method.name == "difference":
        return Refutation(
            method.name,
            CHECKS[1],
            est.value,
            (),
            None,
            "does not apply: the difference in means adjusts for nothing",
        )
    values = tuple(
        method.point(data.with_confounder(rng.normal(size=len(data)), "random"), est.effect, seed)
        for _ in range(runs)
    )
    mean = float(np.mean(values))
    return Refutation(
        method.name,
        CHECKS[1],
        est.value,
        values,
        est.covers(mean),
        f"estimate {mean:.4g} with a random confounder added (expected {est.value:.4g}, "
        f"inside {est.low:.4g} to {est.high:.4g})",
    )


def _subsets(
    method: Method, data: Data, est: Estimate, runs: int, rng: np.random.Generator, seed: int
) -> Refutation:
    size = int(SUBSET * len(data))
    values = tuple(
        method.point(data.take(rng.choice(len(data), size=size, replace=False)), est.effect, seed)
        for _ in range(runs)
    )
    mean = float(np.mean(values))
    return Refutation(
        method.name,
        CHECKS[2],
        est.value,
        values,
        est.covers(mean),
        f"mean of {runs} estimates on {SUBSET:.0%} subsets {mean:.4g} (range {min(values):.4g} "
        f"to {max(values):.4g}; expected inside {est.low:.4g} to {est.high:.4g})",
    )
