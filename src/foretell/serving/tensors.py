"""Tensors of the Open Inference Protocol: datatypes, and their JSON and binary encodings."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foretell.errors import InputFormatError, TooLargeError

#: The most dimensions a tensor may have (foretell's models take one or two).
MAX_DIMENSIONS = 8
#: The most elements one tensor may claim: no tensor that fits in a 64 MiB message has more,
#: and a shape claiming more is refused before anything is allocated for it.
MAX_ELEMENTS = 64 * 1024 * 1024

#: Open Inference Protocol datatype -> numpy dtype (little-endian); BYTES is an object array.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}


@dataclass
class Tensor:
    """A named tensor: ``data`` is a numpy array of ``shape`` (BYTES elements are ``bytes``,
    or ``str`` in outputs: UTF-8 on the wire)."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


def check_header(name: str, datatype: Any, shape: Any) -> tuple[str, list[int]]:
    """Checks a tensor's datatype and shape as sent by a caller."""
    if datatype not in DATATYPES:
        raise InputFormatError(
            f"input '{name}' has datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        )
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InputFormatError(
            f"input '{name}' needs a shape of non-negative integers; got {shape!r}"
        )
    if len(shape) > MAX_DIMENSIONS:
        raise InputFormatError(
            f"input '{name}' has {len(shape)} dimensions; at most {MAX_DIMENSIONS} are allowed"
        )
    elements = math.prod(shape)
    if elements > MAX_ELEMENTS:
        raise TooLargeError(
            f"input '{name}' has shape {list(shape)}, so {elements} elements; a tensor may have "
            f"at most {MAX_ELEMENTS}"
        )
    return str(datatype), [int(d) for d in shape]


def from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """A tensor from JSON ``data``: flat or nested lists in row-major order."""
    expected = math.prod(shape)
    if datatype != "BYTES" and isinstance(data, list):
        try:  # numbers, flat or nested evenly: numpy reads them without a loop in Python
            array = np.asarray(data, dtype=DATATYPES[datatype])
        except (TypeError, ValueError, OverflowError):
            array = None  # ragged, too deep or not numbers: the checks below say which
        if array is not None and array.size == expected:
            return array.reshape(shape)
    flat = _flatten(data)
    if len(flat) != expected:
        raise InputFormatError(
            f"input '{name}' has shape {shape}, so {expected} elements; got {len(flat)}"
        )
    if datatype == "BYTES":
        if not all(isinstance(v, str | bytes) for v in flat):
            raise InputFormatError(f"input '{name}' is BYTES, so its elements must be strings")
        out = np.empty(len(flat), dtype=object)
        out[:] = [v.encode() if isinstance(v, str) else v for v in flat]
        return out.reshape(shape)
    try:
        return np.asarray(flat, dtype=DATATYPES[datatype]).reshape(shape)
    except (TypeError, ValueError, OverflowError):
        raise InputFormatError(
            f"input '{name}' is {datatype}, but its data holds values that are not; "
            f"first values: {flat[:3]!r}"
        ) from None


def _flatten(data: Any) -> list[Any]:
    """Nested lists as one list in row-major order; a loop, not recursion, so that any depth
    of nesting is safe."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def from_bytes(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw binary form (little-endian; BYTES length-prefixed). Numbers are
    a read-only view of ``raw``, not a copy."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InputFormatError(f"input '{name}': truncated BYTES length prefix")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise InputFormatError(f"input '{name}': a BYTES element runs past the data")
            items.append(bytes(raw[offset : offset + length]))
            offset += length
        if len(items) != count:
            raise InputFormatError(
                f"input '{name}' has shape {shape}, so {count} elements; got {len(items)}"
            )
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(shape)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InputFormatError(
            f"input '{name}' is {datatype} of shape {shape}, so {count * dtype.itemsize} bytes; "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


_LENGTH = struct.Struct("<I").pack


def to_bytes(tensor: Tensor) -> bytes:
    """The raw binary form of a tensor."""
    if tensor.datatype == "BYTES":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in tensor.data.flat]
        parts: list[bytes] = [b""] * (2 * len(values))
        parts[0::2] = map(_LENGTH, map(len, values))  # each element after its 4-byte length
        parts[1::2] = values
        return b"".join(parts)
    array = np.ascontiguousarray(tensor.data, dtype=DATATYPES[tensor.datatype])
    return array.tobytes()


def to_json_data(tensor: Tensor) -> list[Any] | np.ndarray:
    """The flat, row-major JSON data of a tensor: a list of text for BYTES, else a flat numpy
    array (orjson writes it with ``OPT_SERIALIZE_NUMPY``, without a Python object per
    element)."""
    data = tensor.data
    if tensor.datatype != "BYTES":  # no copy when it already is the type, contiguous
        return np.ascontiguousarray(data, dtype=DATATYPES[tensor.datatype]).reshape(-1)
    flat: list[Any] = (data if data.ndim == 1 else data.reshape(-1)).tolist()
    if all(type(v) is str for v in flat):
        return flat
    return [
        v
        if isinstance(v, str)
        else v.decode("utf-8", "replace")
        if isinstance(v, bytes)
        else str(v)
        for v in flat
    ]
