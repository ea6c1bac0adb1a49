"""The REST transport: KServe V1 records routes, health, feedback, monitoring and online
updates, translated to the data plane."""

from __future__ import annotations

import logging
import os
import re
import threading
import time

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foretell.errors import ForetellError, InputFormatError, NotFoundError
from foretell.monitoring import online
from foretell.monitoring.monitor import Monitor
from foretell.serving.auth import Authorise
from foretell.serving.dataplane import DataPlane
from foretell.serving.keys import KeyStore
from foretell.serving.limits import EnforceLimits, Limits
from foretell.serving.openapi import DOCS_PAGE, openapi
from foretell.serving.rest_v2 import JSON, InferRoute, read_json, v2_routes
from foretell.serving.ui import ui_routes
from foretell.serving.v2 import V2, insight_options

log = logging.getLogger("foretell.serving")
access = logging.getLogger("foretell.access")

#: Requests with larger bodies are refused before they are read in full.
MAX_BODY_BYTES = 32 * 1024 * 1024


class RequestMetrics:
    """ASGI middleware around every request: its id (``X-Request-ID``, made up when the
    caller sent none), the access log, the request metrics of model routes, and a JSON 500
    for an error nothing else answered (then raised on, for the server's log)."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app, self.plane = app, plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        started = time.perf_counter()
        request_id = request_id_of(
            next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        )
        scope.setdefault("state", {})["request_id"] = request_id

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append(
                    (b"x-request-id", request_id.encode("latin-1"))
                )
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        except Exception as exc:
            if not status:
                body = orjson.dumps({"error": f"internal error: {type(exc).__name__}"})
                await record_status(_start(500, body))
                await send({"type": "http.response.body", "body": body})
            raise
        finally:
            name = scope.get("path_params", {}).get("name")
            seconds = time.perf_counter() - started
            record_request(
                self.plane, scope["method"], scope["path"], name, status or 500, seconds, request_id
            )


_REQUEST_ID = re.compile(rb"[ -~]+")


def request_id_of(header: bytes | None) -> str:
    """The request's id: its ``X-Request-ID`` header (cut to 128 characters) when that is
    printable ASCII, else 128 random bits in hex (as a uuid4's)."""
    if header and _REQUEST_ID.fullmatch(header):
        return header[:128].decode("ascii")
    return os.urandom(16).hex()


def record_request(
    plane: DataPlane,
    method: str,
    path: str,
    name: str | None,
    status: int,
    seconds: float,
    request_id: str,
) -> None:
    """Counts a request that took ``seconds`` in the metrics of model ``name`` (None: a
    route of no model), and writes the access log's line."""
    model = None if name is None else name if name in plane.states else "(unknown)"
    if model is not None:
        protocol = "v1" if path.startswith("/v1/") else "ui" if path.startswith("/ui/") else "v2"
        metrics = plane.metrics
        metrics.child(metrics.requests, model, protocol, str(status)).inc()
        metrics.child(metrics.duration, model, protocol).observe(seconds)
    if access.isEnabledFor(logging.INFO):
        access.info(
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "request_id": request_id,
                **({"model": model} if model is not None else {}),
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
            },
        )


def _start(status: int, body: bytes) -> Message:
    """The start of a JSON response of ``body``."""
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }


