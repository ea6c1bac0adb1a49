"""Instrumental variables: two-stage least squares with the observed confounders as controls,
heteroskedasticity-robust (HC1) standard errors and a first-stage strength check.

Written with numpy rather than taken from dowhy: dowhy 0.14's instrumental-variable estimator
is a Wald ratio that ignores the observed confounders and reports neither a standard error
nor the first stage, and EconML's IV estimators are orthogonal-learning (DML) estimators, not
2SLS. The arithmetic below is the textbook one (Wooldridge, ch. 15).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from foretell.errors import UserError
from foretell.insight.causal.question import Data

#: A first-stage F statistic below this marks a weak instrument (Staiger and Stock, 1997).
WEAK_F = 10.0


@dataclass(frozen=True)
class FirstStage:
    """How strongly the instrument moves the treatment, given the controls."""

    coefficient: float
    f_statistic: float
    partial_r2: float

    def warning(self) -> str | None:
        if self.f_statistic >= WEAK_F:
            return None
        return (
            f"weak instrument: the first-stage F statistic is {self.f_statistic:.1f}, below "
            f"{WEAK_F:.0f}; the 2SLS estimate is biased towards the unadjusted one and its "
            "interval is too narrow. Find a stronger instrument"
        )


@dataclass(frozen=True)
class TwoStage:
    value: float
    standard_error: float
    first_stage: FirstStage

    def interval(self, level: float) -> tuple[float, float]:
        z = float(stats.norm.ppf(0.5 + level / 2))
        return self.value - z * self.standard_error, self.value + z * self.standard_error


def first_stage(data: Data) -> FirstStage:
    """Regresses the treatment on the instrument and controls; F tests the instrument alone."""
    z = _instrument(data)
    controls = _controls(data)
    full = np.column_stack([controls, z])
    rss_full, coef = _rss(full, data.t)
    rss_restricted, _ = _rss(controls, data.t)
    dof = len(data.t) - full.shape[1]
    f = ((rss_restricted - rss_full) / 1) / (rss_full / dof) if rss_full > 0 else np.inf
    r2 = (rss_restricted - rss_full) / rss_restricted if rss_restricted > 0 else 0.0
    return FirstStage(coefficient=float(coef[-1]), f_statistic=float(f), partial_r2=float(r2))


def two_stage_least_squares(data: Data) -> TwoStage:
    """The effect of a unit change in the treatment, identified by the instrument."""
    z = _instrument(data)
    controls = _controls(data)
    regressors = np.column_stack([controls, data.t])
    instruments = np.column_stack([controls, z])
    # stage 1: the part of every regressor the instruments predict
    fitted = instruments @ np.linalg.lstsq(instruments, regressors, rcond=None)[0]
    # stage 2: regress the outcome on the predicted regressors
    beta = np.linalg.lstsq(fitted, data.y, rcond=None)[0]
    residuals = data.y - regressors @ beta  # with the actual treatment, not the fitted one
    n, k = fitted.shape
    bread = np.linalg.pinv(fitted.T @ fitted)
    meat = (fitted * residuals[:, None] ** 2).T @ fitted
    covariance = bread @ meat @ bread * n / (n - k)
    return TwoStage(
        value=float(beta[-1]),
        standard_error=float(np.sqrt(covariance[-1, -1])),
        first_stage=first_stage(data),
    )


def _instrument(data: Data) -> np.ndarray:
    if data.z is None:
        raise UserError("instrumental variables need an instrument: give --instrument COLUMN")
    return data.z


def _controls(data: Data) -> np.ndarray:
    return np.column_stack([np.ones(len(data.t)), data.x])


def _rss(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    residuals = y - x @ coef
    return float(residuals @ residuals), coef
