"""The Open Inference Protocol (KServe V2) data plane, shared by the REST and gRPC transports.

Transports turn their wire format into an :class:`InferRequest` and back from an
:class:`InferResponse`; everything protocol-level but the encoding happens here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import foretell
from foretell.errors import InputFormatError, NotFoundError
from foretell.insight.conformal import check_confidence
from foretell.pipeline.model import Batch, Model
from foretell.repository.spec import Feature, ModelSpec
from foretell.runtimes.base import UPLIFT_OUTPUTS
from foretell.serving.dataplane import DataPlane
from foretell.serving.tensors import DATATYPES, Tensor

EXTENSIONS = ["binary_tensor_data", "model_repository"]
_FEATURE_TYPES = {"float": "FP64", "int": "INT64", "bool": "BOOL"}
#: The name of the single 2-D input that carries whole rows in schema order.
ROWS_INPUT = "input"


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    model: str
    version: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self, data: bool = True) -> dict[str, Any]:
        """The JSON body; with ``data=False`` outputs carry no ``data`` (it travels as binary)."""
        from foretell.serving.tensors import to_json_data

        body: dict[str, Any] = {"model_name": self.model_name, "model_version": self.model_version}
        if self.id is not None:
            body["id"] = self.id
        if self.parameters:
            body["parameters"] = self.parameters
        outputs: list[dict[str, Any]] = []
        for t in self.outputs:
            output: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
            if t.parameters:
                output["parameters"] = t.parameters
            if data and "binary_data_size" not in t.parameters:
                output["data"] = to_json_data(t)
            outputs.append(output)
        body["outputs"] = outputs
        return body


def insight_options(parameters: Any, explain: bool = False) -> dict[str, Any]:
    """The ``explain`` and ``confidence`` a request's parameters ask for (others are ignored):
    keyword arguments for :meth:`DataPlane.predict`. ``explain`` is the default of the verb."""
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise InputFormatError(f'"parameters" must be an object; got {type(parameters).__name__}')
    asked = parameters.get("explain", explain)
    if not isinstance(asked, bool):
        raise InputFormatError(f"parameter 'explain' must be true or false; got {asked!r}")
    confidence = parameters.get("confidence")
    if confidence is not None:
        confidence = check_confidence(confidence)
    return {"explain": asked, "confidence": confidence}


def takes_rows(spec: ModelSpec) -> bool:
    """Whether the model advertises one 2-D FP64 tensor of rows (all-numeric inputs)."""
    return all(f.dtype in _FEATURE_TYPES for f in spec.inputs)


def input_metadata(spec: ModelSpec) -> list[dict[str, Any]]:
    if takes_rows(spec):
        return [{"name": ROWS_INPUT, "datatype": "FP64", "shape": [-1, len(spec.inputs)]}]
    return [
        {"name": f.name, "datatype": _FEATURE_TYPES.get(f.dtype, "BYTES"), "shape": [-1]}
        for f in spec.inputs
    ]


def output_metadata(spec: ModelSpec) -> list[dict[str, Any]]:
    k = len(spec.labels or [])
    per_task: dict[str, list[tuple[str, str, list[int]]]] = {
        "classification": [("label", "BYTES", [-1]), ("probabilities", "FP64", [-1, k])],
        "regression": [("value", "FP64", [-1])],
        "clustering": [
            ("cluster", "INT64", [-1]),
            ("cluster_name", "BYTES", [-1]),
            ("distance", "FP64", [-1]),
        ],
        "anomaly_detection": [("score", "FP64", [-1]), ("is_anomaly", "BOOL", [-1])],
        "recommendation": [
            ("items", "BYTES", [-1, spec.postprocessing.top_k or 5]),
            ("scores", "FP64", [-1, spec.postprocessing.top_k or 5]),
        ],
        "uplift": [(name, "FP64", [-1]) for name in UPLIFT_OUTPUTS],
    }
    per_task["text_classification"] = per_task["classification"]
    outputs = [*per_task[spec.task], ("decision", "BYTES", [-1]), ("prediction_id", "BYTES", [-1])]
    if spec.on_invalid == "flag":
        outputs.append(("error", "BYTES", [-1]))
    return [{"name": n, "datatype": d, "shape": s} for n, d, s in outputs]


class V2:
    """Open Inference Protocol operations over a :class:`DataPlane`."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._metadata: dict[str, tuple[ModelSpec, dict[str, _Output]]] = {}

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "foretell", "version": foretell.__version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        spec = self.plane.model(name, version).spec
        return {
            "name": spec.name,
            "versions": [spec.version],
            "platform": f"foretell_{spec.format}",
            "inputs": input_metadata(spec),
            "outputs": output_metadata(spec),
        }

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.plane.model(name, version)
        except NotFoundError:
            raise
        except foretell.ForetellError:
            return False
        return True

    async def infer(self, request: InferRequest) -> InferResponse:
        batch = await self.score(request)
        return self.respond(batch, request)

    async def score(self, request: InferRequest) -> Batch:
        """The scored batch of ``request``'s rows (:meth:`infer` without the outputs, for a
        transport that encodes them from the batch itself)."""
        for tensor in request.inputs:
            self.plane.check_rows(tensor.shape[0] if tensor.shape else 1)
        with self.plane.using(request.model, request.version) as model:
            rows = self._rows(model, request.inputs)
            options = insight_options(request.parameters)
            return await self.plane.batcher.run(model, rows, **options)

    def respond(self, batch: Batch, request: InferRequest) -> InferResponse:
        """The answer to ``request``, whose rows ``batch`` scored."""
        model = batch.model
        outputs = self.outputs(model.spec, batch, request.outputs)
        return InferResponse(model.name, model.version, outputs, request.id)

    def _rows(self, model: Model, inputs: list[Tensor]) -> Any:
        spec, names = model.spec, model.feature_names
        if not inputs:
            raise InputFormatError(f"the request has no inputs; model '{spec.name}' takes {names}")
        if len(inputs) == 1 and inputs[0].name not in names and len(inputs[0].shape) == 2:
            tensor = inputs[0]
            if len(tensor.shape) != 2 or tensor.shape[1] != len(names):
                raise InputFormatError(
                    f"input '{tensor.name}' must have shape [rows, {len(names)}] holding the "
                    f"features {names} in order, or send one input per feature; "
                    f"got shape {tensor.shape}"
                )
            if tensor.datatype == "BYTES":
                return [[_text(v) for v in row] for row in tensor.data.tolist()]
            return tensor.data.astype(np.float64, copy=False)
        features = {f.name: f for f in spec.inputs}
        columns: dict[str, Any] = {}
        for tensor in inputs:
            if tensor.name in columns:
                raise InputFormatError(f"input '{tensor.name}' is sent twice")
            feature = features.get(tensor.name)
            if feature is None:
                raise InputFormatError(
                    f"input '{tensor.name}' is not a feature of model '{spec.name}'; send one "
                    f"input per feature {names}, or one [rows, {len(names)}] tensor"
                )
            if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
                raise InputFormatError(
                    f"input '{tensor.name}' must have shape [rows] or [rows, 1]; got {tensor.shape}"
                )
            columns[tensor.name] = _column(feature, tensor)
        return columns

    def _available(self, spec: ModelSpec) -> dict[str, _Output]:
        """The outputs of a spec by name, worked out once per loaded spec, not per request."""
        cached = self._metadata.get(spec.name)
        if cached is None or cached[0] is not spec:
            cached = self._metadata[spec.name] = (
                spec,
                {m["name"]: _Output.of(m) for m in output_metadata(spec)},
            )
        return cached[1]

    def outputs(
        self, spec: ModelSpec, batch: Batch, wanted: list[RequestedOutput] | None
    ) -> list[Tensor]:
        """The output tensors of ``batch``: those ``wanted`` (None: every output)."""
        available = self._available(spec)
        if wanted is None and not batch.insight:  # the common case, without the lookups
            return [_output_tensor(output, batch, {}) for output in available.values()]
        extras = {t.name: t for t in insight_tensors(batch)}
        names = [*available, *extras] if wanted is None else [o.name for o in wanted]
        unknown = [n for n in names if n not in available and n not in extras]
        if unknown:
            raise InputFormatError(
                f"model '{spec.name}' has no output {unknown[0]!r}; outputs: "
                f"{[*available, *extras]}"
            )
        params = {o.name: o.parameters for o in wanted or []}
        tensors = []
        for n in names:
            if n in extras:
                extras[n].parameters.update(params.get(n, {}))
                tensors.append(extras[n])
            else:
                tensors.append(_output_tensor(available[n], batch, dict(params.get(n, {}))))
        return tensors


