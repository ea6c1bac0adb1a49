"""Open Inference Protocol over REST, driven by the real tritonclient.http and by raw HTTP."""

from __future__ import annotations

import gzip
import json
import signal
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from foretell import Repository
from foretell.examples import datasets
from foretell.serving.batching import rows_of
from foretell.serving.dataplane import DataPlane
from foretell.serving.rest_v2 import parse_infer, part_json, render_infer
from foretell.serving.v2 import V2, InferRequest
from tests.conftest import Server

CANCER = load_breast_cancer().data


def rows_for(model: str, n: int) -> list[dict[str, Any]]:
    """``n`` valid records for an example model."""
    if model == "breast-cancer":
        names = load_breast_cancer().feature_names
        return [dict(zip(names, map(float, r), strict=True)) for r in CANCER[:n]]
    if model == "diabetes":
        frame = load_diabetes(as_frame=True, scaled=False).data
        return frame.iloc[:n].to_dict("records")
    if model == "iris-segments":
        return load_iris(as_frame=True).data.iloc[:n].to_dict("records")
    if model == "card-fraud":
        frame = datasets.card_transactions(rows=n, seed=3).drop(columns=["is_fraud"])
        return frame.to_dict("records")
    if model == "sentiment":
        return datasets.sentiment_corpus()[["text"]].iloc[:n].to_dict("records")
    users = list(datasets.interactions())
    items = datasets.item_names()
    return [{"user": users[i % len(users)], "items": [items[i % len(items)]]} for i in range(n)]


