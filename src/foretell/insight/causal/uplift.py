"""Training uplift (CATE) models: who would the treatment change, and by how much.

The model is a bagged T-learner: on each of ``bags`` bootstrap resamples (drawn within the
treated and the control rows), one regressor learns the outcome of the treated and one the
outcome of the controls. A row's effect is the mean over bags of the difference of the two
predictions, its interval the spread of those differences. The estimators are plain
scikit-learn regressors, so the saved file is a skops file of trusted types served by the
``uplift`` runtime with no causal libraries installed. (EconML's CATE estimators would need
EconML, and types skops does not trust, wherever the model is served; and they give no
outcome under each arm, which a campaign needs to price a decision.)

The effect is causal only under the same assumptions as any adjustment: the features include
every common cause of treatment and outcome, and both groups occur at every feature value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from foretell.errors import UserError
from foretell.insight.causal.question import Question, read_table
from foretell.pipeline.preprocess import encode
from foretell.repository.reference import compute_reference
from foretell.repository.spec import SPEC_FILE, Feature, ModelSpec, Output, write_spec
from foretell.runtimes.base import file_sha256

Learner = Literal["boosting", "linear"]
LEARNERS: tuple[str, ...] = ("boosting", "linear")
OUTPUTS = {
    "outcome_treated": "predicted outcome if treated",
    "outcome_control": "predicted outcome if not treated",
    "effect": "individual effect of the treatment: outcome_treated - outcome_control",
    "effect_low": "lower end of the effect's interval",
    "effect_high": "upper end of the effect's interval",
}


def regressor(learner: str, seed: int) -> Any:
    """A fresh outcome regressor: gradient boosting (any shape of effect) or linear."""
    if learner == "boosting":
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(
            max_iter=100, learning_rate=0.1, max_depth=3, min_samples_leaf=30, random_state=seed
        )
    if learner == "linear":
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    raise UserError(f"the learner must be one of {', '.join(LEARNERS)}; got {learner!r}")


def train_uplift(
    data: pd.DataFrame | str,
    *,
    treatment: str,
    outcome: str,
    features: Sequence[str],
    repository: str | Path,
    name: str,
    learner: str = "boosting",
    bags: int = 25,
    level: float = 0.9,
    seed: int = 0,
    description: str = "",
) -> ModelSpec:
    """Trains an uplift model on ``data`` and writes it as a new version of ``name`` in the
    model ``repository``; returns the spec written."""
    if not features:
        raise UserError("an uplift model needs at least one feature: give --features A,B")
    if bags < 2:
        raise UserError(f"an uplift model needs at least 2 bags for its intervals; got {bags}")
    if not 0 < level < 1:
        raise UserError(f"the interval level must lie between 0 and 1; got {level}")
    regressor(learner, seed)  # an unknown learner fails before any work
    frame = read_table(data)
    question = Question(treatment, outcome, tuple(features))
    checked = question.prepare(frame)
    if not checked.binary:
        raise UserError(
            f"an uplift model compares treated and untreated rows, so the treatment "
            f"{treatment!r} must be binary (0/1); it takes {len(np.unique(checked.t)):,} values"
        )
    spec = ModelSpec(
        name=name,
        version=next_version(Path(repository), name),
        task="uplift",
        format="uplift",
        artifact="model.skops",
        description=description
        or f"Effect of {treatment} on {outcome} for each row (a bagged T-learner, {learner}).",
        inputs=[_feature(frame[f], f) for f in features],
        outputs=[Output(name=k, description=v) for k, v in OUTPUTS.items()],
        runtime={"treatment": treatment, "outcome": outcome, "level": level, "learner": learner},
    )
    x = encode(spec, frame[list(features)])
    models = _fit(x, checked.t, checked.y, learner, bags, seed)
    return _write(Path(repository), spec, frame[list(features)], models)


def next_version(repository: Path, name: str) -> str:
    """One more than the highest numbered version of ``name``, or ``1``."""
    folder = repository / name
    numbers = [
        int(v.name) for v in folder.glob("*") if v.name.isdigit() and (v / SPEC_FILE).is_file()
    ]
    return str(max(numbers, default=0) + 1)


def _feature(column: pd.Series, name: str) -> Feature:
    if column.dtype == bool:
        return Feature(name=name, dtype="bool")
    if pd.api.types.is_integer_dtype(column):
        return Feature(name=name, dtype="int")
    if pd.api.types.is_numeric_dtype(column):
        return Feature(name=name, dtype="float")
    return Feature(name=name, dtype="category", categories=sorted(map(str, column.unique())))


def _fit(
    x: np.ndarray, t: np.ndarray, y: np.ndarray, learner: str, bags: int, seed: int
) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    arms = {"treated": np.flatnonzero(t == 1), "control": np.flatnonzero(t == 0)}
    models: dict[str, list[Any]] = {"treated": [], "control": []}
    for bag in range(bags):
        for arm, rows in arms.items():
            drawn = rng.choice(rows, size=len(rows))
            models[arm].append(regressor(learner, seed + bag).fit(x[drawn], y[drawn]))
    return models


def _write(
    repository: Path, spec: ModelSpec, train: pd.DataFrame, models: dict[str, list[Any]]
) -> ModelSpec:
    import skops.io as sio

    folder = repository / spec.name / spec.version
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec.artifact
    sio.dump(models, path)
    vouched = sorted(sio.get_untrusted_types(file=path))  # we wrote it, so we vouch for its types
    runtime = {**spec.runtime, **({"trusted_types": vouched} if vouched else {})}
    spec = ModelSpec.model_validate(
        {
            **spec.model_dump(),
            "runtime": runtime,
            "sha256": file_sha256(path),
            "reference": compute_reference(train, spec.inputs),
        }
    )
    write_spec(spec, folder)
    return spec