@dataclass(frozen=True, slots=True)
class _Output:
    """One of a model's task outputs as :func:`_output_tensor` needs it: its name, datatype,
    the shape of one row, the value of a row not scored, and the numpy type of its data."""

    name: str
    datatype: str
    row_shape: tuple[int, ...]
    missing: Any
    dtype: np.dtype[Any]

    @classmethod
    def of(cls, meta: dict[str, Any]) -> _Output:
        """From one entry of :func:`output_metadata`."""
        datatype = meta["datatype"]
        missing = {"BYTES": "", "BOOL": False, "INT64": -1}.get(datatype, np.nan)
        return cls(meta["name"], datatype, tuple(meta["shape"][1:]), missing, DATATYPES[datatype])


def insight_tensors(batch: Batch) -> list[Tensor]:
    """The extra outputs of a batch that carries explanations or uncertainty (NaN, or an
    empty set, for rows that were not scored).

    ``base_value`` [rows] and ``attribution`` [rows, inputs] FP64, the inputs' names listed as
    JSON text in the ``features`` parameter of ``attribution``; ``lower`` and ``upper`` [rows]
    FP64 (regression, and Bayesian models' credible intervals) or ``prediction_set`` [rows]
    BYTES, JSON lists of labels (classification); and ``confidence`` [rows] FP64, the level
    used.
    """
    insight = set(batch.insight)
    n = batch.length

    def column(name: str) -> np.ndarray:
        return _spread(batch, batch.outputs[name].astype(np.float64), np.nan)

    tensors = []
    if "base_value" in insight:
        names = [c[len("attribution[") : -1] for c in batch.insight if c.endswith("]")]
        attribution = np.stack([column(f"attribution[{f}]") for f in names], axis=1)
        tensors += [
            Tensor("base_value", "FP64", [n], column("base_value")),
            Tensor(
                "attribution",
                "FP64",
                [n, len(names)],
                attribution.reshape(n, len(names)),
                {"features": json.dumps(names)},
            ),
        ]
    if "lower" in insight:
        tensors += [
            Tensor("lower", "FP64", [n], column("lower")),
            Tensor("upper", "FP64", [n], column("upper")),
        ]
    elif "prediction_set" in insight:
        sets = _texts([json.dumps(s) for s in batch.outputs["prediction_set"].tolist()])
        tensors.append(Tensor("prediction_set", "BYTES", [n], _spread(batch, sets, "[]")))
    level = "level" if "level" in insight else "confidence" if "confidence" in insight else None
    if level is not None:
        tensors.append(Tensor("confidence", "FP64", [n], column(level)))
    return tensors


