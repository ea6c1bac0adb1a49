"""OpenAPI document and interactive docs: every REST route, each model's input schema."""

from __future__ import annotations

import httpx

from foretell.examples import EXAMPLES
from tests.conftest import Server


def test_openapi_covers_every_route_and_model(server: Server) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.0")
    paths = set(doc["paths"])
    for route in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v1/models",
        "/v1/models/{name}",
        "/v2",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/repository/index",
        "/v2/repository/models/{name}/load",
        "/v2/repository/models/{name}/unload",
    ):
        assert route in paths, route
    for model in EXAMPLES:
        assert f"/v1/models/{model}:predict" in paths
    fraud = doc["components"]["schemas"]["CardFraudRecord"]
    assert fraud["properties"]["hour"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 23,
        "description": "hour of day, local time",
    }
    assert "jewellery" in fraud["properties"]["merchant_category"]["enum"]
    assert "amount" in fraud["required"]


def test_docs_page_is_served_without_the_internet(server: Server) -> None:
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{server.url}/docs/static/{asset}").status_code == 200
    assert "https://" not in page.text