def create_app(
    plane: DataPlane,
    max_body_bytes: int = MAX_BODY_BYTES,
    keys: KeyStore | None = None,
    limits: Limits | None = None,
) -> ASGIApp:
    """The ASGI app serving ``plane``'s models: KServe V1 records and the V2 protocol, the web
    pages, behind request metrics, API keys and limits."""

    async def live(request: Request) -> Response:
        return JSON({"live": True})

    async def ready(request: Request) -> Response:
        ok = plane.ready()
        return JSON({"ready": ok}, status_code=200 if ok else 503)

    async def models(request: Request) -> Response:
        return JSON({"models": plane.catalogue()})

    async def model(request: Request) -> Response:
        return JSON(plane.describe(request.path_params["name"]))

    async def predict(request: Request, explain: bool = False) -> Response:
        name = request.path_params["name"]
        plane.model(name)  # an unknown model is a 404 before the body is read
        body = await read_json(request, max_body_bytes)
        if not isinstance(body, dict) or "instances" not in body:
            raise InputFormatError(
                'the body must be a JSON object with "instances": a list of records '
                "(objects keyed by feature name) or of lists in schema order"
            )
        instances = body["instances"]
        if not isinstance(instances, list):
            raise InputFormatError(f'"instances" must be a list; got {type(instances).__name__}')
        plane.check_rows(len(instances))
        options = insight_options(body.get("parameters"), explain)
        results = await plane.predict_async(name, instances, **options)
        if results:
            log.info(
                "predicted %d rows with %s v%s",
                len(results),
                name,
                results[0].version,
                extra={
                    "request_id": request.scope["state"].get("request_id"),
                    "model": name,
                    "prediction_ids": [r.prediction_id for r in results[:100]],
                },
            )
        return JSON({"predictions": [r.to_dict() for r in results]})

    async def explain(request: Request) -> Response:
        return await predict(request, explain=True)

    def _monitor(name: str) -> Monitor:
        plane.model(name)
        if plane.monitor is None:
            raise NotFoundError("monitoring is off on this server (started with --no-monitoring)")
        return plane.monitor

    async def feedback(request: Request) -> Response:
        name = request.path_params["name"]
        monitor = _monitor(name)
        body = await read_json(request, max_body_bytes)
        items = body.get("feedback", [body]) if isinstance(body, dict) else body
        if (
            not isinstance(items, list)
            or not items
            or not all(
                isinstance(i, dict)
                and isinstance(i.get("prediction_id"), str)
                and "ground_truth" in i
                for i in items
            )
        ):
            raise InputFormatError(
                'feedback must be {"prediction_id": "...", "ground_truth": ...}, a list of '
                'them, or {"feedback": [...]}'
            )
        pairs = [(i["prediction_id"], i["ground_truth"]) for i in items]
        spec = plane.model(name).spec
        stored = await run_in_threadpool(monitor.feedback, spec, pairs)
        return JSON({"accepted": stored})

    async def monitoring(request: Request) -> Response:
        name = request.path_params["name"]
        monitor = _monitor(name)
        window = request.query_params.get("window")
        try:
            seconds = float(window) if window is not None else None
        except ValueError:
            raise InputFormatError(f"window must be a number of seconds; got {window!r}") from None
        if seconds is not None and seconds <= 0:
            raise InputFormatError(f"window must be positive; got {window}")
        spec = plane.model(name).spec
        return JSON(await run_in_threadpool(monitor.report, spec, seconds))

    # one update or rollback of a model at a time; each reads and writes its policy.yaml
    changing: dict[str, threading.Lock] = {}

    def _changing(name: str) -> threading.Lock:
        return changing.setdefault(name, threading.Lock())

    async def update(request: Request) -> Response:
        name = request.path_params["name"]
        monitor = _monitor(name)
        body = await read_json(request, max_body_bytes, default={})
        holdout = body.get("holdout", 0.2) if isinstance(body, dict) else None
        if isinstance(holdout, bool) or not isinstance(holdout, int | float):
            raise InputFormatError(
                'the body must be empty or {"holdout": SHARE}, the share of the most recent '
                f"labelled predictions held back to compare versions; got {body!r}"
            )

        def learn() -> online.Update:
            with _changing(name):
                result = online.update(plane.repository, monitor.store, name, float(holdout))
                if result.promoted:
                    plane.load(name)
                return result

        result = await run_in_threadpool(learn)
        if result.promoted:
            await plane.share("load", name)
        return JSON(result.to_dict())

    async def rollback(request: Request) -> Response:
        name = request.path_params["name"]

        def back() -> dict[str, object]:
            with _changing(name):
                result = online.rollback(plane.repository, name)
                state = plane.load(name)
                return {**result.to_dict(), "ready": state.ready}

        answer = await run_in_threadpool(back)
        await plane.share("load", name)
        return JSON(answer)

    async def posterior(request: Request) -> Response:
        model = plane.model(request.path_params["name"])
        level = request.query_params.get("level")
        try:
            asked = float(level) if level is not None else None
        except ValueError:
            raise InputFormatError(f"level must be a number in (0, 1); got {level!r}") from None
        return JSON(await run_in_threadpool(online.posterior, model, asked))

    async def metrics(request: Request) -> Response:
        return Response(plane.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(request: Request) -> Response:
        return JSON(openapi(plane))

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE)

    async def foretell_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ForetellError)
        return JSON(exc.to_json(), status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        messages = {404: f"no route {request.url.path}", 405: f"{request.method} not allowed"}
        message = messages.get(exc.status_code, str(exc.detail))
        return JSON({"error": message}, status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSON({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    from swagger_ui_bundle import swagger_ui_path

    routes = [
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
        Route("/docs", docs),
        Mount("/docs/static", StaticFiles(directory=swagger_ui_path)),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v1/models", models),
        Route("/v1/models/{name:model}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name:model}:explain", explain, methods=["POST"]),
        Route("/v1/models/{name:model}/feedback", feedback, methods=["POST"]),
        Route("/v1/models/{name:model}/monitoring", monitoring),
        Route("/v1/models/{name:model}/update", update, methods=["POST"]),
        Route("/v1/models/{name:model}/rollback", rollback, methods=["POST"]),
        Route("/v1/models/{name:model}/posterior", posterior),
        Route("/v1/models/{name:model}", model),
    ]
    pages = Starlette(
        routes=[
            *routes,
            *v2_routes(V2(plane), max_body_bytes),
            *ui_routes(plane, max_body_bytes, keys),
        ],
        exception_handlers={
            ForetellError: foretell_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
    app: ASGIApp = Dispatch(
        InferRoute(V2(plane), max_body_bytes, limits),
        pages if limits is None else EnforceLimits(pages, limits),
    )
    if keys is not None:
        app = Authorise(app, keys)
    return RequestMetrics(app, plane)


class Dispatch:
    """ASGI: the V2 infer route served bare (the hot path), every other route by ``app``."""

    def __init__(self, infer: InferRoute, app: ASGIApp) -> None:
        self.infer, self.app = infer, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            params = self.infer.match(scope["path"])
            if params is not None:
                scope["path_params"] = params
                await self.infer(scope, receive, send)
                return
        await self.app(scope, receive, send)
