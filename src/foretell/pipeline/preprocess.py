"""Preprocessing: declared steps, then encoding the checked columns as the model's input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from foretell.errors import ModelLoadError
from foretell.repository.spec import Feature, ModelSpec


def encoded_names(spec: ModelSpec) -> list[str]:
    """The model's input columns in order: categories one-hot, lists multi-hot, numbers as is.

    A category with ``encoding: none`` is read by preprocessing steps only, not by the model.
    """
    names: list[str] = []
    for f in spec.inputs:
        if f.encoding == "none":
            continue
        if (f.dtype == "category" and f.encoding == "one_hot") or f.dtype == "list":
            names.extend(f"{f.name}={c}" for c in f.categories or [])
        else:
            names.append(f.name)
    return names


class Preprocessor:
    """Applies the spec's steps in order and encodes rows for the forward pass."""

    def __init__(self, spec: ModelSpec, folder: Path) -> None:
        self.spec = spec
        self.histories: dict[str, dict[str, list[str]]] = {}
        for step in spec.preprocessing:
            if step.step == "user_history" and step.file:
                self.histories[step.file] = _read_history(folder, step.file, spec)
        self.text = spec.inputs[0].dtype == "text"
        #: Numbers in, the same numbers out: no steps, every input numeric.
        self.plain = not spec.preprocessing and all(
            f.dtype in ("float", "int", "bool") for f in spec.inputs
        )
        #: Per feature: the position of each of its categories among its encoded columns.
        self._index = {
            f.name: {c: i for i, c in enumerate(f.categories or [])} for f in spec.inputs
        }

    def transform(
        self, columns: dict[str, Any], rows: np.ndarray, matrix: np.ndarray | None = None
    ) -> np.ndarray:
        """The encoded input of the rows at indices ``rows``; ``matrix`` is every input as one
        (rows, features) array when the caller has it (see ``Checked.matrix``)."""
        if matrix is not None and self.plain:
            return matrix if len(rows) == len(matrix) else matrix[rows]
        if self.text:
            text = columns[self.spec.inputs[0].name]
            return np.array([text[i] or "" for i in rows], dtype=object)
        cols: dict[str, Any] = {}
        every = len(rows) == len(columns[self.spec.inputs[0].name])  # all, in order
        for f in self.spec.inputs:
            col = columns[f.name]
            if every:  # the steps below make new columns, never change these
                cols[f.name] = col
            else:
                cols[f.name] = col[rows] if isinstance(col, np.ndarray) else [col[i] for i in rows]
        for step in self.spec.preprocessing:
            if step.step == "log1p":
                for name in step.features:
                    cols[name] = np.log1p(np.maximum(cols[name], 0.0))
            elif step.step == "clip":
                for name in step.features:
                    f = self._feature(name)
                    low = -np.inf if f.min is None else f.min
                    high = np.inf if f.max is None else f.max
                    cols[name] = np.clip(cols[name], low, high)
            elif step.step == "user_history" and step.source and step.file:
                history = self.histories[step.file]
                users = cols[step.source]
                for name in step.features:
                    cols[name] = [
                        sorted({*(items or []), *history.get(str(u), [])})
                        for u, items in zip(users, cols[name], strict=True)
                    ]
        encoded = [self._encode(f, cols[f.name]) for f in self.spec.inputs if f.encoding != "none"]
        return np.concatenate(encoded, axis=1)

    def _feature(self, name: str) -> Feature:
        return next(f for f in self.spec.inputs if f.name == name)

    def _encode(self, f: Feature, col: Any) -> np.ndarray:
        n = len(col)
        if f.dtype in ("float", "int", "bool"):
            return np.asarray(col, dtype=np.float64).reshape(n, 1)
        index = self._index[f.name]
        if f.dtype == "category" and f.encoding == "ordinal":
            return np.array([index.get(v, np.nan) for v in col], dtype=np.float64).reshape(n, 1)
        out = np.zeros((n, len(f.categories or [])), dtype=np.float64)
        for row, value in enumerate(col):
            for item in value if isinstance(value, list) else [value]:
                j = index.get(item)
                if j is not None:
                    out[row, j] = 1.0
        return out


def _read_history(folder: Path, name: str, spec: ModelSpec) -> dict[str, list[str]]:
    path = folder / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{spec.name}/{spec.version}: user history '{name}' cannot be read: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{spec.name}: user history '{name}' must map user ids to item lists")
    return {str(k): [str(x) for x in v] for k, v in data.items()}


def encode(spec: ModelSpec, rows: Any, folder: Path | None = None) -> np.ndarray:
    """Encodes training rows exactly as serving will: use it to build a model's training matrix.

    ``rows`` is anything ``Model.predict`` accepts; rows that break the schema raise.
    """
    from foretell.errors import ValidationError
    from foretell.pipeline.rows import to_columns
    from foretell.pipeline.validate import Validator

    checked = Validator(spec).check(to_columns(rows, spec.feature_names))
    if checked.violations:
        raise ValidationError(checked.all_violations())
    return Preprocessor(spec, folder or Path(".")).transform(
        checked.columns, np.arange(checked.length)
    )
