"""The gRPC transport of the Open Inference Protocol, driven by the unmodified tritonclient.grpc.

The server is the real ``grpc.aio`` server of :func:`create_grpc_server` over the example
repository, on a free port of 127.0.0.1, run in a thread with its own event loop. Its answers
are compared with the in-process pipeline, ``Repository(root).load(name).predict(rows)``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as tg
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from foretell import Prediction, Repository, UserError
from foretell.examples import EXAMPLES
from foretell.examples.build import loan_applications
from foretell.examples.datasets import card_transactions, interactions, merchant_outcomes
from foretell.serving.dataplane import DataPlane
from foretell.serving.grpc import create_grpc_server, infer_request, infer_response
from foretell.serving.protos import inference_pb2 as pb
from foretell.serving.tensors import Tensor
from foretell.serving.v2 import V2, InferResponse
from tests.conftest import Server, free_port

#: Seconds any one call or wait may take; every wait in this file is bounded by it.
TIMEOUT = 30.0
CALL = {"client_timeout": TIMEOUT}

REVIEWS = [
    "great product, works perfectly and I love it",
    "broken on arrival, awful and useless",
    "does what it says",
]


class GrpcServer:
    """``create_grpc_server`` over a loaded repository, in a thread with its own event loop."""

    def __init__(self, root: Path) -> None:
        self.plane = DataPlane(Repository(root))
        self.plane.load_all()
        self.v2 = V2(self.plane)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"grpc-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(TIMEOUT):
            raise RuntimeError(f"the gRPC server did not start within {TIMEOUT} s")
        if self._error is not None:
            raise RuntimeError("the gRPC server failed to start") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread, never lost in this one
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        server = create_grpc_server(self.v2, "127.0.0.1", self.port)
        await server.start()
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(grace=2)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=TIMEOUT)
        assert not self._thread.is_alive(), "the gRPC server did not stop"
        assert self._error is None, self._error


@pytest.fixture(scope="module")
def grpc_server(examples_root: Path) -> Iterator[GrpcServer]:
    """One server for the read-only tests of this module."""
    server = GrpcServer(examples_root)
    yield server
    server.stop()


@pytest.fixture
def client(grpc_server: GrpcServer) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(grpc_server.address) as c:
        yield c


def _input(name: str, data: np.ndarray, datatype: str) -> tg.InferInput:
    tensor = tg.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def _bytes(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = [str(v).encode() for v in values]
    return array


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str | None:
    status: str | None = exc.value.status()
    return status


# ---- the rows each example model is called with, as the pipeline takes them and as tensors


def _cancer_rows(n: int) -> np.ndarray:
    rows: np.ndarray = load_breast_cancer().data[:n]
    return rows


def _card_frame(n: int = 12) -> pd.DataFrame:
    return card_transactions().drop(columns=["is_fraud"]).iloc[:n].reset_index(drop=True)


def _card_inputs(frame: pd.DataFrame) -> list[tg.InferInput]:
    types = {"float64": "FP64", "int64": "INT64", "bool": "BOOL"}
    inputs = []
    for column in frame.columns:
        datatype = types.get(str(frame[column].dtype), "BYTES")
        values = frame[column].to_numpy()
        data = _bytes(list(values)) if datatype == "BYTES" else values
        inputs.append(_input(column, data, datatype))
    return inputs


def _baskets() -> list[dict[str, Any]]:
    users = list(interactions())[:3]
    return [
        {"user": users[0], "items": ["tent"]},
        {"user": users[1], "items": []},
        {"user": users[2], "items": ["kettle", "chef-knife"]},
    ]


def _cases() -> dict[str, tuple[Any, list[tg.InferInput]]]:
    """Per example model: rows for ``Model.predict`` and the same rows as gRPC inputs."""
    cancer = _cancer_rows(20)
    diabetes = load_diabetes(scaled=False).data[:15]
    iris = load_iris().data[::10]
    card = _card_frame()
    baskets = _baskets()
    loan = loan_applications(rows=12).drop(columns=["outcome"])
    rates = merchant_outcomes(rows=12).drop(columns=["outcome"])
    return {
        "breast-cancer": (cancer, [_input("input", cancer, "FP64")]),
        "diabetes": (diabetes, [_input("input", diabetes, "FP64")]),
        "iris-segments": (iris, [_input("input", iris, "FP64")]),
        "card-fraud": (card.to_dict("records"), _card_inputs(card)),
        "item-recommender": (
            baskets,
            [
                _input("user", _bytes([b["user"] for b in baskets]), "BYTES"),
                _input("items", _bytes([json.dumps(b["items"]) for b in baskets]), "BYTES"),
            ],
        ),
        "sentiment": ([{"text": t} for t in REVIEWS], [_input("text", _bytes(REVIEWS), "BYTES")]),
        "loan-approval": (loan.to_dict("records"), _card_inputs(loan)),
        "fraud-rates": (rates.to_dict("records"), _card_inputs(rates)),
    }


def _expected(repository: Repository, name: str, predictions: list[Prediction]) -> dict[str, Any]:
    """The output tensors the protocol should carry for ``predictions``, by output name."""
    spec = repository.load(name).spec
    out: dict[str, list[Any]] = {"decision": [p.decision for p in predictions]}
    for p in predictions:
        if spec.task in ("classification", "text_classification"):
            out.setdefault("label", []).append(p.outputs["label"])
            probabilities = p.outputs["probabilities"]
            out.setdefault("probabilities", []).append(
                [probabilities[k] for k in spec.labels or []]
            )
        elif spec.task == "recommendation":
            out.setdefault("items", []).append([e["item"] for e in p.outputs["items"]])
            out.setdefault("scores", []).append([e["score"] for e in p.outputs["items"]])
        else:
            for key, value in p.outputs.items():
                out.setdefault(key, []).append(value)
    return out


def _assert_outputs(result: tg.InferResult, expected: dict[str, Any], rows: int) -> None:
    for key, values in expected.items():
        got = result.as_numpy(key)
        assert got is not None, f"no output {key!r}"
        assert got.shape[0] == rows, key
        if got.dtype == object:
            assert [v.decode() for v in got.reshape(-1)] == list(np.ravel(values)), key
        else:
            np.testing.assert_allclose(got, np.asarray(values, dtype=got.dtype), err_msg=key)
    ids = result.as_numpy("prediction_id")
    assert ids is not None and len({v.decode() for v in ids}) == rows


def test_a_taken_port_is_refused(grpc_server: GrpcServer) -> None:
    async def bind() -> None:
        create_grpc_server(grpc_server.v2, "127.0.0.1", grpc_server.port)

    with pytest.raises(UserError, match=f"127.0.0.1:{grpc_server.port}: is the port taken"):
        asyncio.run(bind())


# ---- health and metadata


def test_server_health_and_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live(**CALL)
    assert client.is_server_ready(**CALL)
    meta = client.get_server_metadata(as_json=True, **CALL)
    assert meta["name"] == "foretell"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_model_metadata_and_ready(
    client: tg.InferenceServerClient, grpc_server: GrpcServer, name: str
) -> None:
    assert client.is_model_ready(name, **CALL)
    got = client.get_model_metadata(name, **CALL)
    want = grpc_server.v2.model_metadata(name)
    assert got.name == name
    assert list(got.versions) == want["versions"] and got.platform == want["platform"]
    for tensors, wanted in ((got.inputs, want["inputs"]), (got.outputs, want["outputs"])):
        assert [(t.name, t.datatype, list(t.shape)) for t in tensors] == [
            (t["name"], t["datatype"], t["shape"]) for t in wanted
        ]
    assert client.is_model_ready(name, model_version=want["versions"][0], **CALL)


def test_model_metadata_details(client: tg.InferenceServerClient) -> None:
    cancer = client.get_model_metadata("breast-cancer", as_json=True, **CALL)
    assert (cancer["versions"], cancer["platform"]) == (["2"], "foretell_onnx")
    assert cancer["inputs"] == [{"name": "input", "datatype": "FP64", "shape": ["-1", "30"]}]
    card = client.get_model_metadata("card-fraud", **CALL)
    assert [(t.name, t.datatype) for t in card.inputs][:4] == [
        ("amount", "FP64"),
        ("hour", "INT64"),
        ("merchant_category", "BYTES"),
        ("foreign", "BOOL"),
    ]
    sentiment = client.get_model_metadata("sentiment", **CALL)
    assert [(t.name, t.datatype, list(t.shape)) for t in sentiment.inputs] == [
        ("text", "BYTES", [-1])
    ]


def test_unknown_model_is_not_found(client: tg.InferenceServerClient) -> None:
    for call in (client.is_model_ready, client.get_model_metadata):
        with pytest.raises(InferenceServerException) as exc:
            call("no-such-model", **CALL)
        assert _status(exc) == "StatusCode.NOT_FOUND"
        assert "no-such-model" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("breast-cancer", model_version="9", **CALL)
    assert _status(exc) == "StatusCode.NOT_FOUND"


# ---- inference


@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_breast_cancer_rows_tensor(
    client: tg.InferenceServerClient, repository: Repository, rows: int, datatype: str
) -> None:
    x = _cancer_rows(rows).astype(np.float32 if datatype == "FP32" else np.float64)
    result = client.infer(
        "breast-cancer", [_input("input", x, datatype)], request_id=f"cancer-{rows}", **CALL
    )
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        "breast-cancer",
        "2",
        f"cancer-{rows}",
    )
    assert len(response.raw_output_contents) == len(response.outputs)
    predictions = repository.load("breast-cancer").predict(x.astype(np.float64))
    _assert_outputs(result, _expected(repository, "breast-cancer", predictions), rows)
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (rows, 2)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_equals_the_in_process_pipeline(
    client: tg.InferenceServerClient, repository: Repository, name: str
) -> None:
    rows, inputs = _cases()[name]
    result = client.infer(name, inputs, request_id=f"{name}-1", **CALL)
    assert result.get_response().id == f"{name}-1"
    predictions = repository.load(name).predict(rows)
    assert all(p.error is None for p in predictions)
    _assert_outputs(result, _expected(repository, name, predictions), len(predictions))


def test_card_fraud_per_feature_tensors(
    client: tg.InferenceServerClient, repository: Repository
) -> None:
    frame = _card_frame(40)
    inputs = _card_inputs(frame)
    assert [i.datatype() for i in inputs] == [
        "FP64",
        "INT64",
        "BYTES",
        "BOOL",
        "INT64",
        "INT64",
        "FP64",
    ]
    result = client.infer("card-fraud", inputs, **CALL)
    predictions = repository.load("card-fraud").predict(frame.to_dict("records"))
    _assert_outputs(result, _expected(repository, "card-fraud", predictions), 40)


def test_sentiment_bytes_and_selected_output(client: tg.InferenceServerClient) -> None:
    result = client.infer(
        "sentiment",
        [_input("text", _bytes(REVIEWS[:2]), "BYTES")],
        outputs=[tg.InferRequestedOutput("label")],
        **CALL,
    )
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["label"]
    assert len(response.raw_output_contents) == 1
    labels = result.as_numpy("label")
    assert labels is not None and [v.decode() for v in labels] == ["positive", "negative"]
    assert result.as_numpy("probabilities") is None


def test_typed_contents_inputs(grpc_server: GrpcServer, repository: Repository) -> None:
    """Inputs in the typed ``contents`` fields instead of raw_input_contents."""
    x = _cancer_rows(5)
    frame = _card_frame(5)
    card = service_pb2.ModelInferRequest(model_name="card-fraud", id="typed")
    fields = {"float64": "fp64_contents", "int64": "int64_contents", "bool": "bool_contents"}
    for column in frame.columns:
        dtype = str(frame[column].dtype)
        tensor = card.inputs.add(name=column, shape=[len(frame)])
        tensor.datatype = {"float64": "FP64", "int64": "INT64", "bool": "BOOL"}.get(dtype, "BYTES")
        values = frame[column].tolist()
        if dtype in fields:
            getattr(tensor.contents, fields[dtype]).extend(values)
        else:
            tensor.contents.bytes_contents.extend(str(v).encode() for v in values)
    cancer = service_pb2.ModelInferRequest(model_name="breast-cancer")
    tensor = cancer.inputs.add(name="input", datatype="FP64", shape=list(x.shape))
    tensor.contents.fp64_contents.extend(x.reshape(-1).tolist())
    iris = service_pb2.ModelInferRequest(model_name="iris-segments")
    tensor = iris.inputs.add(name="input", datatype="INT32", shape=[2, 4])
    tensor.contents.int_contents.extend([6, 3, 4, 1, 5, 3, 1, 1])
    bad = service_pb2.ModelInferRequest(model_name="breast-cancer")
    tensor = bad.inputs.add(name="input", datatype="FP64", shape=[2, 30])
    tensor.contents.fp64_contents.extend([1.0] * 59)

    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        got = stub.ModelInfer(card, timeout=TIMEOUT)
        assert got.id == "typed" and len(got.raw_output_contents) == len(got.outputs)
        scores = tg.InferResult(got).as_numpy("score")
        expected = repository.load("card-fraud").predict(frame.to_dict("records"))
        np.testing.assert_allclose(scores, [p.outputs["score"] for p in expected])
        labels = tg.InferResult(stub.ModelInfer(cancer, timeout=TIMEOUT)).as_numpy("label")
        want = [p.outputs["label"] for p in repository.load("breast-cancer").predict(x)]
        assert labels is not None and [v.decode() for v in labels] == want
        clusters = tg.InferResult(stub.ModelInfer(iris, timeout=TIMEOUT)).as_numpy("cluster")
        want_clusters = repository.load("iris-segments").predict([[6, 3, 4, 1], [5, 3, 1, 1]])
        assert clusters is not None
        assert clusters.tolist() == [p.outputs["cluster"] for p in want_clusters]
        with pytest.raises(grpc.RpcError, match="so 60 elements; got 59") as exc:
            stub.ModelInfer(bad, timeout=TIMEOUT)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_callers_get_their_own_rows(client: tg.InferenceServerClient) -> None:
    def call(i: int) -> tuple[int, str]:
        text = f"review {i}: " + ("great, love it" if i % 2 else "broken and awful")
        result = client.infer(
            "sentiment", [_input("text", _bytes([text]), "BYTES")], request_id=str(i), **CALL
        )
        labels = result.as_numpy("label")
        assert labels is not None and result.get_response().id == str(i)
        return i, labels[0].decode()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, range(32)))
    assert all((label == "positive") == bool(i % 2) for i, label in answers)


def test_parameters_cross_the_wire_both_ways() -> None:
    """InferParameter's oneof <-> Python bool, int, float and str, through encoded messages."""
    sent = service_pb2.ModelInferRequest(model_name="sentiment", id="p")
    sent.parameters["flag"].bool_param = True
    sent.parameters["count"].int64_param = -3
    sent.parameters["big"].uint64_param = 2**63 + 1
    sent.parameters["ratio"].double_param = 0.25
    sent.parameters["note"].string_param = "hi"
    sent.parameters["unset"].Clear()
    text = sent.inputs.add(name="text", datatype="BYTES", shape=[1])
    text.parameters["lang"].string_param = "en"
    sent.outputs.add(name="label").parameters["top"].int64_param = 1
    sent.raw_input_contents.append(len(b"ok").to_bytes(4, "little") + b"ok")

    request = infer_request(pb.ModelInferRequest.FromString(sent.SerializeToString()))
    assert request.parameters == {
        "flag": True,
        "count": -3,
        "big": 2**63 + 1,
        "ratio": 0.25,
        "note": "hi",
        "unset": None,
    }
    assert request.inputs[0].parameters == {"lang": "en"}
    assert request.inputs[0].data.tolist() == [b"ok"]
    assert [(o.name, o.parameters) for o in request.outputs or []] == [("label", {"top": 1})]
    assert (request.model, request.version, request.id) == ("sentiment", None, "p")

    label = Tensor("label", "BYTES", [1], np.array([b"positive"], dtype=object), {"top": 1})
    score = Tensor("score", "FP64", [1], np.array([0.5]), {"exact": np.bool_(True)})
    response = InferResponse(
        "sentiment", "1", [label, score], "p", {"ratio": 0.5, "big": 2**64 - 1, "s": "x"}
    )
    got = service_pb2.ModelInferResponse.FromString(infer_response(response).SerializeToString())
    assert got.parameters["ratio"].double_param == 0.5
    assert got.parameters["big"].uint64_param == 2**64 - 1
    assert got.parameters["s"].string_param == "x"
    assert got.outputs[0].parameters["top"].int64_param == 1
    assert got.outputs[1].parameters["exact"].bool_param is True
    result = tg.InferResult(got)
    assert result.as_numpy("label").tolist() == [b"positive"]
    assert result.as_numpy("score").tolist() == [0.5]


