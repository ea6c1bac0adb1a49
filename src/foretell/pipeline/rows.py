"""Turns what callers send (dicts, lists, DataFrames, arrays) into one column per feature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from foretell.errors import InputFormatError


class Columns:
    """A batch as columns: ``values[name]`` is a list, or an array when it came as one."""

    def __init__(
        self, values: dict[str, Any], length: int, matrix: np.ndarray | None = None
    ) -> None:
        self.values = values
        self.length = length
        #: The (rows, features) array the columns are views of, when they came as one.
        self.matrix = matrix

    def __len__(self) -> int:
        return self.length


#: What ``Model.predict`` accepts: records, rows in schema order, a DataFrame, a 2-D array, a
#: mapping of feature name to a column (a list or 1-D array, all of one length), or Columns.
Rows = (
    Columns
    | Sequence[Mapping[str, Any]]
    | Sequence[Sequence[Any]]
    | pd.DataFrame
    | np.ndarray
    | Mapping[str, Sequence[Any] | np.ndarray]
)


def to_columns(rows: Rows, names: list[str]) -> Columns:
    """Splits ``rows`` into the named columns; fields not in ``names`` are ignored."""
    if isinstance(rows, Columns):
        return rows
    if isinstance(rows, pd.DataFrame):
        missing = [None] * len(rows)
        return Columns({n: rows[n] if n in rows.columns else missing for n in names}, len(rows))
    if isinstance(rows, np.ndarray):
        matrix = rows.reshape(1, -1) if rows.ndim == 1 else rows
        if matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise InputFormatError(
                f"an array input must have shape (rows, {len(names)}) in the order "
                f"{names}; got shape {rows.shape}"
            )
        # the rows of the transpose are the matrix's columns, as views
        return Columns(dict(zip(names, matrix.T, strict=True)), len(matrix), matrix)
    if isinstance(rows, Mapping):
        return _mapping_columns(rows, names)
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise InputFormatError(
            "rows must be a list of records (objects keyed by feature name) or of lists in "
            f"schema order; got {type(rows).__name__}"
        )
    records: list[Any] = list(rows)
    # a plain dict answers first: the Mapping check costs more, once per row
    if all(type(r) is dict or isinstance(r, Mapping) for r in records):
        return Columns({n: [r.get(n) for r in records] for n in names}, len(records))
    width = len(names)
    for i, r in enumerate(records):
        if isinstance(r, Mapping):
            raise InputFormatError("rows mix records and lists; send one kind")
        if isinstance(r, str | bytes) or not isinstance(r, Sequence):
            raise InputFormatError(
                f"row {i} must be a record or a list of {width} values; got {type(r).__name__}"
            )
        if len(r) != width:
            raise InputFormatError(
                f"row {i} must have {width} values in the order {names}; got {len(r)}"
            )
    return Columns({n: [r[i] for r in records] for i, n in enumerate(names)}, len(records))


def _mapping_columns(columns: Mapping[str, Any], names: list[str]) -> Columns:
    lengths = {len(c) for c in columns.values() if isinstance(c, Sequence | np.ndarray)}
    if len(lengths) != 1 or not all(
        isinstance(c, Sequence | np.ndarray) and not isinstance(c, str | bytes)
        for c in columns.values()
    ):
        raise InputFormatError(
            f"columns must all be lists or 1-D arrays of one length; got lengths {sorted(lengths)}"
        )
    (length,) = lengths
    missing = [None] * length
    return Columns({n: columns.get(n, missing) for n in names}, length)
