"""Conversion of a loaded scikit-learn estimator to ONNX (``compile: onnx`` in model.yaml).

onnxruntime predicts a row in microseconds where scikit-learn spends hundreds on checks and
Python calls. The converted graph serves only if it agrees with the estimator on check rows
drawn from the spec's reference statistics (or its ranges); otherwise, or when skl2onnx
cannot convert the estimator, the estimator serves and the log says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from foretell.repository.spec import Feature, ModelSpec

log = logging.getLogger("foretell.runtimes")

#: How far a converted model's answer may be from the estimator's: trees compare features in
#: float32 in ONNX, so a check row right at a split threshold may move a little.
TOLERANCE = 1e-4
#: How many check rows are drawn.
CHECK_ROWS = 256
_CONVERTIBLE = ("classification", "regression")


def converted(
    spec: ModelSpec, folder: Path, estimator: Any, method: Callable[[np.ndarray], Any]
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The estimator as an onnxruntime prediction function, or None (and a logged reason)
    when it does not convert or does not agree with ``method`` on the check rows."""
    where = f"{spec.name}/{spec.version}"
    try:
        predict = _convert(spec, estimator)
        x = check_rows(spec, folder)
        expected = np.asarray(method(x), dtype=np.float64)
        got = np.asarray(predict(x), dtype=np.float64).reshape(expected.shape)
    except Exception as exc:  # skl2onnx and onnxruntime raise their own errors
        log.warning(
            "%s: compile: onnx failed, serving the scikit-learn estimator: %s: %s",
            where,
            type(exc).__name__,
            exc,
        )
        return None
    gap = np.abs(got - expected) / (1.0 + np.abs(expected))
    if not np.all(gap <= TOLERANCE):
        row = int(np.unravel_index(np.argmax(gap), gap.shape)[0])
        log.warning(
            "%s: compile: onnx disagrees with the estimator (relative difference %.3g on check "
            "row %d, tolerance %g); serving the scikit-learn estimator",
            where,
            float(gap.max()),
            row,
            TOLERANCE,
        )
        return None
    log.info(
        "%s: compiled to ONNX; it agrees with the estimator on %d check rows (largest "
        "relative difference %.2g)",
        where,
        len(x),
        float(gap.max()),
    )
    return predict


def _convert(spec: ModelSpec, estimator: Any) -> Callable[[np.ndarray], np.ndarray]:
    if spec.task not in _CONVERTIBLE:
        raise ValueError(f"compile: onnx covers {' and '.join(_CONVERTIBLE)}, not {spec.task}")
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    width = _width(estimator)
    classifier = spec.task == "classification"
    options = {id(estimator): {"zipmap": False}} if classifier else None
    graph = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, width]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = 1
    settings.inter_op_num_threads = 1
    session = ort.InferenceSession(
        graph.SerializeToString(), settings, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    if classifier:
        output = "probabilities" if "probabilities" in names else names[-1]
    else:
        output = names[0]

    def predict(x: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(x, dtype=np.float32)
        (result,) = session.run([output], {"input": feed})
        return np.asarray(result)

    return predict


def _width(estimator: Any) -> int:
    width = getattr(estimator, "n_features_in_", None)
    if width is None:
        raise ValueError("the estimator does not say how many features it takes")
    return int(width)


def check_rows(spec: ModelSpec, folder: Path) -> np.ndarray:
    """Encoded rows spread over each feature's training values (its reference quantiles or
    category frequencies) or, without reference statistics, over its allowed range."""
    from foretell.pipeline.preprocess import encode

    rng = np.random.default_rng(0)
    columns = {f.name: _values(spec, f, rng) for f in spec.inputs}
    return encode(spec, columns, folder)


def _values(spec: ModelSpec, f: Feature, rng: np.random.Generator) -> list[Any]:
    ref = spec.reference.features.get(f.name) if spec.reference else None
    if f.dtype in ("category", "list", "text"):
        if f.dtype != "category":
            raise ValueError(f"compile: onnx takes numeric and category inputs, not {f.dtype}")
        choices = list(ref.frequencies) if ref and ref.frequencies else list(f.categories or [])
        return [str(v) for v in rng.choice(choices, CHECK_ROWS)]
    if ref is not None and ref.quantiles:
        values = rng.choice(np.array(list(ref.quantiles.values())), CHECK_ROWS)
    else:
        low = -1.0 if f.min is None else f.min
        high = low + 2.0 if f.max is None else f.max
        values = rng.uniform(low, high, CHECK_ROWS)
    values = np.clip(values, f.min, f.max) if f.min is not None or f.max is not None else values
    if f.dtype == "bool":
        return [bool(v) for v in rng.integers(0, 2, CHECK_ROWS)]
    if f.dtype == "int":
        return [int(v) for v in np.round(values)]
    return [float(v) for v in values]