# ---- errors


def test_inference_errors_map_to_grpc_codes(client: tg.InferenceServerClient) -> None:
    x = _cancer_rows(2)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("no-such-model", [_input("input", x, "FP64")], **CALL)
    assert _status(exc) == "StatusCode.NOT_FOUND"

    with pytest.raises(InferenceServerException) as exc:
        client.infer("breast-cancer", [_input("input", x[:, :29].copy(), "FP64")], **CALL)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    assert "'input'" in exc.value.message() and "[rows, 30]" in exc.value.message()

    with pytest.raises(InferenceServerException) as exc:
        client.infer(
            "breast-cancer",
            [_input("input", x, "FP64")],
            outputs=[tg.InferRequestedOutput("nope")],
            **CALL,
        )
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT" and "'nope'" in exc.value.message()

    with pytest.raises(InferenceServerException) as exc:
        client.infer("sentiment", [_input("txt", _bytes(["hi"]), "BYTES")], **CALL)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT" and "'txt'" in exc.value.message()

    with pytest.raises(InferenceServerException) as exc:  # rows outside the model's schema
        client.infer("breast-cancer", [_input("input", x * 100.0, "FP64")], **CALL)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT" and "row 0" in exc.value.message()


def test_a_message_over_64_mib_is_refused(client: tg.InferenceServerClient) -> None:
    x = np.zeros((280_000, 30))  # 67.2 MB of FP64, over the 64 MiB limit
    with pytest.raises(InferenceServerException) as exc:
        client.infer("breast-cancer", [_input("input", x, "FP64")], **CALL)
    assert _status(exc) == "StatusCode.RESOURCE_EXHAUSTED"


