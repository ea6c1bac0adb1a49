"""Limits and hostile clients: rate limits, request timeouts, slow clients, tensor and string
limits, deep nesting and binary garbage, against real servers on real ports."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from foretell.errors import RateLimitedError, RequestTimeoutError
from foretell.repository.spec import Feature, ModelSpec, write_spec
from foretell.serving.keys import KeyStore
from foretell.serving.limits import Deadlines, Limits, RateLimiter
from foretell.serving.tensors import MAX_ELEMENTS
from tests.conftest import Server

SLEEPER = textwrap.dedent(
    """
    import time
    import numpy as np

    class Sleeper:
        def __init__(self, folder):
            pass

        def predict(self, x):
            time.sleep(float(x[:, 0].max()))
            return x[:, 0]
    """
)
#: The slow server's --request-timeout: long enough for a quick answer on a busy machine.
LIMIT = 3
TEXT = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}


def _sleep(seconds: float) -> dict[str, Any]:
    return {"instances": [{"seconds": seconds}]}


# --------------------------------------------------------------------------- rate limits


def test_a_token_bucket_allows_bursts_then_the_rate() -> None:
    limiter = RateLimiter(rate=20.0, burst=3)
    for _ in range(3):
        limiter.take("key 'a'")
    with pytest.raises(RateLimitedError, match="rate limit of 20 requests per second") as caught:
        limiter.take("key 'a'")
    assert caught.value.retry_after == 1 and caught.value.status == 429
    limiter.take("key 'b'")  # every caller has its own bucket
    time.sleep(0.06)  # a little over one token's worth at 20/s
    limiter.take("key 'a'")


def test_idle_buckets_are_forgotten_so_memory_stays_bounded() -> None:
    limiter = RateLimiter(rate=1000.0, burst=1)
    limiter.MAX_BUCKETS = 100
    for i in range(150):
        limiter.take(f"client 10.0.0.{i}")
        time.sleep(0.002)  # older buckets refill (1 ms at 1000/s)
    assert len(limiter._buckets) <= 101


@pytest.fixture(scope="module")
def limited(examples_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("limited")
    store = KeyStore(folder / "keys.json")
    keys = [store.create(name, ["predict:*"])[0] for name in ("first", "second")]
    args = ["--repository", str(examples_root), "--auth", "--keys", str(folder / "keys.json")]
    running = Server([*args, "--rate-limit", "0.2", "--rate-burst", "3"], cwd=folder)
    yield running, keys
    running.stop()


def test_each_key_has_its_own_rate_over_both_transports(limited: Any) -> None:
    running, (first, second) = limited

    def call(key: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(
            f"{running.url}/v2/models/sentiment/infer", json=TEXT, headers=headers, timeout=30
        )

    assert [call(first).status_code for _ in range(3)] == [200, 200, 200]
    refused = call(first)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert "key '" in error and "rate limit of 0.2 requests per second" in error
    assert first.split("_", 2)[2] not in error  # the bucket is named by the key's id only
    assert call(second).status_code == 200
    for _ in range(10):  # health checks are never limited
        assert httpx.get(f"{running.url}/v2/health/ready").status_code == 200

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{running.grpc_port}")
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"fine"], dtype=object))
    with pytest.raises(InferenceServerException, match="rate limit") as caught:
        client.infer("sentiment", [text], headers={"authorization": f"Bearer {first}"})
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.infer("sentiment", [text], headers={"authorization": f"Bearer {second}"})
    assert client.is_server_live()
    client.close()


def test_without_keys_each_client_address_has_a_rate(examples_root: Path, tmp_path: Path) -> None:
    args = ["--repository", str(examples_root), "--no-monitoring", "--rate-limit", "0.1"]
    running = Server(args, cwd=tmp_path)
    try:
        first = httpx.get(f"{running.url}/v1/models", timeout=30)
        second = httpx.get(f"{running.url}/v1/models", timeout=30)
    finally:
        running.stop()
    assert first.status_code == 200  # the default burst: one second's worth, at least 1
    assert second.status_code == 429
    assert second.headers["retry-after"] == "10"
    assert "client 127.0.0.1 sent more than the rate limit" in second.json()["error"]


# --------------------------------------------------------------------------- time limits


def test_one_timer_ends_late_requests_and_only_them() -> None:
    limits = Limits(request_timeout=0.2)

    async def main() -> list[Any]:
        async def call(seconds: float) -> float:
            return await limits.in_time(asyncio.sleep(seconds, result=seconds))

        quick, late = asyncio.create_task(call(0.01)), asyncio.create_task(call(5))
        stopped = asyncio.create_task(call(5))  # cancelled by someone else: stays cancelled
        await asyncio.sleep(0.05)
        stopped.cancel()
        started = time.monotonic()
        done = await asyncio.gather(quick, late, stopped, return_exceptions=True)
        assert time.monotonic() - started < 0.2 + Deadlines.TICK + 0.2
        assert limits.deadlines._timer is None  # nothing in flight: the timer stopped
        return done

    quick, late, stopped = asyncio.run(main())
    assert quick == 0.01
    assert isinstance(late, RequestTimeoutError) and "limit of 0.2 s" in late.message
    assert isinstance(stopped, asyncio.CancelledError)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a short time limit and two models, ``sleeper`` and ``quick``, that sleep
    as many seconds as their input says (two, as requests to one model are batched together)."""
    root = tmp_path_factory.mktemp("slow")
    for name in ("sleeper", "quick"):
        version = root / "models" / name / "1"
        version.mkdir(parents=True)
        (version / "model.py").write_text(SLEEPER, encoding="utf-8")
        spec = ModelSpec(
            name=name,
            version="1",
            task="regression",
            format="python",
            artifact="model.py",
            inputs=[Feature(name="seconds", dtype="float")],
            trusted=True,
            runtime={"class": "Sleeper"},
        )
        write_spec(spec, version)
    args = [
        "--repository",
        str(root / "models"),
        "--no-monitoring",
        "--request-timeout",
        str(LIMIT),
    ]
    running = Server(args, cwd=root)
    yield running
    running.stop()


