"""The estimators, one per method, and what each needs from the data.

Regression adjustment, matching and weighting are dowhy's estimators, fed the propensity that
:mod:`balance` also diagnoses; the doubly robust estimator is EconML's ``LinearDRLearner``
(cross-fitted AIPW with analytic intervals). The difference in means and 2SLS are a few lines
of scipy and numpy (see :mod:`iv` for why).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from foretell.errors import MissingExtraError, UserError
from foretell.insight.causal import iv
from foretell.insight.causal.balance import propensity, propensity_model
from foretell.insight.causal.question import EFFECTS, Data

#: (data, effect, seed) -> the point estimate.
Point = Callable[[Data, str, int], float]
#: (data, effect, level, seed) -> (estimate, low, high) from the method's own standard error.
Analytic = Callable[[Data, str, float, int], tuple[float, float, float]]


@dataclass(frozen=True)
class Method:
    """One estimator: its name on the command line, what it needs and how it estimates."""

    name: str
    title: str
    point: Point
    analytic: Analytic | None = None
    binary: bool = True
    confounders: bool = True
    instrument: bool = False
    effects: tuple[str, ...] = EFFECTS
    assumes: str = "no unmeasured confounding and overlap"

    def check(self, data: Data, effect: str, treatment: str) -> None:
        """Refuses data this method cannot estimate from, saying what it needs."""
        if self.binary and not data.binary:
            raise UserError(
                f"method '{self.name}' ({self.title}) needs a binary treatment coded 0/1; "
                f"{treatment!r} takes {len(np.unique(data.t)):,} distinct values. Use "
                "'regression' or 'iv' for a continuous treatment"
            )
        if self.confounders and not data.names:
            raise UserError(
                f"method '{self.name}' ({self.title}) adjusts for confounders, and none were "
                "given: pass --confounders A,B or --graph FILE (or use 'difference' for a "
                "randomized experiment)"
            )
        if self.instrument and data.z is None:
            raise UserError(f"method '{self.name}' needs an instrument: give --instrument COLUMN")
        if effect not in self.effects:
            raise UserError(
                f"method '{self.name}' estimates {' or '.join(self.effects)}, not {effect}: "
                "2SLS identifies the effect for those the instrument moves (a local average "
                "effect), which equals the ATE only when the effect is the same for everyone"
            )


def require_extra(package: str, purpose: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise MissingExtraError(package, "causal", purpose)


@contextlib.contextmanager
def quiet_dowhy() -> Iterator[None]:
    """dowhy 0.14 passes ``copy=`` to pandas' ``astype``, which pandas 3 deprecates with a
    ``Pandas4Warning`` on every regression; it is harmless and not ours to fix, so exactly that
    warning is silenced around dowhy's calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The copy keyword is deprecated", category=DeprecationWarning
        )
        yield


def _frame(data: Data, scores: np.ndarray | None = None) -> pd.DataFrame:
    """The data as dowhy reads it, with plain column names (t, y, x0, x1, ...)."""
    columns: dict[str, np.ndarray] = {"t": data.t, "y": data.y}
    columns.update({f"x{i}": data.x[:, i] for i in range(data.x.shape[1])})
    if scores is not None:
        columns["propensity_score"] = scores
    return pd.DataFrame(columns)


@functools.lru_cache(maxsize=16)
def _estimand(confounders: int) -> Any:
    """dowhy's backdoor estimand adjusting for x0..x{confounders-1}; it depends on the names
    only, so it is identified once and shared by every bootstrap resample."""
    require_extra("dowhy", "causal estimation")
    from dowhy import CausalModel  # type: ignore[import-untyped]

    names = [f"x{i}" for i in range(confounders)]
    frame = pd.DataFrame(np.zeros((2, confounders + 2)), columns=["t", "y", *names])
    model = CausalModel(data=frame, treatment="t", outcome="y", common_causes=names)
    return model.identify_effect(proceed_when_unidentifiable=True)


def difference_point(data: Data, effect: str, seed: int) -> float:
    return float(data.y[data.t == 1].mean() - data.y[data.t == 0].mean())


def difference_analytic(
    data: Data, effect: str, level: float, seed: int
) -> tuple[float, float, float]:
    """Welch's t interval for the difference of two means."""
    from scipy import stats

    test = stats.ttest_ind(data.y[data.t == 1], data.y[data.t == 0], equal_var=False)
    interval = test.confidence_interval(level)
    return difference_point(data, effect, seed), float(interval.low), float(interval.high)


def regression_point(data: Data, effect: str, seed: int) -> float:
    """dowhy's linear regression with treatment-by-confounder interactions, so the effect may
    vary with the confounders and the ATT and ATC average it over the right rows."""
    from dowhy.causal_estimators.linear_regression_estimator import (  # type: ignore[import-untyped]
        LinearRegressionEstimator,
    )

    frame = _frame(data)
    modifiers = [f"x{i}" for i in range(data.x.shape[1])] or None
    estimator = LinearRegressionEstimator(
        _estimand(data.x.shape[1]), need_conditional_estimates=False
    )
    with quiet_dowhy():
        estimator.fit(frame, effect_modifier_names=modifiers)
        rows = frame[data.rows(effect)]
        estimate = estimator.estimate_effect(rows, treatment_value=1, control_value=0)
    return float(estimate.value)


