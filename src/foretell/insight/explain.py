"""Explanations: per-prediction feature attributions with SHAP, and global importance.

An explanation says how much each input moved one prediction away from the *base value*, the
model's average output over a background sample stored with the model version. Attributions
add up: ``base_value + sum(attributions) == prediction`` (checked on every explained batch).
What is explained: a regressor's ``value``, an anomaly detector's ``score``, and a classifier's
probability of the label it predicted for that row.

Algorithms (``insight.explain.algorithm`` in model.yaml):

- ``tree``: SHAP's TreeExplainer (interventional, against the background) on the runtime's own
  XGBoost or LightGBM booster or scikit-learn tree ensemble: exact and fast. It sees the encoded
  columns, so a one-hot category's attribution is the sum over its columns.
- ``permutation``: SHAP's PermutationExplainer over the inputs as the user knows them, seeded
  afresh for every row (so a row's attributions do not depend on the rows explained with it):
  sampled permutations whose attributions still add up exactly. It masks whole inputs (a
  category is one input, whatever its encoding) and runs the model's own preprocessing and
  forward pass on each masked row: about ``evaluations`` x background rows per explained row.
- ``auto`` picks ``tree`` when the model is a tree ensemble SHAP reads, else ``permutation``.

(SHAP's ExactExplainer is left out: it compiles with numba on first use, tens of seconds in
every new process.)
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from foretell.errors import ForetellError, MissingExtraError, ModelLoadError, UserError
from foretell.pipeline.preprocess import encoded_names
from foretell.pipeline.rows import to_columns
from foretell.repository.spec import EXPLAINED_TASKS, ModelSpec, read_spec, write_spec
from foretell.runtimes.base import canonical

if TYPE_CHECKING:
    from foretell.pipeline.model import Model

#: The file a background sample is stored in, inside the model version's folder.
BACKGROUND_FILE = "background.parquet"
#: SHAP's permutation explainer draws from numpy's global generator: one seeded run at a time.
_GLOBAL_RANDOM = threading.Lock()


def check_explainable(spec: ModelSpec, background: bool = True) -> None:
    """Raises UserError, saying how to fix it, when ``spec``'s model cannot explain (for its
    task, or, with ``background``, for want of a background sample)."""
    if spec.task not in EXPLAINED_TASKS:
        raise UserError(
            f"explanations apply to {', '.join(EXPLAINED_TASKS)} models; '{spec.name}' is a "
            f"{spec.task} model"
        )
    if background and spec.insight.explain is None:
        raise UserError(
            f"model '{spec.name}' version {spec.version} has no background sample, so it cannot "
            "explain its predictions; add one (typical rows, e.g. from the training data): "
            f"`foretell calibrate {spec.name} --background rows.parquet`"
        )


def _shap() -> Any:
    try:
        with warnings.catch_warnings():  # shap 0.51 calls matplotlib methods marked for removal
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            import shap
    except ImportError:
        raise MissingExtraError("shap", "insight", "explaining predictions") from None
    return shap


class Explainer:
    """Attributions for one loaded model, against its background sample."""

    def __init__(self, model: Model) -> None:
        check_explainable(model.spec)
        settings = model.spec.insight.explain
        assert settings is not None
        self.model, self.settings, self.spec = model, settings, model.spec
        self.features = model.spec.inputs
        self.shap = _shap()
        frame = _read(model, settings.background)
        checked = model.validator.check(to_columns(frame, self.spec.feature_names))
        if checked.violations:
            first = checked.all_violations()[0]
            raise ModelLoadError(
                f"{model.name}/{model.version}: background row {first.row} breaks the input "
                f"schema: {first.message}"
            )
        everything = np.arange(checked.length)
        self.background_x = model.preprocessor.transform(checked.columns, everything)
        self.background_z = self._codes(checked.columns, everything)
        self.tree = self._tree_explainer()
        # encoded column -> input: a one-hot category's columns all belong to the category
        owners = [name.split("=", 1)[0] for name in encoded_names(self.spec)]
        names = [f.name for f in self.features]
        self.grouping = np.array([[owner == n for n in names] for owner in owners], dtype=float)

    def _tree_explainer(self) -> Any:
        wanted = self.settings.algorithm
        if wanted not in ("auto", "tree"):
            return None
        runtime = self.model.runtime
        native = getattr(runtime, "booster", None) or getattr(runtime, "estimator", None)
        if native is None:
            reason = "its runtime holds no tree model that SHAP reads"
        elif self.spec.task != "anomaly_detection":  # TreeSHAP explains path lengths, not scores
            try:
                return self.shap.TreeExplainer(
                    native,
                    data=self.background_x,
                    feature_perturbation="interventional",
                    model_output="probability" if self.spec.task == "classification" else "raw",
                )
            except Exception as exc:  # SHAP signals "not a tree model it reads" in many ways
                reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "an anomaly score is not what TreeSHAP explains"
        if wanted == "tree":
            raise ModelLoadError(
                f"{self.spec.name}/{self.spec.version}: 'insight.explain.algorithm' is 'tree', "
                f"but SHAP's tree explainer cannot read this {self.spec.format} model ({reason}); "
                "use 'auto'"
            )
        return None

    def columns(
        self, x: np.ndarray, inputs: dict[str, Any], rows: np.ndarray, outputs: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """``base_value`` and ``attribution[<input>]`` columns for the scored ``rows``.

        ``x`` is their encoded input, ``inputs`` the checked input columns of the whole batch
        and ``outputs`` the pipeline's output columns for the rows.
        """
        predicted, chosen = self._explained(outputs)
        if self.tree is not None:
            values, base = self._tree_values(x)
        else:
            values, base = self._sampled_values(self._codes(inputs, rows))
        n = np.arange(len(rows))
        attributions = values[n, :, chosen]
        base_value = base[n, chosen]
        added = base_value + attributions.sum(axis=1)
        if not np.allclose(added, predicted, rtol=1e-5, atol=1e-6):
            worst = int(np.argmax(np.abs(added - predicted)))
            raise ForetellError(
                f"{self.spec.name}/{self.spec.version}: attributions do not add up for row "
                f"{int(rows[worst])}: base value plus attributions is {added[worst]!r}, the "
                f"prediction {predicted[worst]!r} (the explainer reads the model differently "
                "from its runtime)"
            )
        named = {f"attribution[{f.name}]": attributions[:, j] for j, f in enumerate(self.features)}
        return {"base_value": base_value, **named}

    def _explained(self, outputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The explained number per row, and which model output (class) it is."""
        if self.spec.task == "classification":
            probabilities = outputs["probabilities"]
            chosen = probabilities.argmax(axis=1)
            return probabilities[np.arange(len(chosen)), chosen], chosen
        value = outputs["value" if self.spec.task == "regression" else "score"]
        return np.asarray(value, dtype=np.float64), np.zeros(len(value), dtype=np.int64)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """The model's explainable outputs for encoded rows: (rows, classes or 1)."""
        raw = canonical(self.spec.task, self.model.runtime.predict(x))
        if self.spec.task == "classification":
            return raw["probabilities"]
        return raw["value" if self.spec.task == "regression" else "score"].reshape(-1, 1)

    def _tree_values(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(self.tree.shap_values(x), dtype=np.float64)
        base = np.atleast_1d(np.asarray(self.tree.expected_value, dtype=np.float64))
        if values.ndim == 2:
            values = values[:, :, None]
        if self.spec.task == "classification" and values.shape[2] == 1:
            # a binary model explains its positive class; the other class is the complement
            values = np.concatenate([-values, values], axis=2)
            base = np.array([1.0 - base[0], base[0]])
        grouped = np.einsum("nek,em->nmk", values, self.grouping)
        return grouped, np.broadcast_to(base, (len(x), len(base)))

    def _sampled_values(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Permutation SHAP over the inputs, ``z`` coded as :meth:`_codes` does."""
        masker = self.shap.maskers.Independent(
            self.background_z, max_samples=len(self.background_z)
        )

        def forward(codes: np.ndarray) -> np.ndarray:
            return self._forward(self._encode(codes))

        evaluations = max(self.settings.evaluations, 2 * len(self.features) + 1)
        seed = self.settings.seed
        with _GLOBAL_RANDOM:
            explainer = self.shap.PermutationExplainer(forward, masker, seed=seed)
            parts = []
            for i in range(len(z)):
                # every row from the seed: a row's attributions are the same whichever rows
                # are explained with it (its own request's, or a merged batch's)
                np.random.seed(seed)
                parts.append(explainer(z[i : i + 1], max_evals=evaluations, silent=True))
        values = np.concatenate([np.asarray(p.values, dtype=np.float64) for p in parts])
        base = np.concatenate([np.asarray(p.base_values, dtype=np.float64) for p in parts])
        if values.ndim == 2:
            values, base = values[:, :, None], base.reshape(-1, 1)
        return values, base

    def _codes(self, columns: dict[str, Any], rows: np.ndarray) -> np.ndarray:
        """The inputs of ``rows`` as numbers: a category by its position in the categories."""
        coded: list[Any] = []
        for f in self.features:
            column = columns[f.name]
            values = column[rows] if isinstance(column, np.ndarray) else [column[i] for i in rows]
            if f.dtype == "category":
                index = {c: float(i) for i, c in enumerate(f.categories or [])}
                coded.append([index.get(v, np.nan) for v in values])
            else:
                coded.append(np.asarray(values, dtype=np.float64))
        return np.column_stack(coded).astype(np.float64)

    def _encode(self, codes: np.ndarray) -> np.ndarray:
        """The model's encoded input for rows coded as :meth:`_codes` does."""
        columns: dict[str, Any] = {}
        for j, f in enumerate(self.features):
            if f.dtype == "category":
                categories = f.categories or []
                columns[f.name] = [None if np.isnan(c) else categories[int(c)] for c in codes[:, j]]
            else:
                columns[f.name] = codes[:, j]
        return self.model.preprocessor.transform(columns, np.arange(len(codes)))


def _read(model: Model, name: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(model.folder / name)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{model.name}/{model.version}: background file '{name}' cannot be read: {exc}"
        ) from None


def set_background(
    folder: str | Path, data: pd.DataFrame, rows: int = 100, seed: int = 0
) -> ModelSpec:
    """Stores a sample of ``rows`` rows of ``data`` as the background of the model version in
    ``folder``, and checks that the model can explain a row against it."""
    from foretell.pipeline.model import Model

    folder = Path(folder)
    spec = read_spec(folder)
    check_explainable(spec, background=False)
    sample = data.sample(n=min(rows, len(data)), random_state=seed) if len(data) > rows else data
    sample = sample.reset_index(drop=True)
    sample.to_parquet(folder / BACKGROUND_FILE, index=False)
    settings = {**(spec.insight.explain.model_dump() if spec.insight.explain else {})}
    settings["background"] = BACKGROUND_FILE
    insight = {**spec.insight.model_dump(), "explain": settings}
    updated = ModelSpec.model_validate({**spec.model_dump(), "insight": insight})
    Model.from_folder(folder, updated).run(sample.head(1), explain=True)
    write_spec(updated, folder)
    return updated


def global_importance(outputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean absolute attribution per input over logged results that carry an explanation,
    largest first; None when none does."""
    explained = [
        o["explanation"]["attributions"] for o in outputs if isinstance(o.get("explanation"), dict)
    ]
    if not explained:
        return None
    means = pd.DataFrame(explained).abs().mean().sort_values(ascending=False)
    return {"rows": len(explained), "mean_abs_attribution": means.round(12).to_dict()}
