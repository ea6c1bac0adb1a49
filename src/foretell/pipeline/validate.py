"""Validation: checks every column against the input schema and lists every broken rule."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from foretell.errors import Violation
from foretell.pipeline.rows import Columns
from foretell.repository.spec import Feature, ModelSpec

#: Rules that leave a value usable: a model that flags instead of rejecting still predicts.
SOFT_RULES = frozenset({"range", "category"})
_NUMBER_TYPES = frozenset({int, float, np.float64, np.float32, np.int64, np.int32})


@dataclass
class Checked:
    """The batch after validation: clean columns and the violations of each row."""

    columns: dict[str, Any]
    length: int
    violations: dict[int, list[Violation]] = field(default_factory=dict)
    #: Every input as one (rows, features) float64 array, when all are numbers and clean.
    matrix: np.ndarray | None = None

    def unusable(self) -> np.ndarray:
        """Boolean mask of rows with a violation that leaves them impossible to predict."""
        mask = np.zeros(self.length, dtype=bool)
        for row, found in self.violations.items():
            mask[row] = any(v.rule not in SOFT_RULES for v in found)
        return mask

    def all_violations(self) -> list[Violation]:
        return in_row_order(self.violations)


def in_row_order(violations: dict[int, list[Violation]]) -> list[Violation]:
    """Every violation of a batch, row by row."""
    return [v for row in sorted(violations) for v in violations[row]]


#: Shows a received value briefly, however large or deeply nested it is.
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 3, 40, 40


def _show(value: Any) -> str:
    text = _BRIEF.repr(value) if not isinstance(value, str) else f'"{value[:40]}"'
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(f: Feature) -> str:
    kind = {"int": "an integer", "bool": "true or false"}.get(f.dtype, "a number")
    if f.min is not None or f.max is not None:
        low = "-inf" if f.min is None else f"{f.min:g}"
        high = "inf" if f.max is None else f"{f.max:g}"
        return f"{kind} in [{low}, {high}]"
    return kind


class Validator:
    """Checks batches against a spec's inputs; the rules come from the spec alone."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        numeric = [f for f in spec.inputs if f.dtype in ("float", "int", "bool")]
        self._numeric = numeric
        self._numeric_names = [f.name for f in numeric]
        #: Every input is a number: a clean numeric batch needs no per-column checks.
        self._all_numeric = len(numeric) == len(spec.inputs)
        self._low = np.array([-np.inf if f.min is None else f.min for f in numeric])
        self._high = np.array([np.inf if f.max is None else f.max for f in numeric])
        # finite bounds already refuse infinities (and NaN fails every comparison)
        self._bounded = bool(np.isfinite(self._low).all() and np.isfinite(self._high).all())
        self._ints = np.flatnonzero([f.dtype == "int" for f in numeric])
        self._bools = np.flatnonzero([f.dtype == "bool" for f in numeric])
        self._categories = {f.name: set(f.categories or []) for f in spec.inputs}

    def check(self, batch: Columns) -> Checked:
        checked = Checked({}, len(batch))
        clean = self._clean_numbers(batch, checked)
        if self._all_numeric and clean:  # every input checked at once
            checked.columns = clean
            return checked
        for f in self.spec.inputs:
            column = batch.values[f.name]
            if f.name in clean:
                checked.columns[f.name] = clean[f.name]
            elif f.dtype in ("float", "int", "bool"):
                checked.columns[f.name] = self._numbers(f, column, checked)
            else:
                checked.columns[f.name] = self._objects(f, column, checked)
        return checked

    def _clean_numbers(self, batch: Columns, checked: Checked) -> dict[str, np.ndarray]:
        """The numeric columns as float64, checked in one pass over the whole batch, when every
        value is a number and breaks no rule (the usual case for a served model). Else nothing:
        the per-column checks then name each broken rule."""
        if not self._numeric:
            return {}
        given = batch.matrix if self._all_numeric else None
        if given is not None and given.dtype.kind in "fiu":
            matrix = given.astype(np.float64, copy=False)
        else:
            arrays = []
            for f in self._numeric:
                values = _as_float_array(batch.values[f.name], allow_bool=f.dtype == "bool")
                if values is None:
                    return {}
                arrays.append(values)
            matrix = np.column_stack(arrays)
        if not self._breaks_no_rule(matrix):
            return {}
        if self._all_numeric:
            checked.matrix = matrix
        if matrix is given:  # the batch's columns are already views of it
            return dict(batch.values)
        return dict(zip(self._numeric_names, matrix.T, strict=True))

    def _breaks_no_rule(self, matrix: np.ndarray) -> bool:
        """Whether every value of the (rows, numeric features) ``matrix`` is allowed."""
        # NaN fails both comparisons, so a missing value sends the batch the slow way too
        if not ((matrix >= self._low) & (matrix <= self._high)).all():
            return False
        if not self._bounded and not np.isfinite(matrix).all():
            return False
        if len(self._ints):
            ints = matrix.take(self._ints, axis=1)
            if not (ints == np.rint(ints)).all():  # rint: what round does with 0 decimals
                return False
        if len(self._bools):
            bools = matrix.take(self._bools, axis=1)
            return bool(((bools == 0) | (bools == 1)).all())
        return True

    def _add(self, checked: Checked, row: int, f: Feature, rule: str, message: str) -> None:
        checked.violations.setdefault(row, []).append(Violation(row, f.name, rule, message))

    def _numbers(self, f: Feature, column: Any, checked: Checked) -> np.ndarray:
        values = _as_float_array(column, allow_bool=f.dtype == "bool")
        if values is None:  # the slow path names each bad value
            values = np.empty(len(column), dtype=np.float64)
            for i, v in enumerate(column):
                if _is_missing(v):
                    values[i] = np.nan
                elif _is_number(v, allow_bool=f.dtype == "bool"):
                    values[i] = float(v)
                else:
                    values[i] = np.nan
                    self._add(
                        checked,
                        i,
                        f,
                        "type",
                        f"feature '{f.name}' must be {_describe(f)}; got {_show(v)}",
                    )
                    continue
        missing = np.isnan(values)
        for idx in np.flatnonzero(missing):
            if not f.nullable and not any(
                v.field == f.name for v in checked.violations.get(int(idx), [])
            ):
                self._add(checked, int(idx), f, "required", f"feature '{f.name}' is required")
        if f.impute is not None:
            values = np.where(missing, float(f.impute), values)
        present = ~np.isnan(values)
        bad = np.isinf(values)
        for idx in np.flatnonzero(bad):
            self._add(checked, int(idx), f, "finite", f"feature '{f.name}' must be finite")
        ok = present & ~bad
        if f.dtype == "int":
            for idx in np.flatnonzero(ok & (values != np.round(values))):
                self._add(
                    checked,
                    int(idx),
                    f,
                    "type",
                    f"feature '{f.name}' must be {_describe(f)}; got {values[idx]:g}",
                )
        if f.dtype == "bool":
            for idx in np.flatnonzero(ok & (values != 0) & (values != 1)):
                self._add(checked, int(idx), f, "type", f"feature '{f.name}' must be true or false")
        low = -np.inf if f.min is None else f.min
        high = np.inf if f.max is None else f.max
        for idx in np.flatnonzero(ok & ((values < low) | (values > high))):
            self._add(
                checked,
                int(idx),
                f,
                "range",
                f"feature '{f.name}' must be {_describe(f)}; got {values[idx]:g}",
            )
        return values

    def _objects(self, f: Feature, column: Any, checked: Checked) -> list[Any]:
        allowed = self._categories[f.name]
        if self._clean_text(f, column, allowed):
            return list(column)
        clean: list[Any] = []
        for i, v in enumerate(column):
            if _is_missing(v):
                if f.impute is not None:
                    v = f.impute
                elif not f.nullable:
                    self._add(checked, i, f, "required", f"feature '{f.name}' is required")
                    clean.append(None)
                    continue
                else:
                    clean.append([] if f.dtype == "list" else None)
                    continue
            if f.dtype == "text":
                v = self._text(f, i, v, checked)
            elif f.dtype == "category":
                v = self._category(f, i, v, allowed, checked)
            else:
                v = self._items(f, i, v, allowed, checked)
            clean.append(v)
        return clean

    @staticmethod
    def _clean_text(f: Feature, column: Any, allowed: set[str]) -> bool:
        """Whether every value of a category or text column is a string (exactly: the checks
        keep those as they are) that breaks no rule, so the column needs no per-value checks."""
        if f.dtype == "list" or not all(type(v) is str for v in column):
            return False
        if f.dtype == "text":
            return max(map(len, column), default=0) <= f.max_length
        return allowed.issuperset(column)

    def _text(self, f: Feature, i: int, v: Any, checked: Checked) -> str | None:
        if not isinstance(v, str):
            self._add(checked, i, f, "type", f"feature '{f.name}' must be text; got {_show(v)}")
            return None
        if len(v) > f.max_length:
            self._add(
                checked,
                i,
                f,
                "max_length",
                f"feature '{f.name}' must be at most {f.max_length} characters; got {len(v)}",
            )
            return None
        return v

    def _category(self, f: Feature, i: int, v: Any, allowed: set[str], checked: Checked) -> Any:
        if isinstance(v, bool) or not isinstance(v, str | int):
            self._add(
                checked, i, f, "type", f"feature '{f.name}' must be a category; got {_show(v)}"
            )
            return None
        v = str(v)
        if v not in allowed:
            self._add(
                checked,
                i,
                f,
                "category",
                f"feature '{f.name}' must be one of {_choices(f)}; got {_show(v)}",
            )
        return v

    def _items(self, f: Feature, i: int, v: Any, allowed: set[str], checked: Checked) -> Any:
        if not isinstance(v, list | tuple | np.ndarray) or not all(isinstance(x, str) for x in v):
            self._add(
                checked,
                i,
                f,
                "type",
                f"feature '{f.name}' must be a list of item ids (strings); got {_show(v)}",
            )
            return None
        unknown = [x for x in v if x not in allowed]
        if unknown:
            self._add(
                checked,
                i,
                f,
                "category",
                f"feature '{f.name}' has unknown items {_show(unknown)}",
            )
        return list(v)