def test_a_request_over_the_time_limit_is_answered_504(slow_server: Server) -> None:
    url = f"{slow_server.url}/v1/models/sleeper:predict"
    other = f"{slow_server.url}/v1/models/quick:predict"
    assert httpx.post(url, json=_sleep(0), timeout=10).status_code == 200
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        slow = pool.submit(httpx.post, url, json=_sleep(LIMIT + 3), timeout=20)
        time.sleep(0.2)
        quick = httpx.post(other, json=_sleep(0), timeout=10)  # the server keeps answering
        assert quick.status_code == 200
        answer = slow.result()
    assert LIMIT - 0.1 < time.monotonic() - started < LIMIT + 2.5
    assert answer.status_code == 504
    assert f"limit of {LIMIT} s" in answer.json()["error"]
    assert "--request-timeout" in answer.json()["error"]


def test_a_v2_infer_over_the_time_limit_is_answered_504(slow_server: Server) -> None:
    def infer(seconds: float) -> httpx.Response:
        body = {
            "inputs": [{"name": "seconds", "datatype": "FP64", "shape": [1], "data": [seconds]}]
        }
        return httpx.post(f"{slow_server.url}/v2/models/sleeper/infer", json=body, timeout=20)

    assert infer(0).status_code == 200
    started = time.monotonic()
    answer = infer(LIMIT + 3)
    assert LIMIT - 0.1 < time.monotonic() - started < LIMIT + 2.5
    assert answer.status_code == 504
    assert answer.headers["connection"] == "close"
    assert f"limit of {LIMIT} s" in answer.json()["error"]
    assert infer(0).status_code == 200  # the server goes on answering


