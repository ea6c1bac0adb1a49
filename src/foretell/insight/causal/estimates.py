"""An effect estimate with its confidence interval: analytic where the method has a standard
error, else a percentile bootstrap that refits the whole method on each resample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from foretell.errors import ForetellError, UserError
from foretell.insight.causal.methods import Method
from foretell.insight.causal.question import Data

Interval = Literal["auto", "analytic", "bootstrap"]
INTERVALS: tuple[str, ...] = get_args(Interval)
#: More failed resamples than this share means the interval would not be trustworthy.
MAX_FAILED = 0.05


@dataclass(frozen=True)
class Estimate:
    """One method's estimate of the effect, with a ``level`` confidence interval."""

    method: str
    title: str
    effect: str
    value: float
    low: float
    high: float
    level: float
    #: ``analytic``, or ``bootstrap`` with the number of resamples in ``resamples``.
    interval: str
    resamples: int = 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval."""
        return self.low <= value <= self.high

    def describe_interval(self) -> str:
        if self.interval == "bootstrap":
            return f"bootstrap ({self.resamples} resamples)"
        return self.interval

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "title": self.title,
            "effect": self.effect,
            "estimate": self.value,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "interval": self.describe_interval(),
        }


def estimate(
    method: Method,
    data: Data,
    effect: str,
    *,
    interval: str = "auto",
    level: float = 0.95,
    resamples: int = 200,
    seed: int = 0,
) -> Estimate:
    """``method``'s estimate of ``effect`` on ``data`` with its interval."""
    if interval not in INTERVALS:
        raise UserError(f"the interval must be one of {', '.join(INTERVALS)}; got {interval!r}")
    if not 0 < level < 1:
        raise UserError(f"the confidence level must lie between 0 and 1; got {level}")
    if interval == "analytic" and method.analytic is None:
        raise UserError(
            f"method '{method.name}' ({method.title}) has no analytic standard error here; "
            "use --interval bootstrap (or auto, which bootstraps where needed)"
        )
    use_analytic = method.analytic is not None and interval != "bootstrap"
    if use_analytic and method.analytic is not None:
        value, low, high = method.analytic(data, effect, level, seed)
        kind, count = "analytic", 0
    else:
        value = method.point(data, effect, seed)
        low, high = bootstrap(method, data, effect, level, resamples, seed)
        kind, count = "bootstrap", resamples
    if not np.isfinite([value, low, high]).all():
        raise ForetellError(
            f"method '{method.name}' produced a non-finite estimate ({value}, interval {low} to "
            f"{high}); the data may be degenerate for it"
        )
    return Estimate(method.name, method.title, effect, value, low, high, level, kind, count)


def bootstrap(
    method: Method, data: Data, effect: str, level: float, resamples: int, seed: int
) -> tuple[float, float]:
    """The percentile interval of the method refitted on ``resamples`` resamples of the rows,
    drawn within the treated and the control group so both keep their size."""
    if resamples < 20:
        raise UserError(f"a bootstrap interval needs at least 20 resamples; got {resamples}")
    rng = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(data.t == v) for v in (0, 1)] if data.binary else [np.arange(len(data))]
    )
    values: list[float] = []
    failed = 0
    for _ in range(resamples):
        rows = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        try:
            values.append(method.point(data.take(rows), effect, seed))
        except (ValueError, np.linalg.LinAlgError):  # a degenerate resample, e.g. a lost level
            failed += 1
    if failed > MAX_FAILED * resamples:
        raise ForetellError(
            f"method '{method.name}' failed on {failed} of {resamples} bootstrap resamples; the "
            "data is too small or too sparse for a bootstrap interval"
        )
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(values), [tail, 1 - tail])
    return float(low), float(high)
