"""Uplift (CATE) models: bags of paired scikit-learn regressors in a skops file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foretell.errors import ModelLoadError
from foretell.runtimes.base import Runtime
from foretell.runtimes.sklearn import read_skops


class UpliftRuntime(Runtime):
    """A bagged T-learner, as ``foretell causal train`` writes it.

    The artifact is a ``.skops`` file holding ``{"treated": [...], "control": [...]}``: bag
    ``b`` pairs a regressor of the outcome fitted on the treated rows of a bootstrap resample
    with one fitted on its control rows. Each row's outcome under treatment and under control
    is the mean over the bags, its effect the mean difference, and the effect's interval the
    central ``runtime.level`` (default 0.9) share of the bags' differences. Loading needs no
    trust beyond the skops types the spec lists in ``trusted_types``.

    A spec with ``task: uplift`` gets all five outputs; ``task: regression`` serves the effect
    alone as its ``value``.
    """

    format = "uplift"

    def _load(self, path: Path) -> None:
        where = f"{self.spec.name}/{self.spec.version}"
        if self.spec.task not in ("uplift", "regression"):
            raise ModelLoadError(
                f"{where}: an 'uplift' artifact serves task 'uplift' (or 'regression', the "
                f"effect alone); the spec says '{self.spec.task}'"
            )
        if path.suffix != ".skops":
            raise ModelLoadError(
                f"{where}: an uplift artifact must be a .skops file; got {path.name}"
            )
        bags = read_skops(path, self.spec)
        treated = bags.get("treated") if isinstance(bags, dict) else None
        control = bags.get("control") if isinstance(bags, dict) else None
        if not (
            isinstance(treated, list)
            and isinstance(control, list)
            and len(treated) == len(control) >= 2
            and all(callable(getattr(m, "predict", None)) for m in [*treated, *control])
        ):
            raise ModelLoadError(
                f"{where}: {path.name} must hold {{'treated': [...], 'control': [...]}}, two "
                "equally long lists (at least 2) of fitted regressors"
            )
        level = float(self.options.get("level", 0.9))
        if not 0 < level < 1:
            raise ModelLoadError(f"{where}: runtime option 'level' must lie in (0, 1); got {level}")
        self.treated, self.control, self.level = treated, control, level

    def predict(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        treated = np.stack([np.asarray(m.predict(x), dtype=np.float64) for m in self.treated])
        control = np.stack([np.asarray(m.predict(x), dtype=np.float64) for m in self.control])
        effects = treated - control  # (bags, rows)
        tail = (1 - self.level) / 2
        low, high = np.quantile(effects, [tail, 1 - tail], axis=0)
        effect: np.ndarray = effects.mean(axis=0)
        if self.spec.task == "regression":
            return effect
        return {
            "outcome_treated": treated.mean(axis=0),
            "outcome_control": control.mean(axis=0),
            "effect": effect,
            "effect_low": low,
            "effect_high": high,
        }