def test_grpc_calls_over_the_time_limit_exceed_their_deadline(slow_server: Server) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{slow_server.grpc_port}")
    seconds = grpcclient.InferInput("seconds", [1], "FP64")
    seconds.set_data_from_numpy(np.array([LIMIT + 3.0]))
    started = time.monotonic()
    with pytest.raises(InferenceServerException, match=f"limit of {LIMIT} s") as caught:
        client.infer("sleeper", [seconds])
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert time.monotonic() - started < LIMIT + 2.5
    with pytest.raises(InferenceServerException) as caught:  # the client's own deadline holds
        client.infer("sleeper", [seconds], client_timeout=0.3)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    client.close()


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends before it closes ``sock``; fails if it stays open ``seconds``."""
    sock.settimeout(seconds)
    received = b""
    while True:
        chunk = sock.recv(65536)  # socket.timeout (an OSError) here fails the test
        if not chunk:
            return received
        received += chunk


def test_a_slow_client_is_cut_off_and_blocks_no_one(slow_server: Server) -> None:
    """Slowloris: headers, a body (to a V1 route, and to V2 infer's fast path), or nothing at
    all, sent too slowly."""
    url = f"{slow_server.url}/v1/models/quick:predict"
    silent = _connect(slow_server)
    dribbling = _connect(slow_server)
    paths = ["/v1/models/sleeper:predict", "/v2/models/quick/infer"]
    slow_bodies = [_connect(slow_server) for _ in paths]
    for sock, path in zip(slow_bodies, paths, strict=True):
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
    stop = threading.Event()

    def dribble() -> None:  # a header byte every 0.2 s: never completes
        for byte in b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            if stop.wait(0.2):
                return
            try:
                dribbling.send(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=dribble)
    sender.start()
    try:
        started = time.monotonic()
        for _ in range(5):  # others are answered while the slow ones hang
            assert httpx.post(url, json=_sleep(0), timeout=5).status_code == 200
        assert _closed_within(silent, LIMIT + 2) == b""
        assert _closed_within(dribbling, LIMIT + 2) == b""
        for sock in slow_bodies:
            answer = _closed_within(sock, LIMIT + 2)
            assert answer.startswith(b"HTTP/1.1 504") and f"limit of {LIMIT} s".encode() in answer
        assert time.monotonic() - started < LIMIT + 4
    finally:
        stop.set()
        sender.join()
        for sock in (silent, dribbling, *slow_bodies):
            sock.close()


# --------------------------------------------------------------------------- hostile input


def _deep(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/sentiment:predict", '{"instances": [{"text": ' + _deep(1000) + "}]}"),
        ("/v1/models/diabetes:predict", '{"instances": ' + _deep(1000) + "}"),
        (
            "/v2/models/breast-cancer/infer",
            '{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 30], "data": '
            + _deep(1000)
            + "}]}",
        ),
        (
            "/v1/models/sentiment/feedback",
            '{"prediction_id": "p", "ground_truth": ' + _deep(1000) + "}",
        ),
        ("/v1/models/sentiment:predict", _deep(100_000)),
    ],
    ids=["v1-value", "v1-rows", "v2-data", "feedback", "past-the-parser"],
)
def test_deeply_nested_json_is_a_clear_4xx(server: Server, path: str, body: str) -> None:
    response = httpx.post(f"{server.url}{path}", content=body, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]


def test_binary_garbage_is_a_clear_4xx_everywhere(server: Server) -> None:
    rng = np.random.default_rng(3)
    paths = [
        "/v1/models/sentiment:predict",
        "/v1/models/sentiment/feedback",
        "/v2/models/sentiment/infer",
        "/v2/models/breast-cancer/infer",
        "/v2/repository/index",
    ]
    for path in paths:
        for size in (1, 17, 4096):
            garbage = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            for headers in ({}, {"Inference-Header-Content-Length": "3"}):
                response = httpx.post(
                    f"{server.url}{path}", content=garbage, headers=headers, timeout=30
                )
                assert 400 <= response.status_code < 500, (path, size, response.text)
                assert response.json()["error"]


def _infer(server: Server, inputs: list[dict[str, Any]], model: str) -> httpx.Response:
    body = {"inputs": inputs}
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)


def test_tensor_shapes_are_limited_before_anything_is_allocated(server: Server) -> None:
    huge = _infer(
        server, [{"name": "text", "datatype": "BYTES", "shape": [10**12], "data": []}], "sentiment"
    )
    assert huge.status_code == 413
    assert f"a tensor may have at most {MAX_ELEMENTS}" in huge.json()["error"]
    deep = _infer(
        server,
        [{"name": "text", "datatype": "BYTES", "shape": [1] * 40, "data": ["a"]}],
        "sentiment",
    )
    assert deep.status_code == 400 and "40 dimensions; at most 8" in deep.json()["error"]

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    rows = grpcclient.InferInput("input", [1, 1], "FP64")
    rows.set_data_from_numpy(np.zeros((1, 1)))
    rows.set_shape([10**6, 10**6])  # a claim of 10^12 elements with 8 bytes behind it
    with pytest.raises(InferenceServerException, match="a tensor may have at most") as caught:
        client.infer("breast-cancer", [rows])
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    client.close()


def test_text_over_its_max_length_is_refused_over_v2(server: Server) -> None:
    long = "word " * 2000  # sentiment's text feature takes at most 5000 characters
    response = _infer(
        server, [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [long]}], "sentiment"
    )
    assert response.status_code == 400
    assert response.json()["violations"][0]["rule"] == "max_length"
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([long.encode()], dtype=object))
    with pytest.raises(InferenceServerException, match="at most 5000 characters") as caught:
        client.infer("sentiment", [text])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.close()
