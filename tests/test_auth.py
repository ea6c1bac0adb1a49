"""API keys: every route x {no key, wrong key, key without scope, key with scope}, REST and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from foretell.cli import app
from foretell.serving.auth import auth_by_default, required_scope
from foretell.serving.keys import KeyStore
from tests.conftest import Server

INFER = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
#: (method, path, json body, the scope a key needs)
ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/v1/models", None, "predict:sentiment"),
    ("GET", "/v1/models/sentiment", None, "predict:sentiment"),
    ("POST", "/v1/models/sentiment:predict", {"instances": [{"text": "ok"}]}, "predict:sentiment"),
    (
        "POST",
        "/v1/models/sentiment/feedback",
        {"prediction_id": "p1", "ground_truth": "positive"},
        "feedback:sentiment",
    ),
    ("GET", "/v1/models/sentiment/monitoring", None, "monitor:sentiment"),
    ("GET", "/metrics", None, "monitor:*"),
    ("GET", "/v2", None, "predict:sentiment"),
    ("GET", "/v2/models/sentiment", None, "predict:sentiment"),
    ("GET", "/v2/models/sentiment/ready", None, "predict:sentiment"),
    ("POST", "/v2/models/sentiment/infer", INFER, "predict:sentiment"),
    ("POST", "/v2/models/sentiment/versions/1/infer", INFER, "predict:sentiment"),
    ("POST", "/v2/repository/index", {}, "admin"),
    ("POST", "/v2/repository/models/sentiment/load", {}, "admin"),
]


@pytest.fixture(scope="module")
def secured(examples_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("auth")
    store = KeyStore(folder / "keys.json")
    keys = {scope: store.create(scope, [scope])[0] for scope in {r[3] for r in ROUTES}}
    keys["other"] = store.create("other", ["monitor:diabetes"])[0]
    running = Server(
        ["--repository", str(examples_root), "--auth", "--keys", str(folder / "keys.json")],
        cwd=folder,
    )
    yield running, keys, folder
    running.stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "scope"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES]
)
def test_route_matrix(secured: Any, method: str, path: str, body: Any, scope: str) -> None:
    running, keys, _ = secured

    def call(key: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, f"{running.url}{path}", json=body, headers=headers, timeout=30)

    missing, wrong = call(None), call("ft_000000000000_" + "x" * 43)
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert "valid API key is required" in missing.json()["error"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    forbidden = call(keys["other"])
    assert forbidden.status_code == 403
    assert f"lacks the scope '{required_scope(path)}'" in forbidden.json()["error"]
    allowed = call(keys[scope])
    assert 200 <= allowed.status_code < 300, allowed.text


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs"])
def test_health_and_docs_stay_open(secured: Any, path: str) -> None:
    running, _, _ = secured
    assert httpx.get(f"{running.url}{path}").status_code == 200


def test_grpc_needs_a_key_with_the_scope(secured: Any) -> None:
    running, keys, _ = secured
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{running.grpc_port}")
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"fine"], dtype=object))
    for headers, status in (
        (None, "StatusCode.UNAUTHENTICATED"),
        ({"authorization": f"Bearer {keys['other']}"}, "StatusCode.PERMISSION_DENIED"),
    ):
        with pytest.raises(InferenceServerException) as caught:
            client.infer("sentiment", [text], headers=headers)
        assert caught.value.status() == status
    result = client.infer(
        "sentiment", [text], headers={"authorization": f"Bearer {keys['predict:sentiment']}"}
    )
    assert result.as_numpy("label").shape == (1,)
    assert client.is_server_live()  # health stays open over gRPC too
    client.close()


def test_keys_are_stored_hashed_and_never_logged(secured: Any) -> None:
    running, keys, folder = secured
    stored = (folder / "keys.json").read_text()
    log = running.log.read_text()
    for key in keys.values():
        secret = key.split("_", 2)[2]
        assert secret not in stored and secret not in log
    assert (folder / "keys.json").stat().st_mode & 0o077 == 0


def test_keys_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    store = str(tmp_path / "k.json")
    created = runner.invoke(
        app, ["keys", "create", "--scope", "predict:*", "--name", "ci", "--keys", store]
    )
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    key = KeyStore(store).verify(secret)
    assert key is not None and key.scopes == ["predict:*"]
    listing = runner.invoke(app, ["keys", "list", "--keys", store])
    assert key.id in listing.stdout and secret.split("_", 2)[2] not in listing.stdout
    bad = runner.invoke(app, ["keys", "create", "--scope", "everything", "--keys", store])
    assert bad.exit_code == 2 and "scopes must be" in bad.stderr
    assert runner.invoke(app, ["keys", "revoke", key.id, "--keys", store]).exit_code == 0
    assert KeyStore(store).verify(secret) is None


def test_auth_is_on_by_default_off_loopback() -> None:
    assert auth_by_default("0.0.0.0") and auth_by_default("10.1.2.3") and auth_by_default("::")
    assert not auth_by_default("127.0.0.1") and not auth_by_default("localhost")
    assert not auth_by_default("::1")


def test_required_scopes() -> None:
    assert required_scope("/v1/models/a:predict") == "predict:a"
    assert required_scope("/v2/repository/index") == "admin"
    assert required_scope("/anything/else") == "admin"
    assert required_scope("/v2/health/live") is None
