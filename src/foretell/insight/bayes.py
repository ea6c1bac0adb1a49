"""Bayesian posteriors: conjugate families, their updates from evidence, and credible intervals.

Two conjugate families, each stored as data (a JSON or YAML artifact, never code):

- ``beta_binomial``: the rate of an event (fraud, a diagnosis) per segment of a category input.
  The prior is Beta(alpha, beta); a segment that saw ``s`` events in ``n`` trials has the
  posterior Beta(alpha + s, beta + n - s). A row's probability of the event is the posterior
  mean (the posterior predictive of one more trial); its ``std`` and credible interval describe
  the posterior of the rate itself.
- ``normal``: Bayesian linear regression with known noise. Coefficients (an intercept, then the
  encoded inputs) have independent Normal priors; the evidence is the sufficient statistics
  X'X, X'y and the row count, so an update adds to them and the posterior is exact.

Evidence only ever accumulates: the posterior after two updates equals the posterior of the
prior and all the evidence at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from foretell.errors import ModelLoadError, UserError
from foretell.repository.spec import ModelSpec

#: Output columns a Bayesian model adds to its task's usual outputs (``level`` is the credible
#: level, named so because classifiers already output a ``confidence``).
POSTERIOR_OUTPUTS = ("mean", "std", "lower", "upper", "level")
#: The credible level when neither the call nor ``runtime.level`` in the spec names one.
DEFAULT_LEVEL = 0.9


@runtime_checkable
class PosteriorRuntime(Protocol):
    """A runtime that answers with a posterior predictive at a credible level of the call's."""

    def predict_posterior(self, x: np.ndarray, level: float) -> dict[str, np.ndarray]:
        """The task's raw outputs and the :data:`POSTERIOR_OUTPUTS` at ``level``."""
        ...


def gives_posterior(spec: ModelSpec) -> bool:
    """Whether the model returns a posterior predictive: a conjugate model, or a scikit-learn
    regressor whose spec says ``runtime: {return_std: true}``."""
    return spec.format == "conjugate" or (
        spec.format == "sklearn" and spec.runtime.get("return_std") is True
    )


def credible_level(spec: ModelSpec, asked: float | None = None) -> float:
    """The credible level of a call: ``asked``, else the spec's (see :func:`spec_level`)."""
    if asked is None:
        return spec_level(spec)
    if not _is_level(asked):
        raise UserError(
            f"the credible level ('confidence') must be a number strictly between 0 and 1; got "
            f"{asked!r}"
        )
    return float(asked)


def spec_level(spec: ModelSpec) -> float:
    """The spec's ``runtime.level`` (default 0.9), or a ModelLoadError when it is not one."""
    level = spec.runtime.get("level", DEFAULT_LEVEL)
    if not _is_level(level):
        raise ModelLoadError(
            f"{spec.name}/{spec.version}: runtime option 'level' must be a number strictly "
            f"between 0 and 1; got {level!r}"
        )
    return float(level)


