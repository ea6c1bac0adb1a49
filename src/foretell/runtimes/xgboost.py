"""XGBoost boosters saved in XGBoost's own JSON or UBJSON format (extra ``xgboost``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foretell.errors import MissingExtraError
from foretell.runtimes.base import Runtime


class XGBoostRuntime(Runtime):
    """A ``Booster`` read with ``load_model``; predictions come from ``inplace_predict``.

    Binary classifiers (``binary:logistic``) give the positive class's probability, multi-class
    ones (``multi:softprob``) one column per class; regressors give the value.
    """

    format = "xgboost"

    def _load(self, path: Path) -> None:
        try:
            import xgboost
        except ImportError:
            raise MissingExtraError("xgboost-cpu", "xgboost", "an XGBoost model") from None
        self.booster = xgboost.Booster()
        self.booster.set_param({"nthread": int(self.options.get("threads", 1))})
        self.booster.load_model(str(path))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(np.ascontiguousarray(x)))
