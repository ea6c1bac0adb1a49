"""The causal question asked of a table: which column is the treatment, the outcome, the
confounders and the instrument; checked once and encoded as the numbers every method uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd

from foretell.errors import UserError

Effect = Literal["ate", "att", "atc"]
EFFECTS: tuple[str, ...] = get_args(Effect)
EFFECT_NAMES = {
    "ate": "average treatment effect (ATE)",
    "att": "average effect on the treated (ATT)",
    "atc": "average effect on the controls (ATC)",
}
#: A category confounder with more levels than this is refused: one-hot columns would swamp it.
MAX_LEVELS = 50


@dataclass(frozen=True)
class Data:
    """The numbers a method works on, one row per unit.

    ``t`` is the treatment (0/1 when ``binary``), ``y`` the outcome, ``x`` the confounders
    (categories one-hot encoded; ``names`` labels its columns) and ``z`` the instrument.
    """

    t: np.ndarray
    y: np.ndarray
    x: np.ndarray
    z: np.ndarray | None
    names: tuple[str, ...]
    binary: bool

    def __len__(self) -> int:
        return len(self.y)

    def take(self, rows: np.ndarray) -> Data:
        """The same data restricted to (or resampled at) ``rows``."""
        z = None if self.z is None else self.z[rows]
        return dataclasses.replace(self, t=self.t[rows], y=self.y[rows], x=self.x[rows], z=z)

    def with_treatment(self, t: np.ndarray) -> Data:
        return dataclasses.replace(self, t=t)

    def with_confounder(self, column: np.ndarray, name: str) -> Data:
        x = np.column_stack([self.x, column])
        return dataclasses.replace(self, x=x, names=(*self.names, name))

    def rows(self, effect: str) -> np.ndarray:
        """Whose effect is averaged: every row, the treated or the controls."""
        chosen: np.ndarray = np.ones(len(self.t), dtype=bool)
        if effect == "att":
            chosen = self.t == 1
        elif effect == "atc":
            chosen = self.t == 0
        return chosen


@dataclass(frozen=True)
class Question:
    """What is asked: the effect of ``treatment`` on ``outcome``, adjusting for ``confounders``."""

    treatment: str
    outcome: str
    confounders: tuple[str, ...] = ()
    instrument: str | None = None
    effect: Effect = "ate"

    def __post_init__(self) -> None:
        if self.effect not in EFFECTS:
            raise UserError(f"the effect must be one of {', '.join(EFFECTS)}; got {self.effect!r}")
        roles = [self.treatment, self.outcome, *self.confounders]
        roles += [self.instrument] if self.instrument else []
        repeated = sorted({r for r in roles if roles.count(r) > 1})
        if repeated:
            raise UserError(
                "each column plays one role (treatment, outcome, confounder or feature, "
                f"instrument); {repeated} appear more than once"
            )

    @property
    def columns(self) -> list[str]:
        return [self.treatment, self.outcome, *self.confounders] + (
            [self.instrument] if self.instrument else []
        )

    def prepare(self, frame: pd.DataFrame) -> Data:
        """Checks the columns of ``frame`` and encodes them; every problem is a UserError."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            shown = ", ".join(map(str, list(frame.columns)[:30]))
            raise UserError(
                f"column {missing[0]!r} is not in the data; expected one of its columns: {shown}"
            )
        if len(frame) < 10:
            raise UserError(f"a causal estimate needs at least 10 rows; the data has {len(frame)}")
        for column in self.columns:
            gaps = int(frame[column].isna().sum())
            if gaps:
                raise UserError(
                    f"column {column!r} has {gaps:,} missing values (of {len(frame):,} rows); "
                    "causal estimates need complete rows: fill or drop them first"
                )
        t, binary = _treatment(frame[self.treatment], self.treatment)
        if not binary and self.effect != "ate":
            raise UserError(
                f"--effect {self.effect} compares the treated with the controls, so the "
                f"treatment must be binary (0/1); {self.treatment!r} takes "
                f"{frame[self.treatment].nunique():,} values"
            )
        y = _numbers(frame[self.outcome], "outcome", self.outcome)
        z = (
            _numbers(frame[self.instrument], "instrument", self.instrument)
            if self.instrument
            else None
        )
        x, names = _confounders(frame, self.confounders)
        return Data(t=t, y=y, x=x, z=z, names=names, binary=binary)