# ---- streaming


def test_stream_answers_each_request_and_survives_errors(
    client: tg.InferenceServerClient, repository: Repository
) -> None:
    answers: queue.Queue[tuple[tg.InferResult | None, InferenceServerException | None]]
    answers = queue.Queue()
    x = _cancer_rows(4)
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)), stream_timeout=TIMEOUT
    )
    try:
        client.async_stream_infer("breast-cancer", [_input("input", x, "FP64")], request_id="a")
        client.async_stream_infer(
            "breast-cancer", [_input("input", x[:, :10].copy(), "FP64")], request_id="bad"
        )
        client.async_stream_infer(
            "sentiment",
            [_input("text", _bytes(REVIEWS), "BYTES")],
            request_id="c",
            outputs=[tg.InferRequestedOutput("label")],
        )
        client.async_stream_infer("no-such-model", [_input("input", x, "FP64")], request_id="d")
        client.async_stream_infer("breast-cancer", [_input("input", x, "FP64")], request_id="e")
        got = [answers.get(timeout=TIMEOUT) for _ in range(5)]
    finally:
        client.stop_stream()

    first, bad, text, unknown, last = got
    for result, error in (first, text, last):
        assert error is None and result is not None
    for result, error in (bad, unknown):
        assert result is None and error is not None
    assert bad[1] is not None and "'input'" in bad[1].message()
    assert unknown[1] is not None and "no-such-model" in unknown[1].message()

    assert first[0] is not None and last[0] is not None and text[0] is not None
    assert [first[0].get_response().id, text[0].get_response().id] == ["a", "c"]
    assert last[0].get_response().id == "e"
    predictions = repository.load("breast-cancer").predict(x)
    _assert_outputs(first[0], _expected(repository, "breast-cancer", predictions), 4)
    labels = text[0].as_numpy("label")
    want = [
        p.outputs["label"]
        for p in repository.load("sentiment").predict([{"text": t} for t in REVIEWS])
    ]
    assert labels is not None and [v.decode() for v in labels] == want