def _choices(f: Feature) -> str:
    cats = f.categories or []
    shown = ", ".join(f'"{c}"' for c in cats[:8])
    return f"[{shown}{', ...' if len(cats) > 8 else ''}]"


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _is_number(v: Any, allow_bool: bool) -> bool:
    if isinstance(v, bool | np.bool_):
        return allow_bool
    return isinstance(v, int | float | np.integer | np.floating)


def _as_float_array(column: Any, allow_bool: bool) -> np.ndarray | None:
    """The column as float64 when every value is a number or missing, else None."""
    if isinstance(column, pd.Series):
        if pd.api.types.is_bool_dtype(column.dtype) and not allow_bool:
            return None
        if pd.api.types.is_numeric_dtype(column.dtype):
            return column.to_numpy(dtype=np.float64, na_value=np.nan)
        column = column.tolist()
    if isinstance(column, np.ndarray):
        if column.dtype.kind in "fiu" or (column.dtype.kind == "b" and allow_bool):
            return column.astype(np.float64)
        column = column.tolist()
    kinds = {type(v) for v in column}
    if allow_bool:
        kinds.discard(bool)
    kinds.discard(type(None))
    if kinds <= _NUMBER_TYPES:
        return np.array([np.nan if v is None else v for v in column], dtype=np.float64)
    return None