def matching_point(data: Data, effect: str, seed: int) -> float:
    """dowhy's 1-nearest-neighbour matching on the propensity, with replacement."""
    from dowhy.causal_estimators.propensity_score_matching_estimator import (  # type: ignore[import-untyped]
        PropensityScoreMatchingEstimator,
    )

    frame = _frame(data, propensity(data))
    estimator = PropensityScoreMatchingEstimator(_estimand(data.x.shape[1]))
    with quiet_dowhy():
        estimator.fit(frame)
        return float(estimator.estimate_effect(frame, target_units=effect).value)


def weighting_point(data: Data, effect: str, seed: int) -> float:
    """dowhy's inverse propensity weighting (normalized weights, propensity clipped to
    [0.05, 0.95])."""
    from dowhy.causal_estimators.propensity_score_weighting_estimator import (  # type: ignore[import-untyped]
        PropensityScoreWeightingEstimator,
    )

    frame = _frame(data, propensity(data))
    estimator = PropensityScoreWeightingEstimator(_estimand(data.x.shape[1]))
    with quiet_dowhy():
        estimator.fit(frame)
        return float(estimator.estimate_effect(frame, target_units=effect).value)


def _outcome_model() -> Any:
    """E[outcome | confounders, treatment]: quadratic terms carry treatment interactions."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    return make_pipeline(PolynomialFeatures(degree=2, include_bias=False), LinearRegression())


def _doubly_robust(data: Data, effect: str, seed: int) -> Any:
    require_extra("econml", "the doubly robust estimator")
    from econml.dr import LinearDRLearner  # type: ignore[import-untyped]

    learner = LinearDRLearner(
        model_propensity=propensity_model(),
        model_regression=_outcome_model(),
        cv=2,
        random_state=seed,
    )
    learner.fit(data.y, data.t.astype(np.int64), X=data.x)
    return learner.ate_inference(X=data.x[data.rows(effect)])


def doubly_robust_point(data: Data, effect: str, seed: int) -> float:
    return float(np.ravel(_doubly_robust(data, effect, seed).mean_point)[0])


def doubly_robust_analytic(
    data: Data, effect: str, level: float, seed: int
) -> tuple[float, float, float]:
    """AIPW's cross-fitted estimate, its linear effect model averaged over the target rows."""
    inference = _doubly_robust(data, effect, seed)
    low, high = inference.conf_int_mean(alpha=1 - level)
    value = np.ravel(inference.mean_point)[0]
    return float(value), float(np.ravel(low)[0]), float(np.ravel(high)[0])


def _two_stage(data: Data) -> iv.TwoStage:
    fit = iv.two_stage_least_squares(data)
    if fit.first_stage.partial_r2 < 1e-10:
        raise UserError(
            "the instrument does not move the treatment at all once the confounders are "
            "accounted for (first-stage F = 0), so 2SLS has nothing to identify the effect from"
        )
    return fit


def iv_point(data: Data, effect: str, seed: int) -> float:
    return _two_stage(data).value


def iv_analytic(data: Data, effect: str, level: float, seed: int) -> tuple[float, float, float]:
    fit = _two_stage(data)
    low, high = fit.interval(level)
    return fit.value, low, high


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "difference",
            "difference in means",
            difference_point,
            difference_analytic,
            confounders=False,
            assumes="randomized treatment (no confounding at all)",
        ),
        Method(
            "regression",
            "regression adjustment",
            regression_point,
            binary=False,
            confounders=False,
            assumes="no unmeasured confounding; outcome linear in the confounders",
        ),
        Method("matching", "propensity score matching", matching_point),
        Method("weighting", "inverse propensity weighting", weighting_point),
        Method(
            "aipw",
            "doubly robust (AIPW)",
            doubly_robust_point,
            doubly_robust_analytic,
            assumes="no unmeasured confounding and overlap; the outcome or the propensity "
            "model right",
        ),
        Method(
            "iv",
            "instrumental variables (2SLS)",
            iv_point,
            iv_analytic,
            binary=False,
            confounders=False,
            instrument=True,
            effects=("ate",),
            assumes="a relevant instrument that affects the outcome only through the "
            "treatment and shares no unmeasured cause with it",
        ),
    ]
}
#: Other names a user may know a method by.
ALIASES = {
    "naive": "difference",
    "doubly_robust": "aipw",
    "dr": "aipw",
    "psm": "matching",
    "ipw": "weighting",
    "2sls": "iv",
}


def method(name: str) -> Method:
    """The method called ``name`` (or one of its aliases)."""
    found = METHODS.get(ALIASES.get(name, name))
    if found is None:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return found
