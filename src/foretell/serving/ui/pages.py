"""The web pages' routes: catalogue, a model's form and results, feedback, monitoring, sign-in.

Every page is rendered on the server and works without JavaScript. Errors a person can cause
come back as a page (the form again, each message next to its field), never as JSON or a 500.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import pandas as pd
from jinja2 import Environment, PackageLoader
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Message

from foretell.errors import ForetellError, InputFormatError, NotFoundError, ValidationError
from foretell.monitoring.monitor import Monitor
from foretell.pipeline import Prediction
from foretell.repository.spec import ModelSpec
from foretell.serving.auth import COOKIE, SIGN_IN
from foretell.serving.dataplane import DataPlane
from foretell.serving.keys import ApiKey, KeyStore
from foretell.serving.rest_v2 import read_body
from foretell.serving.ui import charts, dashboard, forms, results
from foretell.serving.ui.downloads import Downloads
from foretell.serving.ui.traffic import Traffic

TEMPLATES = Jinja2Templates(
    env=Environment(
        loader=PackageLoader("foretell.serving.ui"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
#: How many rows of an uploaded file the page shows; the download has them all.
SHOWN_ROWS = 20
#: The windows the monitoring page offers, in seconds, with their names.
WINDOWS = {3600: "Last hour", 86_400: "Last day", 604_800: "Last week"}
#: How often the monitoring page refreshes itself, in seconds.
REFRESH_SECONDS = 10

Handler = Callable[[Request], Awaitable[Response]]


def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """``template`` rendered with ``context`` and what every page shows."""
    signed_in = COOKIE in request.cookies and "api_key" in request.scope.get("state", {})
    return TEMPLATES.TemplateResponse(
        request, template, {"signed_in": signed_in, **context}, status_code=status
    )


def _allows(request: Request, scope: str) -> bool:
    """Whether the caller's key grants ``scope``; always, when the server asks for no keys."""
    key: ApiKey | None = request.scope.get("state", {}).get("api_key")
    return key is None or key.allows(scope)


