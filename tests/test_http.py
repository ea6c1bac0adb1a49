"""The first server, on a real port: records API, health, errors, and the README's curl."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_breast_cancer

from foretell import Repository
from foretell.examples import EXAMPLES
from tests.conftest import Server

README = Path(__file__).resolve().parents[1] / "README.md"


def _strip(prediction: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prediction.items() if k not in ("prediction_id", "timings_ms")}


def test_health(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    ready = httpx.get(f"{server.url}/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


def test_catalogue_and_model_summary(server: Server) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert [m["name"] for m in models] == sorted(EXAMPLES)
    assert all(m["ready"] for m in models)
    cancer = next(m for m in models if m["name"] == "breast-cancer")
    assert (cancer["version"], cancer["versions"], cancer["task"]) == (
        "2",
        ["1", "2"],
        "classification",
    )
    summary = httpx.get(f"{server.url}/v1/models/breast-cancer").json()
    assert summary["labels"] == ["malignant", "benign"]
    assert summary["inputs"][0]["name"] == "mean radius" and len(summary["inputs"]) == 30


def test_predictions_equal_the_in_process_pipeline(server: Server, repository: Repository) -> None:
    rows = load_breast_cancer(as_frame=True).data.iloc[:40]
    records = rows.to_dict("records")
    expected = [_strip(p.to_dict()) for p in repository.load("breast-cancer").predict(records)]
    for instances in (records, rows.to_numpy().tolist()):
        response = httpx.post(
            f"{server.url}/v1/models/breast-cancer:predict", json={"instances": instances}
        )
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [_strip(p) for p in got] == expected
        assert len({p["prediction_id"] for p in got}) == 40


def test_concurrent_callers_get_their_own_rows(server: Server) -> None:
    def call(i: int) -> tuple[int, float]:
        text = f"review number {i}: " + ("great, love it" if i % 2 else "broken and awful")
        response = httpx.post(
            f"{server.url}/v1/models/sentiment:predict",
            json={"instances": [{"text": text}]},
            timeout=30,
        )
        [prediction] = response.json()["predictions"]
        return i, prediction["probabilities"]["positive"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(call, range(64)))
    for i, positive in answers:
        assert (positive > 0.5) == bool(i % 2)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("POST", "/v1/models/diabetes:predict", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/models/diabetes:predict", b'{"rows": []}', 400, '"instances"'),
        ("POST", "/v1/models/diabetes:predict", b'{"instances": 5}', 400, "must be a list"),
        (
            "POST",
            "/v1/models/diabetes:predict",
            b'{"instances": [[1, 2]]}',
            400,
            "row 0 must have 10 values",
        ),
        (
            "POST",
            "/v1/models/sentiment:predict",
            b'{"instances": [{"text": 7}]}',
            400,
            "feature 'text' must be text; got 7",
        ),
        ("POST", "/v1/models/nope:predict", b'{"instances": []}', 404, "model 'nope'"),
        ("GET", "/v1/models/nope", b"", 404, "model 'nope' is not served"),
        ("GET", "/v1/models/diabetes:predict", b"", 405, "not allowed"),
        ("GET", "/no/such/route", b"", 404, "no route"),
    ],
)
def test_errors_are_json_with_the_right_status(
    server: Server, method: str, path: str, body: bytes, status: int, needle: str
) -> None:
    response = httpx.request(method, f"{server.url}{path}", content=body)
    assert response.status_code == status
    assert needle in response.json()["error"]


def test_validation_errors_list_every_violation(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/v1/models/sentiment:predict",
        json={"instances": [{"text": "fine"}, {"text": None}, {"text": ["x"]}]},
    )
    assert response.status_code == 400
    violations = response.json()["violations"]
    assert [(v["row"], v["field"], v["rule"]) for v in violations] == [
        (1, "text", "required"),
        (2, "text", "type"),
    ]


def test_oversized_body_is_refused(server: Server) -> None:
    body = b'{"instances": [' + b'{"text": "x"},' * 3_000_000 + b'{"text": "x"}]}'
    response = httpx.post(f"{server.url}/v1/models/sentiment:predict", content=body, timeout=60)
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_a_broken_model_is_not_ready_and_the_others_serve(examples_copy: Path) -> None:
    (examples_copy / "diabetes" / "1" / "model.onnx").write_bytes(b"tampered")
    broken = Server(["--repository", str(examples_copy)], cwd=examples_copy.parent)
    try:
        ready = httpx.get(f"{broken.url}/v2/health/ready")
        assert (ready.status_code, ready.json()) == (503, {"ready": False})
        diabetes = next(
            m
            for m in httpx.get(f"{broken.url}/v1/models").json()["models"]
            if m["name"] == "diabetes"
        )
        assert diabetes["ready"] is False and "sha256" in diabetes["reason"]
        refused = httpx.post(
            f"{broken.url}/v1/models/diabetes:predict", json={"instances": [[1] * 10]}
        )
        assert refused.status_code == 503 and "not ready" in refused.json()["error"]
        ok = httpx.post(
            f"{broken.url}/v1/models/sentiment:predict", json={"instances": [{"text": "ok"}]}
        )
        assert ok.status_code == 200
    finally:
        broken.stop()


def test_default_serve_builds_the_examples_and_the_readme_curl_works(tmp_path: Path) -> None:
    """`make serve` runs `foretell serve` with no repository: the examples are built once."""
    served = Server([], cwd=tmp_path, timeout=180)
    try:
        assert sorted(p.name for p in (tmp_path / "foretell-data" / "models").iterdir()) == (
            sorted(EXAMPLES)
        )
        commands = re.findall(r"^curl .*?(?<!\\)$", README.read_text(), re.M | re.S)
        assert len(commands) == 3
        for command in commands:
            command = command.replace("localhost:8080", f"localhost:{served.port}")
            done = subprocess.run(
                ["bash", "-c", f"set -o pipefail; {command} --fail-with-body"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert '"model' in done.stdout
    finally:
        served.stop()
    again = Server([], cwd=tmp_path, timeout=60)  # the second start reuses the built examples
    again.stop()
    assert "building the example models" not in again.log.read_text()
