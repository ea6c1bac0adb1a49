"""scikit-learn estimators: skops files by default, pickle or joblib only when trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foretell.errors import ModelLoadError, UnsafeModelError
from foretell.runtimes.base import Runtime


class SklearnRuntime(Runtime):
    """A fitted estimator or Pipeline; the method called follows the task.

    ``.skops`` files load with skops, which refuses types outside its trusted list unless the
    spec says ``trusted: true`` or lists them in runtime option ``trusted_types``. ``.pkl``,
    ``.pickle`` and ``.joblib`` files run code when read, so they need ``trusted: true``.
    """

    format = "sklearn"

    @property
    def runs_code(self) -> bool:
        return self.artifact.suffix != ".skops"

    def _load(self, path: Path) -> None:
        if path.suffix == ".skops":
            self.estimator = self._load_skops(path)
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

    def _load_skops(self, path: Path) -> Any:
        import skops.io as sio

        untrusted = sio.get_untrusted_types(file=path)
        allowed = set(self.options.get("trusted_types", []))
        refused = [t for t in untrusted if t not in allowed]
        if refused and not self.spec.trusted:
            raise UnsafeModelError(
                f"{self.spec.name}/{self.spec.version}: the skops file holds types outside "
                f"skops' trusted list: {refused}; list them in runtime option 'trusted_types' "
                "or set 'trusted: true' in model.yaml if you trust the file's author"
            )
        return sio.load(path, trusted=untrusted)

    def _method(self) -> Any:
        task, est = self.spec.task, self.estimator
        if task in ("classification", "text_classification"):
            return est.predict_proba
        if task == "anomaly_detection":
            return lambda x: -est.score_samples(x)
        if task == "clustering" and hasattr(est, "transform"):
            return est.transform
        return est.predict

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.feature_names is not None:  # fitted on a DataFrame: give it its column names
            import pandas as pd

            return np.asarray(self.method(pd.DataFrame(x, columns=self.feature_names)))
        return np.asarray(self.method(x))
