"""The V2 infer route's fast path: which requests it takes, and that it answers exactly as the
ASGI path does (a percent-encoded path takes the ASGI path, which decodes it)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest
from sklearn.datasets import load_breast_cancer

from foretell import Repository
from foretell.serving.dataplane import DataPlane
from foretell.serving.fastpath import FastCycle, FastInfer
from foretell.serving.keys import KeyStore
from foretell.serving.limits import Limits, RateLimiter
from tests.conftest import Server

FAST = "/v2/models/breast-cancer/infer"
SLOW = "/v2/models/breast%2Dcancer/infer"  # the same route, through the ASGI app
ROWS = load_breast_cancer().data


def body(rows: int = 1, **extra: Any) -> bytes:
    tensor = {"name": "input", "datatype": "FP64", "shape": [rows, 30]}
    return json.dumps(
        {"inputs": [{**tensor, "data": ROWS[:rows].ravel().tolist()}], **extra}
    ).encode()


def taken(fast: FastInfer, request: bytes) -> FastCycle | None:
    """What ``fast.take`` makes of the head of ``request``, parsed by httptools."""

    class Head:
        def __init__(self) -> None:
            self.url = b""
            self.headers: list[tuple[bytes, bytes]] = []
            self.result: FastCycle | None = None

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.lower(), value))

        def on_headers_complete(self) -> None:
            self.result = fast.take(parser, self.url, self.headers)

    head = Head()
    parser = httptools.HttpRequestParser(head)
    parser.feed_data(request.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")  # the head alone
    return head.result


@pytest.fixture(scope="module")
def fast(repository: Repository) -> FastInfer:
    return FastInfer(DataPlane(repository), max_body_bytes=1000)


def test_the_fast_path_takes_plain_infer_requests_and_leaves_the_rest(fast: FastInfer) -> None:
    plain = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    cycle = taken(fast, plain)
    assert cycle is not None and (cycle.name, cycle.version, cycle.keep_alive) == ("m", None, True)
    versioned = plain.replace(b"/m/infer", b"/m/versions/3/infer")
    cycle = taken(fast, versioned)
    assert cycle is not None and (cycle.name, cycle.version) == ("m", "3")
    closing = plain.replace(b"Host: x", b"Connection: close")
    cycle = taken(fast, closing)
    assert cycle is not None and not cycle.keep_alive
    identity = plain.replace(b"Host: x", b"Content-Encoding: identity")
    assert taken(fast, identity) is not None
    others = {
        "GET": plain.replace(b"POST", b"GET"),
        "another route": plain.replace(b"/infer", b"/ready"),
        "percent-encoded": plain.replace(b"/m/", b"/%6D/"),
        "a query": plain.replace(b"/infer", b"/infer?x=1"),
        "HTTP/1.0": plain.replace(b"HTTP/1.1", b"HTTP/1.0"),
        "no length": plain.replace(b"Content-Length: 2", b"Transfer-Encoding: chunked"),
        "over the limit": plain.replace(b"Content-Length: 2", b"Content-Length: 1001"),
        "gzip": plain.replace(b"Host: x", b"Content-Encoding: gzip"),
        "Expect": plain.replace(b"Host: x", b"Expect: 100-continue"),
    }
    for why, request in others.items():
        assert taken(fast, request) is None, why


def test_rates_per_client_address_take_the_asgi_path(repository: Repository) -> None:
    plain = b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    plane = DataPlane(repository)
    limits = Limits(rate=RateLimiter(10.0, 10))
    assert taken(FastInfer(plane, limits=limits), plain) is None  # the proxy headers say who
    keyed = FastInfer(plane, KeyStore(Path("/nonexistent/keys.json")), limits)
    assert taken(keyed, plain) is not None  # the key says who


def _same(fast: httpx.Response, slow: httpx.Response) -> None:
    assert fast.status_code == slow.status_code
    assert fast.headers["content-type"] == slow.headers["content-type"]
    assert fast.headers["x-request-id"] and slow.headers["x-request-id"]
    one, other = fast.json(), slow.json()
    if "outputs" in one:  # every output but the prediction ids, which are new each time
        for answer in (one, other):
            answer["outputs"] = [o for o in answer["outputs"] if o["name"] != "prediction_id"]
    assert one == other


@pytest.mark.parametrize(
    "content",
    [
        body(1),
        body(32),
        body(2, outputs=[{"name": "label"}], id="call-7"),
        body(1, outputs=[{"name": "nope"}]),
        b"{not json",
        b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 3], "data": [1,2,3]}]}',
        b"",
    ],
)
def test_both_paths_give_the_same_answers(server: Server, content: bytes) -> None:
    with httpx.Client(base_url=server.url) as client:
        fast = client.post(FAST, content=content)
        slow = client.post(SLOW, content=content)
    _same(fast, slow)


def test_both_paths_give_the_same_errors_for_unknown_models_and_versions(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        for fast, slow in [
            ("/v2/models/nope/infer", "/v2/models/n%6Fpe/infer"),
            (
                "/v2/models/breast-cancer/versions/9/infer",
                SLOW.replace("/infer", "/versions/9/infer"),
            ),
        ]:
            _same(client.post(fast, content=body()), client.post(slow, content=body()))
            assert client.post(fast, content=body()).status_code == 404


def test_request_ids_metrics_and_keep_alive(server: Server) -> None:
    def served() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        line = 'foretell_requests_total{model="breast-cancer",protocol="v2",status="200"}'
        return sum(float(s.split()[-1]) for s in text.splitlines() if s.startswith(line))

    before = served()
    with httpx.Client(base_url=server.url) as client:
        for i in range(5):
            answer = client.post(FAST, content=body(), headers={"X-Request-ID": f"mine-{i}"})
            assert answer.status_code == 200 and answer.headers["x-request-id"] == f"mine-{i}"
        weird = client.post(FAST, content=body(), headers={b"X-Request-ID": b"caf\xe9"})
        assert len(weird.headers["x-request-id"]) == 32  # not ASCII: a new id instead
        long = client.post(FAST, content=body(), headers={"X-Request-ID": "x" * 200})
        assert long.headers["x-request-id"] == "x" * 128
    assert served() == before + 7


def _raw(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` HTTP responses read from ``sock``: status, headers and body each."""
    data, answers = b"", list[tuple[int, dict[str, str], bytes]]()
    deadline = time.monotonic() + 10
    while len(answers) < count and time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode().split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            length = int(headers["content-length"])
            if len(rest) >= length:
                answers.append((int(lines[0].split()[1]), headers, rest[:length]))
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return answers


