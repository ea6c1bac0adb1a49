"""A Python client for a foretell server's records API (KServe V1), sync and async.

    with Client("http://localhost:8080") as client:
        [result] = client.predict("sentiment", [{"text": "works great"}])
        result.label, result.probabilities, result.decision

:class:`Client` and :class:`AsyncClient` have the same methods and answer with the same
typed results. What a call sends and how its answer is read live once, in :class:`_Call`;
the two clients differ only in how they carry the request. The server's error answers come
back as foretell's own exceptions (:mod:`foretell.errors`), so code catching
``NotFoundError`` or ``ValidationError`` works the same against a local model and a server;
an unreachable server is a :class:`~foretell.errors.ForetellError` naming the URL.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
import orjson

from foretell.errors import (
    ForetellError,
    InputFormatError,
    ModelLoadError,
    NotFoundError,
    ValidationError,
    Violation,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    import pandas as pd

    #: What :meth:`Client.predict` takes: records (dicts keyed by feature name), rows as lists
    #: in schema order, or a pandas DataFrame.
    Rows: TypeAlias = Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]] | pd.DataFrame

__all__ = ["AsyncClient", "Client", "ModelInfo", "PredictionResult"]

T = TypeVar("T")

#: The keys of a prediction that are not model outputs; every other key is an output.
ENVELOPE = frozenset(
    {"prediction_id", "model", "version", "decision", "flags", "error", "timings_ms"}
)


@dataclass(frozen=True)
class ModelInfo:
    """A served model. From :meth:`Client.models`, ``description``, ``inputs`` and ``labels``
    are unknown (None or empty); :meth:`Client.model` fills them in."""

    name: str
    version: str | None
    versions: list[str]
    task: str | None
    format: str | None
    #: Whether the model is loaded and answering. The server describes only loaded models,
    #: so a :meth:`Client.model` answer is always ready.
    ready: bool
    description: str | None = None
    #: The input schema, one dict per feature in order (``name``, ``dtype``, ``min``, ...).
    inputs: list[dict[str, Any]] = field(default_factory=list)
    #: Class or cluster names, for the tasks that have them.
    labels: list[str] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, ready: bool | None = None) -> ModelInfo:
        return cls(
            name=data["name"],
            version=data.get("version"),
            versions=list(data.get("versions") or []),
            task=data.get("task"),
            format=data.get("format"),
            ready=bool(data.get("ready")) if ready is None else ready,
            description=data.get("description"),
            inputs=list(data.get("inputs") or []),
            labels=data.get("labels"),
        )


@dataclass(frozen=True)
class PredictionResult:
    """One row's result. ``outputs`` holds what the task produces (``label``,
    ``probabilities``, ``value``, ``cluster``, ``score``, ``items``, ...); it is empty, and
    ``error`` says why, when the row was unusable."""

    prediction_id: str
    model: str
    version: str
    decision: str | None
    outputs: dict[str, Any]
    #: The rules a flagged (but still scored) row broke: ``row``, ``field``, ``rule``,
    #: ``message``.
    flags: list[dict[str, Any]]
    error: str | None
    timings_ms: dict[str, float]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PredictionResult:
        return cls(
            prediction_id=data["prediction_id"],
            model=data["model"],
            version=data["version"],
            decision=data.get("decision"),
            outputs={k: v for k, v in data.items() if k not in ENVELOPE},
            flags=list(data.get("flags") or []),
            error=data.get("error"),
            timings_ms=dict(data.get("timings_ms") or {}),
        )

    @property
    def label(self) -> Any:
        """The predicted class, or None when the task has none."""
        return self.outputs.get("label")

    @property
    def probabilities(self) -> dict[str, float] | None:
        """Each class's probability, or None when the task has none."""
        probabilities: dict[str, float] | None = self.outputs.get("probabilities")
        return probabilities

    @property
    def value(self) -> float | None:
        """The regression value, or None when the task has none."""
        value: float | None = self.outputs.get("value")
        return value


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request of the records API and how to read its answer, shared by both clients."""

    method: str
    path: str
    read: Callable[[Any], T]
    body: bytes | None = None
    #: Statuses whose body is an answer rather than an error (readiness answers 503).
    answers: frozenset[int] = frozenset({200})

    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json"} if self.body is not None else {}

    def result(self, response: httpx.Response) -> T:
        """The decoded answer, or the server's error raised as foretell's own exception."""
        if response.status_code not in self.answers:
            raise _error(response)
        body = _json(response)
        try:
            return self.read(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise ForetellError(
                f"{response.request.url} answered with an unexpected body "
                f"({type(exc).__name__}: {exc}): {response.text[:200]!r}"
            ) from None


def _live() -> _Call[bool]:
    return _Call("GET", "/v2/health/live", lambda body: bool(body["live"]))


def _ready() -> _Call[bool]:
    return _Call(
        "GET", "/v2/health/ready", lambda body: bool(body["ready"]), answers=frozenset({200, 503})
    )


def _models() -> _Call[list[ModelInfo]]:
    return _Call("GET", "/v1/models", lambda body: [ModelInfo.from_json(m) for m in body["models"]])


def _model(name: str) -> _Call[ModelInfo]:
    return _Call("GET", _path(name), lambda body: ModelInfo.from_json(body, ready=True))


def _predict(name: str, rows: Rows) -> _Call[list[PredictionResult]]:
    return _Call(
        "POST",
        f"{_path(name)}:predict",
        lambda body: [PredictionResult.from_json(p) for p in body["predictions"]],
        body=_encode({"instances": _instances(rows)}),
    )


def _path(name: str) -> str:
    return f"/v1/models/{quote(name, safe='')}"


def _instances(rows: Rows) -> Any:
    """Rows as JSON-ready instances; a DataFrame becomes records (pandas is not imported)."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(rows, pandas.DataFrame):
        return rows.to_dict("records")
    return rows


