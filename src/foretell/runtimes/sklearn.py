"""scikit-learn estimators: skops files by default, pickle or joblib only when trusted."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foretell.errors import ModelLoadError, UnsafeModelError
from foretell.insight.bayes import normal_columns, spec_level
from foretell.runtimes.base import Runtime

if TYPE_CHECKING:
    from foretell.repository.spec import ModelSpec

#: What importing skops.io would import for nothing: it walks every scikit-learn package to
#: list its trusted estimators, which imports scikit-learn's vendored array-API shims for
#: torch, dask and cupy (and with them torch and dask: seconds of start-up for shims that CPU
#: estimators never use), and its testing helpers, which import pytest where it is installed
#: (5 MiB of every server's memory).
_NOT_FOR_LOADING = (
    *(f"sklearn.externals.array_api_compat.{name}" for name in ("torch", "dask", "cupy")),
    "pytest",
)


class SklearnRuntime(Runtime):
    """A fitted estimator or Pipeline; the method called follows the task.

    ``.skops`` files load with skops, which refuses types outside its trusted list unless the
    spec says ``trusted: true`` or lists them in runtime option ``trusted_types``. ``.pkl``,
    ``.pickle`` and ``.joblib`` files run code when read, so they need ``trusted: true``.
    With ``compile: onnx`` in the spec, a classifier or regressor that converts to ONNX and
    agrees with itself there runs in onnxruntime (see :mod:`foretell.runtimes.conversion`).

    A Bayesian regressor (BayesianRidge, ARDRegression, GaussianProcessRegressor) with runtime
    option ``return_std: true`` also serves its predictive ``std`` and the Normal interval
    ``lower``, ``upper`` at ``level`` (runtime option ``level``, default 0.9, or the call's).
    """

    format = "sklearn"

    @property
    def runs_code(self) -> bool:
        return self.artifact.suffix != ".skops"

    def _load(self, path: Path) -> None:
        if path.suffix == ".skops":
            self.estimator = read_skops(path, self.spec)
        elif path.suffix == ".joblib":
            import joblib

            self.estimator = joblib.load(path)
        elif path.suffix in (".pkl", ".pickle"):
            import pickle

            with path.open("rb") as handle:
                self.estimator = pickle.load(handle)
        else:
            raise ModelLoadError(
                f"{self.spec.name}: artifact '{path.name}' must end in .skops, .joblib or .pkl"
            )
        self.method = self._method()
        names = getattr(self.estimator, "feature_names_in_", None)
        self.feature_names = None if names is None else list(names)
        self.return_std = self.options.get("return_std") is True
        if self.return_std:
            self._check_return_std()
        self.compiled = None
        if self.spec.compile == "onnx" and not self.return_std:
            from foretell.runtimes.conversion import converted

            self.compiled = converted(
                self.spec, self.folder, self.estimator, lambda x: self.method(self._rows(x))
            )

    def _method(self) -> Any:
        task, est = self.spec.task, self.estimator
        if task in ("classification", "text_classification"):
            return est.predict_proba
        if task == "anomaly_detection":
            return lambda x: -est.score_samples(x)
        if task == "clustering" and hasattr(est, "transform"):
            return est.transform
        return est.predict

    def _check_return_std(self) -> None:
        steps = getattr(self.estimator, "steps", None)
        final = steps[-1][1] if steps else self.estimator
        if (
            self.spec.task != "regression"
            or "return_std" not in inspect.signature(final.predict).parameters
        ):
            raise ModelLoadError(
                f"{self.spec.name}/{self.spec.version}: runtime option 'return_std' needs a "
                "regressor whose predict takes return_std (BayesianRidge, ARDRegression, "
                f"GaussianProcessRegressor); got {type(final).__name__} for task "
                f"'{self.spec.task}'"
            )
        self.level = spec_level(self.spec)

    def _rows(self, x: np.ndarray) -> Any:
        if self.feature_names is not None:  # fitted on a DataFrame: give it its column names
            import pandas as pd

            return pd.DataFrame(x, columns=self.feature_names)
        return x

    def predict(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        if self.return_std:
            return self.predict_posterior(x, self.level)
        if self.compiled is not None:
            return self.compiled(x)
        return np.asarray(self.method(self._rows(x)))

    def predict_posterior(self, x: np.ndarray, level: float) -> dict[str, np.ndarray]:
        """The predictive mean as ``value``, with its ``std`` and Normal credible interval."""
        mean, std = self.estimator.predict(self._rows(x), return_std=True)
        mean = np.asarray(mean, dtype=np.float64).reshape(len(x))
        return {"value": mean, **normal_columns(mean, np.asarray(std, dtype=np.float64), level)}


def read_skops(path: Path, spec: ModelSpec) -> Any:
    """What the skops file at ``path`` holds. Types outside skops' trusted list must be listed
    in ``spec``'s runtime option ``trusted_types``, or the spec must say ``trusted: true``."""
    with _without_unneeded_imports():
        import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    listed = spec.runtime.get("trusted_types") or []
    allowed = [t for t in listed if isinstance(t, str)]
    try:  # one read of the file when it holds nothing untrusted beyond the list, as it should
        return sio.load(path, trusted=allowed or None)
    except UntrustedTypesFoundException:
        untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if t not in allowed]
    if refused and not spec.trusted:
        raise UnsafeModelError(
            f"{spec.name}/{spec.version}: the skops file holds types outside skops' trusted "
            f"list: {refused}; list them in runtime option 'trusted_types' or set "
            "'trusted: true' in model.yaml if you trust the file's author"
        )
    return sio.load(path, trusted=untrusted)


@contextmanager
def _without_unneeded_imports() -> Iterator[None]:
    """Makes the modules in :data:`_NOT_FOR_LOADING` unimportable for the block (a package walk
    skips packages that fail to import, and scikit-learn's testing helpers do without pytest),
    then importable again for whoever needs them."""
    blocked = [name for name in _NOT_FOR_LOADING if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