def infer_inputs(model: str, records: list[dict[str, Any]], binary: bool) -> list[Any]:
    """tritonclient inputs for ``records``: one FP64 2-D tensor for all-numeric models, else
    one tensor per feature."""
    if model in ("breast-cancer", "diabetes", "iris-segments"):
        matrix = np.array([list(r.values()) for r in records], dtype=np.float64)
        tensor = triton.InferInput("input", list(matrix.shape), "FP64")
        tensor.set_data_from_numpy(matrix, binary_data=binary)
        return [tensor]
    types = {
        "hour": ("INT64", np.int64),
        "card_age_days": ("INT64", np.int64),
        "transactions_last_24h": ("INT64", np.int64),
        "foreign": ("BOOL", np.bool_),
    }
    tensors = []
    for name in records[0]:
        values = [r[name] for r in records]
        if name == "items":
            values = [json.dumps(v) for v in values]
        datatype, dtype = types.get(name, ("FP64", np.float64))
        if isinstance(values[0], str):
            datatype, dtype = "BYTES", np.object_
            array = np.array([v.encode() for v in values], dtype=object)
        else:
            array = np.array(values, dtype=dtype)
        tensor = triton.InferInput(name, [len(values)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    return tensors


def expected_outputs(repository: Repository, model: str, records: list[dict[str, Any]]) -> Any:
    return [(p.outputs, p.decision) for p in repository.load(model).predict(records)]


def got_outputs(model: str, result: Any) -> list[tuple[dict[str, Any], str]]:
    decisions = [d.decode() for d in result.as_numpy("decision")]
    if model in ("breast-cancer", "sentiment"):
        labels = ["malignant", "benign"] if model == "breast-cancer" else ["negative", "positive"]
        probs = result.as_numpy("probabilities")
        outputs: list[dict[str, Any]] = [
            {"label": label.decode(), "probabilities": dict(zip(labels, p.tolist(), strict=True))}
            for label, p in zip(result.as_numpy("label"), probs, strict=True)
        ]
    elif model == "diabetes":
        outputs = [{"value": v} for v in result.as_numpy("value").tolist()]
    elif model == "iris-segments":
        outputs = [
            {"cluster": c, "cluster_name": n.decode(), "distance": d}
            for c, n, d in zip(
                result.as_numpy("cluster").tolist(),
                result.as_numpy("cluster_name"),
                result.as_numpy("distance").tolist(),
                strict=True,
            )
        ]
    elif model == "card-fraud":
        outputs = [
            {"score": s, "is_anomaly": a}
            for s, a in zip(
                result.as_numpy("score").tolist(),
                result.as_numpy("is_anomaly").tolist(),
                strict=True,
            )
        ]
    else:
        outputs = [
            {
                "items": [
                    {"item": i.decode(), "score": s} for i, s in zip(row_i, row_s, strict=True) if i
                ]
            }
            for row_i, row_s in zip(
                result.as_numpy("items"), result.as_numpy("scores").tolist(), strict=True
            )
        ]
    return list(zip(outputs, decisions, strict=True))


@pytest.fixture(scope="module")
def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=8)


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "foretell"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


@pytest.mark.parametrize(
    "model",
    ["breast-cancer", "diabetes", "iris-segments", "card-fraud", "item-recommender", "sentiment"],
)
def test_model_metadata_and_ready(client: triton.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model)
    assert meta["name"] == model and isinstance(meta["platform"], str)
    assert all(isinstance(v, str) for v in meta["versions"])
    assert {o["name"] for o in meta["outputs"]} >= {"decision", "prediction_id"}
    version = meta["versions"][0]
    assert client.get_model_metadata(model, model_version=version)["name"] == model
    assert client.is_model_ready(model, model_version=version)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize(
    "model",
    ["breast-cancer", "diabetes", "iris-segments", "card-fraud", "item-recommender", "sentiment"],
)
def test_every_example_equals_the_in_process_pipeline(
    client: triton.InferenceServerClient,
    repository: Repository,
    model: str,
    rows: int,
    binary: bool,
) -> None:
    records = rows_for(model, rows)
    result = client.infer(model, infer_inputs(model, records, binary), request_id=f"r-{rows}")
    assert result.get_response()["id"] == f"r-{rows}"
    assert result.get_response()["model_name"] == model
    got = got_outputs(model, result)
    expected = expected_outputs(repository, model, records)
    assert len(got) == rows
    for (g_out, g_dec), (e_out, e_dec) in zip(got, expected, strict=True):
        assert g_dec == e_dec
        assert json.dumps(g_out, sort_keys=True) == json.dumps(e_out, sort_keys=True)


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_fp32_and_fp64_inputs(client: triton.InferenceServerClient, datatype: str) -> None:
    x = CANCER[:5].astype(np.float32 if datatype == "FP32" else np.float64)
    tensor = triton.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    probabilities = client.infer("breast-cancer", [tensor]).as_numpy("probabilities")
    assert probabilities.shape == (5, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_selected_outputs_binary_and_json(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [2, 30], "FP64")
    tensor.set_data_from_numpy(CANCER[:2])
    result = client.infer(
        "breast-cancer",
        [tensor],
        outputs=[
            triton.InferRequestedOutput("label", binary_data=False),
            triton.InferRequestedOutput("decision", binary_data=True),
        ],
    )
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["label", "decision"]
    assert result.get_output("label")["data"] == ["malignant", "malignant"]
    assert result.as_numpy("decision").tolist() == [b"refer", b"refer"]
    assert result.as_numpy("probabilities") is None


def test_one_tensor_per_feature_for_a_numeric_model(
    client: triton.InferenceServerClient, repository: Repository
) -> None:
    names = load_breast_cancer().feature_names
    tensors = []
    for j, name in enumerate(names):
        tensor = triton.InferInput(str(name), [3], "FP32")
        tensor.set_data_from_numpy(CANCER[:3, j].astype(np.float32))
        tensors.append(tensor)
    labels = client.infer("breast-cancer", tensors).as_numpy("label").tolist()
    expected = [
        p.outputs["label"].encode()
        for p in repository.load("breast-cancer").predict(CANCER[:3].astype(np.float32))
    ]
    assert labels == expected


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_bodies(client: triton.InferenceServerClient, algorithm: str) -> None:
    tensor = triton.InferInput("input", [4, 30], "FP64")
    tensor.set_data_from_numpy(CANCER[:4])
    result = client.infer("breast-cancer", [tensor], request_compression_algorithm=algorithm)
    assert result.as_numpy("label").shape == (4,)


def _post(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return httpx.post(f"{server.url}{path}", content=body, headers=headers or {}, timeout=30)


def test_binary_inputs_are_decoded_without_a_copy_at_any_offset(server: Server) -> None:
    rows = CANCER[:3]
    answers = []
    for pad in (0, 1, 3):  # the header's length puts the data at any offset, aligned or not
        head = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP64",
                    "shape": [3, 30],
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ]
        }
        header = json.dumps(head).encode() + b" " * pad
        body = header + rows.tobytes()
        data = parse_infer(body, str(len(header)), "breast-cancer", None).inputs[0].data
        assert np.shares_memory(data, np.frombuffer(body, np.uint8))  # a view of the body
        np.testing.assert_array_equal(data, rows)
        response = _post(
            server,
            "/v2/models/breast-cancer/infer",
            body,
            {"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 200, response.text
        answers.append({o["name"]: o["data"] for o in response.json()["outputs"]})
    for answer in answers[1:]:
        assert answer["label"] == answers[0]["label"]
        assert answer["probabilities"] == pytest.approx(answers[0]["probabilities"])


def test_binary_body_by_hand_and_bytes_elements(server: Server) -> None:
    texts = [b"awful, it broke", "tr\u00e8s bien, great".encode()]
    blob = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "label"}],
        }
    ).encode()
    response = _post(
        server,
        "/v2/models/sentiment/infer",
        header + blob,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["negative", "positive"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "needle"),
    [
        ("/v2/models/breast-cancer/infer", b"{nope", {}, 400, "not valid JSON"),
        ("/v2/models/breast-cancer/infer", b'{"inputs": 3}', {}, 400, '"inputs" list'),
        (
            "/v2/models/breast-cancer/infer",
            b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 3],'
            b' "data": [1,2,3]}]}',
            {},
            400,
            "input 'input' must have shape [rows, 30]",
        ),
        (
            "/v2/models/breast-cancer/infer",
            b'{"inputs": [{"name": "input", "datatype": "FP99", "shape": [1], "data": [1]}]}',
            {},
            400,
            "datatype 'FP99'",
        ),
        (
            "/v2/models/breast-cancer/infer",
            b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 30], "data": [1]}]}',
            {},
            400,
            "so 30 elements; got 1",
        ),
        (
            "/v2/models/card-fraud/infer",
            b'{"inputs": [{"name": "bogus", "datatype": "FP64", "shape": [1], "data": [1]}]}',
            {},
            400,
            "input 'bogus' is not a feature",
        ),
        (
            "/v2/models/sentiment/infer",
            b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}],'
            b' "outputs": [{"name": "nope"}]}',
            {},
            400,
            "has no output 'nope'",
        ),
        (
            "/v2/models/sentiment/infer",
            b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],'
            b' "parameters": {"binary_data_size": 99}}]}',
            {"Inference-Header-Content-Length": "whole body"},
            400,
            "binary_data_size 99",
        ),
        (
            "/v2/models/sentiment/infer",
            b"\x1f\x8b garbage",
            {"Content-Encoding": "gzip"},
            400,
            "cannot be decompressed",
        ),
        (
            "/v2/models/sentiment/infer",
            b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]},'
            b' {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["b"]}]}',
            {},
            400,
            "input 'text' is sent twice",
        ),
        (
            "/v2/models/breast-cancer/infer",
            b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [4294967296, 4294967296],'
            b' "data": [1]}]}',
            {},
            413,
            "so 18446744073709551616 elements; a tensor may have at most",
        ),
        ("/v2/models/nope/infer", b"{}", {}, 404, "model 'nope'"),
        ("/v2/models/sentiment/versions/9/infer", b"{}", {}, 404, "not '9'"),
    ],
)
def test_error_paths(
    server: Server, path: str, body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    if headers.get("Inference-Header-Content-Length") == "whole body":
        headers = {"Inference-Header-Content-Length": str(len(body))}
    response = _post(server, path, body, headers)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


def test_wrong_verbs_and_unknown_models_answer_json(server: Server) -> None:
    wrong = httpx.get(f"{server.url}/v2/models/sentiment/infer")
    assert wrong.status_code == 405 and "error" in wrong.json()
    missing = httpx.get(f"{server.url}/v2/models/nope")
    assert missing.status_code == 404 and "model 'nope'" in missing.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/nope/ready").status_code == 404


def test_a_gzip_bomb_is_refused(server: Server) -> None:
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024))
    response = _post(server, "/v2/models/sentiment/infer", bomb, {"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed request body is larger" in response.json()["error"]


def test_64_concurrent_callers_each_get_their_own_rows(server: Server) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=64)
    requests = []
    for i in range(64):
        rows = CANCER[i : i + 1 + i % 5]
        tensor = triton.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        requests.append((i, rows, client.async_infer("breast-cancer", [tensor], request_id=str(i))))
    model = Repository(server_root(server)).load("breast-cancer")
    for i, rows, pending in requests:
        result = pending.get_result(timeout=60)
        assert result.get_response()["id"] == str(i)
        expected = [p.outputs["probabilities"]["malignant"] for p in model.predict(rows)]
        np.testing.assert_allclose(result.as_numpy("probabilities")[:, 0], expected, atol=1e-12)
    client.close()


@pytest.mark.parametrize(
    "model",
    ["breast-cancer", "diabetes", "iris-segments", "card-fraud", "item-recommender", "sentiment"],
)
def test_a_merged_batch_answers_in_the_text_each_request_alone_gets(
    repository: Repository, model: str
) -> None:
    """The JSON answer made from the text of a merged batch's rows (``part_json``) is, byte
    for byte, what rendering the request's own output tensors writes, for every task, for
    rows not scored (flagged) and with or without a request id."""
    loaded = repository.load(model)
    records = rows_for(model, 9)
    if model == "item-recommender":  # flags invalid rows: a row of no user is answered, unscored
        records[4] = {"user": None, "items": "not-a-list"}
    sizes = [1, 3, 1, 4]
    merged = loaded.run(records, groups=np.repeat(np.arange(len(sizes)), sizes))
    if model == "item-recommender":
        assert merged.errors(), "the flagged row must be in the merged batch"
    v2 = V2(DataPlane(repository))
    start = 0
    for i, size in enumerate(sizes):
        part = rows_of(merged, start, start + size)
        request = InferRequest(model, None, [], id=None if i % 2 else f"r{i}")
        expected, _ = render_infer(request, v2.respond(part, request))
        assert part_json(v2, part, request.id) == expected
        start += size


def server_root(server: Server) -> Path:
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert models
    args = server.process.args
    assert isinstance(args, list)
    return Path(args[args.index("--repository") + 1])


def test_load_and_unload_while_traffic_runs(examples_copy: Path) -> None:
    running = Server(["--repository", str(examples_copy)], cwd=examples_copy.parent)
    client = triton.InferenceServerClient(f"127.0.0.1:{running.port}", concurrency=4)
    failures: list[str] = []
    stop = threading.Event()

    body = {
        "inputs": [
            {"name": "input", "datatype": "FP64", "shape": [2, 30], "data": CANCER[:2].tolist()}
        ]
    }

    def traffic() -> int:  # tritonclient.http is gevent-based: one thread only, so httpx here
        count = 0
        with httpx.Client(timeout=30) as http:
            while not stop.is_set() and count < 5000:
                response = http.post(f"{running.url}/v2/models/breast-cancer/infer", json=body)
                if response.status_code != 200:
                    failures.append(response.text)
                count += 1
        return count

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            counts = [pool.submit(traffic) for _ in range(2)]
            for _ in range(3):
                client.unload_model("sentiment")
                assert not client.is_model_ready("sentiment")
                assert client.is_server_ready()  # an unloaded model is not a failed one
                index = {m["name"]: m for m in client.get_model_repository_index()}
                assert index["sentiment"]["state"] == "UNAVAILABLE"
                client.load_model("sentiment")
                assert client.is_model_ready("sentiment")
            stop.set()
            assert sum(c.result() for c in counts) > 0
        assert failures == []
        assert client.is_server_ready()
    finally:
        stop.set()
        client.close()
        running.stop()


def _wait_in_flight(url: str, model: str, seconds: float = 60.0) -> None:
    """Waits until the server's in-flight gauge shows a request to ``model``."""
    gauge = f'foretell_requests_in_flight{{model="{model}"}} 1.0'
    deadline = time.monotonic() + seconds
    while gauge not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, f"no request to {model} came in flight"
        time.sleep(0.02)


def test_unload_waits_for_requests_in_flight(examples_copy: Path) -> None:
    running = Server(["--repository", str(examples_copy)], cwd=examples_copy.parent)
    try:
        rows = datasets.card_transactions(rows=30_000, seed=5).drop(columns=["is_fraud"])
        body = {"instances": rows.to_dict("records")}
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(
                httpx.post, f"{running.url}/v1/models/card-fraud:predict", json=body, timeout=120
            )
            _wait_in_flight(running.url, "card-fraud")  # the request is being scored now
            unload = httpx.post(
                f"{running.url}/v2/repository/models/card-fraud/unload", timeout=120
            )
            assert unload.status_code == 200
            gauge = 'foretell_requests_in_flight{model="card-fraud"} 0.0'
            assert gauge in httpx.get(f"{running.url}/metrics").text, (
                "unload returned before the request in flight was scored"
            )
            assert slow.result().status_code == 200  # scored by the model it started on
        after = httpx.post(f"{running.url}/v1/models/card-fraud:predict", json={"instances": []})
        assert after.status_code == 503
    finally:
        running.stop()


def test_sigterm_drains_accepted_requests(examples_root: Path, tmp_path: Path) -> None:
    """Requests in flight when SIGTERM arrives all finish; later ones are turned away.

    A connection that reaches the kernel's backlog just as the listener closes is reset by
    the kernel before the server ever reads it; such late requests may fail, never earlier ones.
    """
    running = Server(["--repository", str(examples_root)], cwd=tmp_path)
    body = {"instances": rows_for("card-fraud", 5000)}
    early: list[str] = []
    late: list[str] = []

    def call(outcomes: list[str]) -> None:
        try:
            response = httpx.post(
                f"{running.url}/v1/models/card-fraud:predict", json=body, timeout=90
            )
            outcomes.append("ok" if response.status_code == 200 else f"http {response.status_code}")
        except httpx.ConnectError:
            outcomes.append("refused")
        except httpx.HTTPError as exc:
            outcomes.append(f"broken: {type(exc).__name__}")

    first = [threading.Thread(target=call, args=(early,)) for _ in range(6)]
    for t in first:
        t.start()
    time.sleep(1.0)  # the six requests are being scored now
    running.process.send_signal(signal.SIGTERM)
    second = [threading.Thread(target=call, args=(late,)) for _ in range(4)]
    for t in second:
        t.start()
    for t in first + second:
        t.join(timeout=120)
    assert running.process.wait(timeout=60) == 0
    assert early == ["ok"] * 6
    assert len(late) == 4


def test_requests_over_the_row_limit_are_refused(examples_root: Path, tmp_path: Path) -> None:
    running = Server(["--repository", str(examples_root), "--max-rows", "5"], cwd=tmp_path)
    try:
        rows = [{"text": "fine"}] * 6
        v1 = httpx.post(f"{running.url}/v1/models/sentiment:predict", json={"instances": rows})
        assert v1.status_code == 413 and "at most 5 per request" in v1.json()["error"]
        body = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [6], "data": ["fine"] * 6}]
        }
        v2 = httpx.post(f"{running.url}/v2/models/sentiment/infer", json=body)
        assert v2.status_code == 413 and "has 6 rows" in v2.json()["error"]
        ok = httpx.post(f"{running.url}/v1/models/sentiment:predict", json={"instances": rows[:5]})
        assert ok.status_code == 200
    finally:
        running.stop()