def _encode(content: Any) -> bytes:
    """JSON with numpy values as numbers and NaN as null (a missing value), as the server reads."""
    try:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise InputFormatError(f"the rows cannot be sent as JSON: {exc}") from None


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ForetellError(
            f"{response.request.url} answered {response.status_code} with a body that is not "
            f"JSON: {response.text[:200]!r}"
        ) from None


def _error(response: httpx.Response) -> ForetellError:
    """The server's error answer as foretell's exception, keeping its message and status."""
    status = response.status_code
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message: str = body["error"]
    else:
        message = f"{response.request.url} answered {status}: {response.text[:200]}"
    violations = body.get("violations") if isinstance(body, dict) else None
    error: ForetellError
    if status == 400 and isinstance(violations, list):
        error = ValidationError([_violation(v) for v in violations])
        error.message, error.args = message, (message,)
    elif status in (400, 413):
        error = InputFormatError(message)
    elif status == 404:
        error = NotFoundError(message)
    elif status == 503:
        error = ModelLoadError(message)
    else:
        error = ForetellError(message)
    error.status = status
    return error


def _violation(data: Any) -> Violation:
    known = data if isinstance(data, dict) else {}
    return Violation(
        row=int(known.get("row", -1)),
        field=str(known.get("field", "")),
        rule=str(known.get("rule", "")),
        message=str(known.get("message", data)),
    )


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    """Turns transport failures into a ForetellError naming the server's URL."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ForetellError(f"the foretell server at {url} is unreachable: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise ForetellError(f"the foretell server at {url} did not answer in time: {exc}") from exc
    except httpx.TransportError as exc:
        raise ForetellError(f"the request to the foretell server at {url} failed: {exc}") from exc


class _Base:
    def __init__(self, url: str, timeout: float, headers: Mapping[str, str] | None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class Client(_Base):
    """A blocking client for a foretell server at ``url`` (``http://host:port``)."""

    def __init__(
        self, url: str, timeout: float = 30.0, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(url, timeout, headers)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers)

    def live(self) -> bool:
        """Whether the server process is up (raises ForetellError when it cannot be reached)."""
        return self._send(_live())

    def ready(self) -> bool:
        """Whether every model the server holds is loaded and answering."""
        return self._send(_ready())

    def models(self) -> list[ModelInfo]:
        """Every model the server holds, ready or not."""
        return self._send(_models())

    def model(self, name: str) -> ModelInfo:
        """The model ``name`` with its description, input schema and labels."""
        return self._send(_model(name))

    def predict(self, name: str, rows: Rows) -> list[PredictionResult]:
        """One result per row: records, lists in schema order, or a DataFrame."""
        return self._send(_predict(name, rows))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _Call[T]) -> T:
        with _reaching(self.url):
            response = self._http.request(
                call.method, call.path, content=call.body, headers=call.headers()
            )
        return call.result(response)


class AsyncClient(_Base):
    """An asyncio client for a foretell server at ``url``; the methods of :class:`Client`."""

    def __init__(
        self, url: str, timeout: float = 30.0, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(url, timeout, headers)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=self.headers)

    async def live(self) -> bool:
        """Whether the server process is up (raises ForetellError when it cannot be reached)."""
        return await self._send(_live())

    async def ready(self) -> bool:
        """Whether every model the server holds is loaded and answering."""
        return await self._send(_ready())

    async def models(self) -> list[ModelInfo]:
        """Every model the server holds, ready or not."""
        return await self._send(_models())

    async def model(self, name: str) -> ModelInfo:
        """The model ``name`` with its description, input schema and labels."""
        return await self._send(_model(name))

    async def predict(self, name: str, rows: Rows) -> list[PredictionResult]:
        """One result per row: records, lists in schema order, or a DataFrame."""
        return await self._send(_predict(name, rows))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: _Call[T]) -> T:
        with _reaching(self.url):
            response = await self._http.request(
                call.method, call.path, content=call.body, headers=call.headers()
            )
        return call.result(response)