def read_table(data: pd.DataFrame | str) -> pd.DataFrame:
    """``data`` itself, or every row of the source URI ``data`` (a file or a SQL table)."""
    if isinstance(data, pd.DataFrame):
        return data
    from foretell.sources import open_source

    source = open_source(data)
    source.columns()  # a missing file or table fails here, with the source's own message
    chunks = list(source.chunks(100_000))
    if not chunks:
        raise UserError(f"source '{data}' has no rows")
    return pd.concat(chunks, ignore_index=True)


def _numbers(column: pd.Series, role: str, name: str) -> np.ndarray:
    if column.dtype == bool or pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64)
    example = column.iloc[0]
    raise UserError(
        f"the {role} {name!r} must be numeric; got {column.dtype} values such as {example!r}"
    )


def _treatment(column: pd.Series, name: str) -> tuple[np.ndarray, bool]:
    """The treatment as floats, and whether it is binary (only 0 and 1)."""
    values = column.dropna().unique()
    if not (column.dtype == bool or pd.api.types.is_numeric_dtype(column)):
        shown = sorted(map(str, values))[:5]
        raise UserError(
            f"the treatment {name!r} must be 0/1 (or true/false, or a number for a dose); got "
            f"{column.dtype} values {shown}: recode it as 0 (control) and 1 (treated)"
        )
    t = column.to_numpy(dtype=np.float64)
    levels = set(np.unique(t).tolist())
    if len(levels) < 2:
        raise UserError(
            f"the treatment {name!r} takes the single value {levels.pop()!r}: with no contrast "
            "between treated and controls there is no effect to estimate"
        )
    if len(levels) == 2 and levels != {0.0, 1.0}:
        raise UserError(
            f"the treatment {name!r} must be coded 0 (control) and 1 (treated); got the values "
            f"{sorted(levels)}"
        )
    binary = levels == {0.0, 1.0}
    if binary:
        for arm, label in ((1.0, "treated"), (0.0, "control")):
            if int((t == arm).sum()) < 2:
                raise UserError(
                    f"the treatment {name!r} has {int((t == arm).sum())} {label} rows; each group "
                    "needs at least 2"
                )
    return t, binary


def _confounders(frame: pd.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Numbers as they are, booleans as 0/1, categories one-hot with their first level dropped."""
    columns: list[np.ndarray] = []
    labels: list[str] = []
    for name in names:
        column = frame[name]
        if column.dtype == bool or pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype=np.float64)
            if np.ptp(values) == 0:
                raise UserError(
                    f"confounder {name!r} is constant ({values[0]!r}): a column that never varies "
                    "cannot confound; leave it out"
                )
            columns.append(values)
            labels.append(name)
            continue
        levels = sorted(map(str, column.unique()))
        if len(levels) < 2:
            raise UserError(
                f"confounder {name!r} is constant ({levels[0]!r}): a column that never varies "
                "cannot confound; leave it out"
            )
        if len(levels) > MAX_LEVELS:
            raise UserError(
                f"confounder {name!r} has {len(levels):,} distinct values; a category confounder "
                f"may have at most {MAX_LEVELS}: group its rare values or give it as a number"
            )
        text = column.astype(str).to_numpy()
        for level in levels[1:]:
            columns.append((text == level).astype(np.float64))
            labels.append(f"{name}={level}")
    x = np.column_stack(columns) if columns else np.empty((len(frame), 0))
    return x, tuple(labels)
