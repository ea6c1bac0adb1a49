"""Conjugate Bayesian models: a prior and its evidence stored as data (JSON or YAML), not code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from foretell.errors import ModelLoadError
from foretell.insight.bayes import (
    BetaBinomial,
    NormalLinear,
    beta_columns,
    credible_level,
    normal_columns,
    parse_conjugate,
    spec_level,
)
from foretell.pipeline.preprocess import encoded_names
from foretell.runtimes.base import Runtime


class ConjugateRuntime(Runtime):
    """A ``beta_binomial`` or ``normal`` model from :mod:`foretell.insight.bayes`.

    ``beta_binomial`` serves a binary classification: the probability of the second label (the
    event) in the row's segment. ``normal`` serves a regression. Both return the posterior
    predictive's ``mean``, ``std`` and credible interval (``lower``, ``upper``) at ``level``:
    the call's, else runtime option ``level``, else 0.9. A segment with no evidence yet gets
    the prior. Reading the artifact runs no code, so it needs no trust.
    """

    format = "conjugate"

    def _load(self, path: Path) -> None:
        where = f"{self.spec.name}/{self.spec.version}"
        data = yaml.safe_load(path.read_text("utf-8"))
        self.model = parse_conjugate(data, f"{where}: {path.name}")
        self.level = spec_level(self.spec)
        names = encoded_names(self.spec)
        if isinstance(self.model, BetaBinomial):
            self._check_rates(self.model, names, where)
        else:
            self._check_regression(self.model, names, where)

    def _check_rates(self, model: BetaBinomial, names: list[str], where: str) -> None:
        if self.spec.task != "classification" or len(self.spec.labels or []) != 2:
            raise ModelLoadError(
                f"{where}: a 'beta_binomial' model serves task 'classification' with two "
                f"labels (no event, event); the spec says '{self.spec.task}' with labels "
                f"{self.spec.labels}"
            )
        feature = next((f for f in self.spec.inputs if f.name == model.segment_by), None)
        if feature is None or feature.dtype != "category" or feature.encoding != "one_hot":
            raise ModelLoadError(
                f"{where}: 'segment_by' must name a one-hot 'category' input; got "
                f"'{model.segment_by}'"
            )
        self.segments = list(feature.categories or [])
        unknown = sorted(set(model.evidence) - set(self.segments))
        if unknown:
            raise ModelLoadError(
                f"{where}: evidence for segments {unknown} that input '{model.segment_by}' does "
                f"not list; its categories: {self.segments}"
            )
        start = names.index(f"{model.segment_by}={self.segments[0]}")
        self.columns = slice(start, start + len(self.segments))
        # one row per segment, and the prior alone last: for a row whose segment is unknown
        alpha, beta = model.posteriors(self.segments)
        self.alpha = np.append(alpha, model.prior.alpha)
        self.beta = np.append(beta, model.prior.beta)

    def _check_regression(self, model: NormalLinear, names: list[str], where: str) -> None:
        if self.spec.task != "regression":
            raise ModelLoadError(
                f"{where}: a 'normal' model serves task 'regression'; the spec says "
                f"'{self.spec.task}'"
            )
        if model.coefficients != ["intercept", *names]:
            raise ModelLoadError(
                f"{where}: 'coefficients' must be ['intercept', *the encoded inputs] = "
                f"{['intercept', *names]}; got {model.coefficients}"
            )
        self.mean, self.covariance = model.posterior()
        self.noise = model.noise_std**2

    def summary(self, level: float | None = None) -> dict[str, Any]:
        """Prior, evidence and posterior as plain data, intervals at ``level`` (or the spec's)."""
        level = credible_level(self.spec, level)
        if isinstance(self.model, NormalLinear):
            return self.model.summary(level)
        return self.model.summary(self.segments, level)

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.predict_posterior(x, self.level)

    def predict_posterior(self, x: np.ndarray, level: float) -> dict[str, np.ndarray]:
        """The task's outputs with the posterior predictive's mean, std and interval."""
        if isinstance(self.model, NormalLinear):
            d = self.model.design(x)
            mean = d @ self.mean
            std = np.sqrt(self.noise + np.einsum("ij,jk,ik->i", d, self.covariance, d))
            return {"value": mean, **normal_columns(mean, std, level)}
        block = x[:, self.columns]
        segment = np.where(block.any(axis=1), block.argmax(axis=1), len(self.segments))
        columns = beta_columns(self.alpha[segment], self.beta[segment], level)
        event = columns["mean"]
        return {"probabilities": np.column_stack([1.0 - event, event]), **columns}