def as_page(handler: Handler) -> Handler:
    """``handler`` with foretell errors answered as an error page of the error's status."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ForetellError as exc:
            return page(request, "error.html", exc.status, message=exc.message)

    return guarded


class Pages:
    """The pages of one server: its data plane, body limit and key store."""

    def __init__(self, plane: DataPlane, max_body_bytes: int, keys: KeyStore | None) -> None:
        self.plane, self.limit, self.keys = plane, max_body_bytes, keys
        self.traffic = Traffic(plane.metrics)
        self.downloads = Downloads()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", as_page(self.catalogue)),
            Route(SIGN_IN, as_page(self.sign_in), methods=["GET", "POST"]),
            Route("/ui/sign-out", self.sign_out, methods=["POST"]),
            Route("/ui/models/{model:model}", as_page(self.model_page)),
            # Only here is the parameter ``name``, which the request metrics count by:
            # predictions made from the page count as requests, page views do not.
            Route("/ui/models/{name:model}", as_page(self.predict), methods=["POST"]),
            Route("/ui/models/{model:model}/feedback", as_page(self.feedback), methods=["POST"]),
            Route("/ui/models/{model:model}/monitoring", as_page(self.monitoring)),
            Route("/ui/models/{model:model}/results/{token}", as_page(self.download)),
            Mount("/ui/static", StaticFiles(packages=[("foretell.serving.ui", "static")])),
        ]

    async def catalogue(self, request: Request) -> Response:
        models = []
        for entry in self.plane.catalogue():
            if not _allows(request, f"predict:{entry['name']}"):
                continue
            state = self.plane.states[entry["name"]]
            description = state.model.spec.description if state.model is not None else ""
            monitor = _allows(request, f"monitor:{entry['name']}")
            models.append({**entry, "description": description, "monitor": monitor})
        return page(request, "catalogue.html", models=models)

    def _model_page(
        self, request: Request, spec: ModelSpec, status: int = 200, **context: Any
    ) -> Response:
        context.setdefault("fields", forms.fields(spec))
        context.setdefault("insight", forms.insight(spec))
        return page(
            request,
            "model.html",
            status,
            spec=spec,
            monitor=_allows(request, f"monitor:{spec.name}"),
            feedback=self.plane.monitor is not None and _allows(request, f"feedback:{spec.name}"),
            **context,
        )

    async def model_page(self, request: Request) -> Response:
        spec = self.plane.model(request.path_params["model"]).spec
        thanked = request.query_params.get("feedback")
        return self._model_page(request, spec, thanked=thanked)

    async def predict(self, request: Request) -> Response:
        name = request.path_params["name"]
        spec = self.plane.model(name).spec
        form = await self._form(request)
        try:
            upload = form.get("file")
            if isinstance(upload, UploadFile):
                return await self._predict_file(request, spec, await upload.read())
            submitted = {k: [str(v) for v in form.getlist(k)] for k in form}
            return await self._predict_row(request, spec, submitted)
        finally:
            await form.close()

    async def _predict_row(
        self, request: Request, spec: ModelSpec, submitted: forms.Submitted
    ) -> Response:
        record = forms.row(spec, submitted)
        insight = forms.insight(spec, submitted)
        try:
            predictions, notes = await self._predictions(spec, record, forms.options(insight))
        except ValidationError as exc:
            return self._model_page(
                request,
                spec,
                exc.status,
                fields=forms.fields(spec, submitted, exc.violations),
                problems=[(v.field, v.message) for v in exc.violations],
                insight=insight,
            )
        found = predictions[0]
        fields = forms.fields(spec, submitted, flags=found.flags)
        if found.error is not None:
            problems = [("", found.error)]
            return self._model_page(
                request, spec, 400, fields=fields, problems=problems, insight=insight
            )
        shown = results.result(spec, found.to_dict())
        return self._model_page(
            request, spec, fields=fields, result=shown, notes=notes, insight=insight
        )

    async def _predictions(
        self, spec: ModelSpec, record: dict[str, Any], options: dict[str, Any]
    ) -> tuple[list[Prediction], list[str]]:
        """The prediction with the insight asked for; without it, and a note saying why, when
        the model cannot give it."""
        try:
            return await self.plane.predict_async(spec.name, [record], **options), []
        except ValidationError:
            raise
        except ForetellError as exc:
            if not options:
                raise
            note = f"Shown without an explanation or uncertainty: {exc.message}"
            return await self.plane.predict_async(spec.name, [record]), [note]

    async def _predict_file(self, request: Request, spec: ModelSpec, data: bytes) -> Response:
        try:
            frame = _read_csv(spec, data)
            self.plane.check_rows(len(frame))
            predictions = await self.plane.predict_async(spec.name, frame)
        except ValidationError as exc:
            problems = [("", f"row {v.row + 1}: {v.message}") for v in exc.violations[:SHOWN_ROWS]]
            if len(exc.violations) > SHOWN_ROWS:
                problems.append(("", f"and {len(exc.violations) - SHOWN_ROWS} more"))
            return self._model_page(request, spec, exc.status, problems=problems, upload=True)
        except ForetellError as exc:
            return self._model_page(
                request, spec, exc.status, problems=[("", exc.message)], upload=True
            )
        table = pd.DataFrame([results.flat(p.to_dict()) for p in predictions])
        out = pd.concat([frame.reset_index(drop=True), table], axis=1)
        token = self.downloads.put(spec.name, out.to_csv(index=False).encode())
        decisions = Counter(str(p.decision) for p in predictions if p.error is None)
        batch = {
            "rows": len(predictions),
            "failed": sum(p.error is not None for p in predictions),
            "columns": list(table.columns),
            "head": [
                {k: results.as_text(v) for k, v in r.items()}
                for r in table.head(SHOWN_ROWS).to_dict("records")
            ],
            "download": f"/ui/models/{quote(spec.name)}/results/{token}",
            "decisions": charts.bar_chart(dict(decisions.most_common()), "Rows per decision")
            if decisions
            else None,
        }
        return self._model_page(request, spec, batch=batch)

    async def download(self, request: Request) -> Response:
        name = request.path_params["model"]
        content = self.downloads.get(name, request.path_params["token"])
        if content is None:
            raise NotFoundError(
                f"these results are no longer kept (they are kept {self.downloads.seconds / 60:g}"
                " minutes); upload the file again"
            )
        disposition = f'attachment; filename="{name}-predictions.csv"'
        return Response(
            content, media_type="text/csv", headers={"Content-Disposition": disposition}
        )

    def _monitor(self) -> Monitor:
        if self.plane.monitor is None:
            raise NotFoundError("monitoring is off on this server (started with --no-monitoring)")
        return self.plane.monitor

    async def feedback(self, request: Request) -> Response:
        name = request.path_params["model"]
        spec = self.plane.model(name).spec
        monitor = self._monitor()
        form = await self._form(request)
        prediction = str(form.get("prediction_id", ""))
        truth = results.truth(spec, str(form.get("truth", "")))
        await run_in_threadpool(monitor.feedback, spec, [(prediction, truth)])
        return RedirectResponse(
            f"/ui/models/{quote(name)}?feedback={quote(prediction)}", status_code=303
        )

    async def monitoring(self, request: Request) -> Response:
        spec = self.plane.model(request.path_params["model"]).spec
        self.traffic.sample()
        given = request.query_params.get("window", "86400")
        window = int(given) if given.isdigit() and int(given) in WINDOWS else 86_400
        now = time.time()
        context: dict[str, Any] = {
            "spec": spec,
            "windows": WINDOWS,
            "window": window,
            "refresh": _seconds(request.query_params.get("refresh"), REFRESH_SECONDS),
            "updated": time.strftime("%H:%M:%S", time.localtime(now)),
            "traffic": dashboard.traffic(self.traffic.history(spec.name)),
        }
        monitor = self.plane.monitor
        if monitor is not None:
            report = await run_in_threadpool(monitor.report, spec, float(window))
            context.update(
                report=report,
                drift=dashboard.drift(spec, report),
                quality=dashboard.quality_table(report),
                quality_chart=await run_in_threadpool(
                    dashboard.quality_over_time, monitor.store, spec, float(window), now
                ),
            )
        return page(request, "monitoring.html", **context)

    async def sign_in(self, request: Request) -> Response:
        target = _local(request.query_params.get("next", "/"))
        context: dict[str, Any] = {
            "next": target,
            "needs": request.query_params.get("scope"),
            "auth": self.keys,
        }
        if request.method == "GET":
            return page(request, "signin.html", **context)
        form = await self._form(request)
        presented = str(form.get("key", "")).strip()
        if self.keys is None or self.keys.verify(presented) is None:
            message = "this key is not valid here: paste the whole key, ft_..._..."
            return page(request, "signin.html", 401, error=message, **context)
        response = RedirectResponse(_local(str(form.get("next", target))), status_code=303)
        response.set_cookie(
            COOKIE,
            presented,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def sign_out(self, request: Request) -> Response:
        response = RedirectResponse(SIGN_IN, status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response

    async def _form(self, request: Request) -> FormData:
        """The posted form, its body bounded by the server's limit like every other body."""
        body = await read_body(request, self.limit)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            return await Request(request.scope, replay).form(max_files=1, max_part_size=self.limit)
        except HTTPException as exc:  # a malformed multipart body
            raise InputFormatError(f"the form cannot be read: {exc.detail}") from None


def _read_csv(spec: ModelSpec, data: bytes) -> pd.DataFrame:
    """An uploaded CSV file as rows; category and text columns stay text ("007" is not 7)."""
    texts = {f.name: str for f in spec.inputs if f.dtype in ("category", "text")}
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=texts)
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
        raise InputFormatError(
            f"the file is not a CSV file with a header row naming the inputs: {exc}"
        ) from None
    missing = [f.name for f in spec.inputs if f.name not in frame.columns and not f.nullable]
    if missing:
        raise InputFormatError(
            f"the file's header must name every input; missing: {', '.join(missing)}"
        )
    if frame.empty:
        raise InputFormatError("the file has a header but no rows")
    return frame


def _seconds(given: str | None, default: int) -> int:
    """A refresh interval asked for in the query, kept between 2 seconds and an hour."""
    return min(max(int(given), 2), 3600) if given is not None and given.isdigit() else default


def _local(target: str) -> str:
    """``target`` when it is a path on this server, else ``/``: no redirects elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"
