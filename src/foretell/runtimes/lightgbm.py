"""LightGBM boosters saved as LightGBM's text model file (extra ``lightgbm``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foretell.errors import MissingExtraError
from foretell.runtimes.base import Runtime


class LightGBMRuntime(Runtime):
    """A ``Booster`` read from its text file; ``predict`` gives probabilities or values."""

    format = "lightgbm"

    def _load(self, path: Path) -> None:
        try:
            import lightgbm
        except ImportError:
            raise MissingExtraError("lightgbm", "lightgbm", "a LightGBM model") from None
        self.booster = lightgbm.Booster(model_file=str(path))
        self.threads = int(self.options.get("threads", 1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=self.threads))