def _spread(batch: Batch, values: np.ndarray, missing: Any) -> np.ndarray:
    """``values`` of the scored rows spread over every row of ``batch``, ``missing`` in the
    rows not scored."""
    if len(batch.usable) == batch.length:
        return values
    full = np.empty((batch.length, *values.shape[1:]), dtype=values.dtype)
    full[:] = missing
    full[batch.usable] = values
    return full


def _texts(values: Any) -> np.ndarray:
    """A BYTES tensor's data: a 1-D object array of ``values`` as text."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _column(feature: Feature, tensor: Tensor) -> Any:
    data = tensor.data.reshape(-1)
    if tensor.datatype != "BYTES":
        return data
    values = [_text(v) for v in data.tolist()]
    if feature.nullable:  # BYTES has no null: an empty element stands for a missing value
        values = [None if v == "" else v for v in values]
    if feature.dtype == "list":
        return [None if v is None else _json_list(feature.name, v) for v in values]
    return values


def _json_list(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise InputFormatError(
            f"input '{name}' holds lists of item ids: each element must be a JSON array "
            f'such as ["tent", "kettle"]; got {text[:40]!r}'
        ) from None


def _output_tensor(output: _Output, batch: Batch, parameters: dict[str, Any]) -> Tensor:
    """One of the protocol's task outputs, for every row of ``batch``, straight from its
    columns (rows not scored hold NaN, -1, false or an empty string)."""
    name, missing = output.name, output.missing
    shape = (batch.length, *output.row_shape)
    values: np.ndarray
    if name == "prediction_id":
        values = _texts(batch.prediction_ids)
    elif name == "error":
        errors = batch.errors()
        values = _texts([errors.get(row, "") for row in range(batch.length)])
    elif name == "decision":
        values = _spread(batch, batch.decisions, "")
    elif name not in batch.outputs:
        values = np.full(shape, missing, dtype=output.dtype)
    else:
        values = _spread(batch, _width(batch.outputs[name], shape, missing), missing)
    # text stays as it is (each encoding writes its elements as text); no copy when the
    # values already have the type and shape
    values = values.astype(output.dtype, copy=False)
    if values.shape != shape:
        values = values.reshape(shape)
    return Tensor(name, output.datatype, list(shape), values, parameters)


def _width(values: np.ndarray, shape: tuple[int, ...], missing: Any) -> np.ndarray:
    """A 2-D output padded with ``missing`` to the protocol's width (top-k lists of a model
    with fewer items than k)."""
    if len(shape) != 2 or values.shape[1] >= shape[1]:
        return values
    pad = np.full((values.shape[0], shape[1] - values.shape[1]), missing, dtype=values.dtype)
    return np.concatenate([values, pad], axis=1)
