"""Conformal uncertainty: prediction intervals and label sets with a coverage guarantee.

Split conformal prediction. At registration a model version stores held-out rows with their
true outcomes (its *calibration set*, never seen in training). Running the model's own pipeline
on them gives one nonconformity score per row:

- regression: the absolute residual ``|y - prediction|``;
- classification: ``1 - p(true label)``, MAPIE's "LAC" score.

For a level ``c`` the threshold ``q`` is the ``ceil((n + 1) * c)``-th smallest of the ``n``
scores (infinite when that exceeds ``n``). A regressor's interval is ``prediction ± q``; a
classifier's set holds every label whose probability is at least ``1 - q``. When calibration
and new rows are exchangeable, the true outcome falls inside with probability at least ``c``
(and below ``c + 1 / (n + 1)`` when scores have no ties): see docs/insight.md.

Why not MAPIE: MAPIE 1.x conformalizes scikit-learn estimators (objects with ``fit`` and
``predict``) on encoded arrays, while a foretell model is a runtime (ONNX, XGBoost, a skops
file...) behind validation and preprocessing that MAPIE cannot call. The method is the few lines
below, with MAPIE's definitions of the scores and of the quantile; the tests check coverage.
"""

from __future__ import annotations

import datetime
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from foretell.errors import ModelLoadError, UserError
from foretell.repository.spec import CONFORMAL_TASKS, ModelSpec, read_spec, write_spec

if TYPE_CHECKING:
    from foretell.pipeline.model import Model

#: The file a calibration set is stored in, inside the model version's folder.
CALIBRATION_FILE = "calibration.parquet"


def check_confidence(value: Any) -> float:
    """``value`` as a confidence level, or a UserError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise UserError(
            f"parameter 'confidence' must be a number strictly between 0 and 1 (e.g. 0.9); "
            f"got {value!r}"
        )
    return float(value)


def resolve_confidence(spec: ModelSpec, asked: Any) -> float | None:
    """The level a call runs at: ``asked``, else the spec's default; None for no uncertainty.

    Raises UserError when ``asked`` is out of range or the model has no calibration set.
    """
    settings = spec.insight.uncertainty
    if asked is None:
        return settings.default_confidence if settings is not None else None
    confidence = check_confidence(asked)
    if settings is None:
        raise UserError(
            f"model '{spec.name}' version {spec.version} has no calibration set, so it gives "
            "no conformal uncertainty; calibrate it with held-out rows it was not trained on: "
            f"`foretell calibrate {spec.name} --data held_out.parquet --target COLUMN`"
        )
    return confidence


class Calibration:
    """The sorted nonconformity scores of a model's calibration set, and the threshold per level."""

    def __init__(self, spec: ModelSpec, scores: np.ndarray) -> None:
        self.spec = spec
        self.scores = np.sort(np.asarray(scores, dtype=np.float64))
        self._thresholds: dict[float, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, model: Model) -> Calibration:
        """Reads the model's calibration file and scores it with the model's own pipeline."""
        settings = model.spec.insight.uncertainty
        if settings is None:
            raise UserError(f"model '{model.name}' has no calibration set")
        path = model.folder / settings.calibration
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"{model.name}/{model.version}: calibration file '{settings.calibration}' cannot "
                f"be read: {exc}"
            ) from None
        return cls(model.spec, nonconformity(model, frame, settings.target))

    def threshold(self, confidence: float) -> float:
        """The score at or below which a new row's score falls with probability >= confidence."""
        with self._lock:
            if confidence not in self._thresholds:
                n = len(self.scores)
                k = math.ceil((n + 1) * confidence)
                self._thresholds[confidence] = math.inf if k > n else float(self.scores[k - 1])
            return self._thresholds[confidence]

    def columns(self, outputs: dict[str, np.ndarray], confidence: float) -> dict[str, np.ndarray]:
        """The uncertainty columns of scored rows: ``lower``/``upper`` or ``prediction_set``,
        and ``confidence``."""
        q = self.threshold(confidence)
        if self.spec.task == "regression":
            value = outputs["value"]
            columns = {"lower": value - q, "upper": value + q}
        else:
            labels = np.array(self.spec.labels or [], dtype=object)
            inside = 1.0 - outputs["probabilities"] <= q
            sets = np.empty(len(inside), dtype=object)
            sets[:] = [labels[row].tolist() for row in inside]
            columns = {"prediction_set": sets}
        return {**columns, "confidence": np.full(len(next(iter(columns.values()))), confidence)}


def nonconformity(model: Model, frame: pd.DataFrame, target: str) -> np.ndarray:
    """One score per row of ``frame`` (inputs and the true outcome in column ``target``)."""
    spec = model.spec
    where = f"{spec.name}/{spec.version} calibration"
    if spec.task not in CONFORMAL_TASKS:
        raise UserError(
            f"conformal uncertainty applies to {', '.join(CONFORMAL_TASKS)} models; "
            f"'{spec.name}' is a {spec.task} model"
        )
    if target not in frame.columns:
        raise UserError(f"{where}: no column '{target}' with the true outcomes")
    if len(frame) == 0:
        raise UserError(f"{where}: no rows")
    batch = model.score(frame.drop(columns=[target]))
    if len(batch.usable) != len(frame):
        first = next(iter(batch.errors().items()))
        raise UserError(f"{where}: row {first[0]} cannot be scored: {first[1]}")
    truth = frame[target].to_numpy()
    if spec.task == "regression":
        try:
            y = truth.astype(np.float64)
        except (TypeError, ValueError):
            raise UserError(f"{where}: column '{target}' must hold numbers") from None
        if np.isnan(y).any():
            raise UserError(f"{where}: column '{target}' has missing values")
        residuals: np.ndarray = np.abs(y - batch.outputs["value"])
        return residuals
    labels = list(spec.labels or [])
    index = {label: j for j, label in enumerate(labels)}
    unknown = sorted({str(t) for t in truth} - set(index))
    if unknown:
        raise UserError(f"{where}: column '{target}' holds {unknown}, not among labels {labels}")
    rows = np.array([index[str(t)] for t in truth])
    probabilities = batch.outputs["probabilities"]
    scores: np.ndarray = 1.0 - probabilities[np.arange(len(rows)), rows]
    return scores


def calibrate(
    folder: str | Path,
    data: pd.DataFrame,
    target: str = "target",
    default_confidence: float | None = None,
    created: datetime.date | None = None,
) -> ModelSpec:
    """Stores ``data`` as the calibration set of the model version in ``folder``.

    ``data`` holds held-out rows the model was not trained on, with the true outcome (a label
    or a value) in column ``target``. The rows are scored once here, so a bad file fails now
    rather than at the first request; the spec records the file, its size and the date
    (``created``, today unless given).
    """
    from foretell.pipeline.model import Model

    folder = Path(folder)
    spec = read_spec(folder)
    nonconformity(Model.from_folder(folder, spec), data, target)
    if default_confidence is not None:
        check_confidence(default_confidence)
    data.reset_index(drop=True).to_parquet(folder / CALIBRATION_FILE, index=False)
    settings = {
        "calibration": CALIBRATION_FILE,
        "target": target,
        "rows": len(data),
        "created": created or datetime.date.today(),
        "default_confidence": default_confidence,
    }
    insight = {**spec.insight.model_dump(), "uncertainty": settings}
    updated = ModelSpec.model_validate({**spec.model_dump(), "insight": insight})
    write_spec(updated, folder)
    return updated