# ---- model repository extension


def test_repository_index_unload_and_load(examples_root: Path) -> None:
    server = GrpcServer(examples_root)  # its own server: this test changes what is served
    try:
        with tg.InferenceServerClient(server.address) as c:
            index = c.get_model_repository_index(as_json=True, **CALL)["models"]
            assert [m["name"] for m in index] == sorted(EXAMPLES)
            assert all(m["state"] == "READY" for m in index)
            cancer = next(m for m in index if m["name"] == "breast-cancer")
            assert cancer["version"] == "2"

            c.unload_model("sentiment", **CALL)
            assert not c.is_model_ready("sentiment", **CALL)
            assert c.is_server_ready(**CALL)  # an unloaded model does not count against it
            entry = next(
                m
                for m in c.get_model_repository_index(as_json=True, **CALL)["models"]
                if m["name"] == "sentiment"
            )
            assert entry["state"] == "UNAVAILABLE" and entry["reason"] == "unloaded"
            with pytest.raises(InferenceServerException) as exc:
                c.infer("sentiment", [_input("text", _bytes(["hi"]), "BYTES")], **CALL)
            assert _status(exc) == "StatusCode.UNAVAILABLE"

            c.load_model("sentiment", **CALL)
            assert c.is_model_ready("sentiment", **CALL)
            result = c.infer("sentiment", [_input("text", _bytes(REVIEWS), "BYTES")], **CALL)
            assert result.as_numpy("label") is not None
            index = c.get_model_repository_index(as_json=True, **CALL)["models"]
            assert all(m["state"] == "READY" for m in index)

            with pytest.raises(InferenceServerException) as exc:
                c.load_model("no-such-model", **CALL)
            assert _status(exc) == "StatusCode.NOT_FOUND"
            with pytest.raises(InferenceServerException) as exc:
                c.unload_model("no-such-model", **CALL)
            assert _status(exc) == "StatusCode.NOT_FOUND"
            with pytest.raises(InferenceServerException) as exc:
                c.load_model("sentiment", config='{"backend": "python"}', **CALL)
            assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    finally:
        server.stop()


# ---- the transport as `foretell serve --grpc-port` runs it


def test_the_cli_server_answers_grpc(server: Server, repository: Repository) -> None:
    """The session's ``foretell serve`` process (tests/conftest.py) serves this transport too."""
    x = _cancer_rows(8)
    with tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as c:
        assert c.is_server_live(**CALL) and c.is_server_ready(**CALL)
        assert c.is_model_ready("sentiment", **CALL)
        result = c.infer("breast-cancer", [_input("input", x, "FP64")], request_id="cli", **CALL)
    assert result.get_response().id == "cli"
    predictions = repository.load("breast-cancer").predict(x)
    _assert_outputs(result, _expected(repository, "breast-cancer", predictions), 8)