def _request(content: bytes, path: str = FAST, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(content)}\r\n{extra}\r\n"
    return head.encode() + content


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    with _raw(server) as sock:
        # fast, ASGI, fast and a broken one, in one write: each answered, in order
        sock.sendall(
            _request(body(1))
            + _request(body(2), SLOW)
            + _request(body(3))
            + _request(b"{", extra="X-Request-ID: last\r\n")
        )
        answers = _responses(sock, 4)
    assert [status for status, _, _ in answers] == [200, 200, 200, 400]
    shapes = [json.loads(b)["outputs"][0]["shape"] for _, _, b in answers[:3]]
    assert shapes == [[1], [2], [3]]
    assert answers[3][1]["x-request-id"] == "last"


def test_a_body_in_pieces_and_connection_close(server: Server) -> None:
    content = body(4)
    with _raw(server) as sock:
        request = _request(content, extra="Connection: close\r\n")
        sock.sendall(request[:50])
        time.sleep(0.1)
        sock.sendall(request[50:400])
        time.sleep(0.1)
        sock.sendall(request[400:])
        [(status, headers, answer)] = _responses(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert json.loads(answer)["outputs"][0]["shape"] == [4]
        assert sock.recv(1) == b""  # the server closed the connection


def test_a_client_that_leaves_mid_body_harms_no_one(server: Server) -> None:
    for _ in range(3):
        with _raw(server) as sock:
            sock.sendall(_request(body(8))[:300])
    answer = httpx.post(f"{server.url}{FAST}", content=body())
    assert answer.status_code == 200


def test_an_early_answer_keeps_the_connection_in_step(server: Server) -> None:
    """An unknown model is answered before its body has arrived; the rest of the body is
    read and dropped, and the next request on the connection is answered as usual."""
    content = body(16)
    with _raw(server) as sock:
        request = _request(content, "/v2/models/nope/infer")
        sock.sendall(request[:200])
        [(status, _, answer)] = _responses(sock, 1)
        assert status == 404 and "nope" in json.loads(answer)["error"]
        sock.sendall(request[200:] + _request(body(2)))
        [(status, _, answer)] = _responses(sock, 1)
    assert status == 200 and json.loads(answer)["outputs"][0]["shape"] == [2]