def _is_level(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 < value < 1


def normal_columns(mean: np.ndarray, std: np.ndarray, level: float) -> dict[str, np.ndarray]:
    """Mean, std and the equal-tailed interval of Normal predictives, one per row."""
    from scipy import stats  # here, not at import: the pipeline imports this module

    z = float(stats.norm.ppf(0.5 + level / 2))
    return {
        "mean": mean,
        "std": std,
        "lower": mean - z * std,
        "upper": mean + z * std,
        "level": np.full(len(mean), level),
    }


def beta_columns(alpha: np.ndarray, beta: np.ndarray, level: float) -> dict[str, np.ndarray]:
    """Mean, std and the equal-tailed credible interval of Beta posteriors, one per row."""
    from scipy import stats

    total = alpha + beta
    tail = (1 - level) / 2
    return {
        "mean": alpha / total,
        "std": np.sqrt(alpha * beta / (total**2 * (total + 1))),
        "lower": stats.beta.ppf(tail, alpha, beta),
        "upper": stats.beta.ppf(1 - tail, alpha, beta),
        "level": np.full(len(alpha), level),
    }


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Counts(_Data):
    """Events seen in a number of trials."""

    successes: int = Field(ge=0)
    trials: int = Field(ge=0)

    @model_validator(mode="after")
    def _possible(self) -> Counts:
        if self.successes > self.trials:
            raise ValueError(f"successes ({self.successes}) exceed trials ({self.trials})")
        return self

    def __add__(self, other: Counts) -> Counts:
        return Counts(successes=self.successes + other.successes, trials=self.trials + other.trials)


class BetaPrior(_Data):
    alpha: float = Field(gt=0)
    beta: float = Field(gt=0)


class BetaBinomial(_Data):
    """Event rates per segment: a Beta prior and the evidence counted per segment."""

    family: Literal["beta_binomial"]
    #: The category input whose value picks the row's segment.
    segment_by: str
    prior: BetaPrior
    evidence: dict[str, Counts] = Field(default_factory=dict)

    def posterior(self, segment: str) -> tuple[float, float]:
        """Beta(alpha + s, beta + n - s) of ``segment``; the prior for a segment never seen."""
        seen = self.evidence.get(segment, Counts(successes=0, trials=0))
        return (
            self.prior.alpha + seen.successes,
            self.prior.beta + seen.trials - seen.successes,
        )

    def posteriors(self, segments: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The posterior alpha and beta of each of ``segments``, as two arrays."""
        pairs = np.array([self.posterior(s) for s in segments], dtype=np.float64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]

    def updated(self, added: dict[str, Counts]) -> BetaBinomial:
        """The same prior with ``added`` evidence on top of what was already seen."""
        evidence = dict(self.evidence)
        for segment, counts in added.items():
            evidence[segment] = evidence.get(segment, Counts(successes=0, trials=0)) + counts
        return self.model_copy(update={"evidence": dict(sorted(evidence.items()))})

    def summary(self, segments: list[str], level: float) -> dict[str, Any]:
        """Prior, evidence and posterior of every segment, as plain data."""
        alpha, beta = self.posteriors(segments)
        columns = beta_columns(alpha, beta, level)
        return {
            "family": self.family,
            "segment_by": self.segment_by,
            "prior": self.prior.model_dump(),
            "evidence": {s: c.model_dump() for s, c in self.evidence.items()},
            "posterior": {
                segment: {
                    "alpha": float(alpha[i]),
                    "beta": float(beta[i]),
                    "mean": float(columns["mean"][i]),
                    "std": float(columns["std"][i]),
                    "interval": [float(columns["lower"][i]), float(columns["upper"][i])],
                }
                for i, segment in enumerate(segments)
            },
            "level": level,
        }


class NormalPrior(_Data):
    """Independent Normal priors on the coefficients (a scalar std applies to each)."""

    mean: list[float]
    std: float | list[float]


class Moments(_Data):
    """Sufficient statistics of the evidence: X'X, X'y and the row count."""

    rows: int = Field(default=0, ge=0)
    xtx: list[list[float]] | None = None
    xty: list[float] | None = None


class NormalLinear(_Data):
    """Bayesian linear regression with known noise: y = x'w + e, e ~ N(0, noise_std^2)."""

    family: Literal["normal"]
    #: Coefficient names: ``intercept``, then the model's encoded inputs in order.
    coefficients: list[str] = Field(min_length=1)
    noise_std: float = Field(gt=0)
    prior: NormalPrior
    evidence: Moments = Moments()

    @model_validator(mode="after")
    def _shapes(self) -> NormalLinear:
        k = len(self.coefficients)
        std = self.prior.std
        if len(self.prior.mean) != k or (isinstance(std, list) and len(std) != k):
            raise ValueError(f"the prior needs one mean (and std) per coefficient, {k} in all")
        if min(std if isinstance(std, list) else [std]) <= 0:
            raise ValueError("prior std must be positive")
        if self.evidence.rows and (
            self.evidence.xtx is None
            or self.evidence.xty is None
            or np.shape(self.evidence.xtx) != (k, k)
            or len(self.evidence.xty) != k
        ):
            raise ValueError(f"evidence needs xtx ({k} x {k}) and xty ({k}) with its rows")
        return self

    def design(self, x: np.ndarray) -> np.ndarray:
        """The encoded inputs with the intercept's column of ones in front."""
        return np.column_stack([np.ones(len(x)), x])

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """The coefficients' posterior mean and covariance."""
        k = len(self.coefficients)
        precision0 = np.diag(1.0 / np.broadcast_to(np.asarray(self.prior.std, float), k) ** 2)
        noise = self.noise_std**2
        precision = precision0 + np.asarray(self.evidence.xtx or np.zeros((k, k))) / noise
        target = (
            precision0 @ np.asarray(self.prior.mean)
            + np.asarray(self.evidence.xty or np.zeros(k)) / noise
        )
        covariance = np.linalg.inv(precision)
        return covariance @ target, covariance

    def updated(self, x: np.ndarray, y: np.ndarray) -> NormalLinear:
        """The same prior with the rows ``x`` (encoded inputs) and outcomes ``y`` added."""
        k = len(self.coefficients)
        d = self.design(x)
        xtx = np.asarray(self.evidence.xtx or np.zeros((k, k))) + d.T @ d
        xty = np.asarray(self.evidence.xty or np.zeros(k)) + d.T @ y
        moments = Moments(rows=self.evidence.rows + len(y), xtx=xtx.tolist(), xty=xty.tolist())
        return self.model_copy(update={"evidence": moments})

    def summary(self, level: float) -> dict[str, Any]:
        """Prior, evidence and posterior of every coefficient, as plain data."""
        mean, covariance = self.posterior()
        columns = normal_columns(mean, np.sqrt(np.diag(covariance)), level)
        k = len(self.coefficients)
        std = np.broadcast_to(np.asarray(self.prior.std, float), k)
        return {
            "family": self.family,
            "noise_std": self.noise_std,
            "prior": {
                c: {"mean": self.prior.mean[i], "std": float(std[i])}
                for i, c in enumerate(self.coefficients)
            },
            "evidence": {"rows": self.evidence.rows},
            "posterior": {
                c: {
                    "mean": float(mean[i]),
                    "std": float(columns["std"][i]),
                    "interval": [float(columns["lower"][i]), float(columns["upper"][i])],
                }
                for i, c in enumerate(self.coefficients)
            },
            "level": level,
        }


Conjugate = Annotated[BetaBinomial | NormalLinear, Field(discriminator="family")]


class _Artifact(BaseModel):
    model: Conjugate


def parse_conjugate(data: Any, where: str) -> BetaBinomial | NormalLinear:
    """A checked conjugate model from parsed JSON/YAML; errors name ``where`` and the field."""
    try:
        return _Artifact.model_validate({"model": data}).model
    except PydanticValidationError as exc:
        problems = []
        for err in exc.errors():
            parts = err["loc"][1:]
            if parts and parts[0] in ("beta_binomial", "normal"):  # the family's own fields
                parts = parts[1:]
            field = ".".join(str(part) for part in parts) or "(top level)"
            problems.append(f"field '{field}': {err['msg']}")
        raise ModelLoadError(
            f"{where}: not a conjugate model (family 'beta_binomial' or 'normal'): "
            + "; ".join(problems)
        ) from None


def count_events(
    segments: list[Any], truth: list[Any], event: str, known: list[str]
) -> dict[str, Counts]:
    """Events and trials per segment among labelled rows; rows of unknown segments are left
    out (they never had a posterior of their own)."""
    successes: dict[str, int] = {}
    trials: dict[str, int] = {}
    for segment, outcome in zip(segments, truth, strict=True):
        if segment not in known:
            continue
        trials[segment] = trials.get(segment, 0) + 1
        successes[segment] = successes.get(segment, 0) + (str(outcome) == event)
    return {s: Counts(successes=successes[s], trials=trials[s]) for s in sorted(trials)}
