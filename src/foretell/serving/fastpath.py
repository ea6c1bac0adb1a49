"""The V2 infer route served straight from the HTTP parser, without ASGI.

For every request uvicorn builds an ASGI scope, a request-response cycle and message dicts,
and the request walks the middleware (request id, proxy headers, API keys, limits, dispatch);
for a 1-row prediction that is as much work as the prediction. :class:`FastInfer` answers the
common form of ``POST /v2/models/{name}[/versions/{version}]/infer`` itself: HTTP/1.1, a body
of declared length without Content-Encoding, no ``Expect: 100-continue``, and no other request
in flight on the connection. Every other request, these routes' rarer forms included, takes the
ASGI path (:func:`foretell.serving.http.create_app`).

A request gets what the ASGI path gives it: the same API-key check, rate and time limits,
``X-Request-ID``, request metrics and access log, and the same answers and errors
(``tests/test_fastpath.py`` sends the same requests both ways). Rate limits per client address
(keys off) take the ASGI path, where the proxy headers say who the client is.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from http import HTTPStatus
from typing import TYPE_CHECKING

import orjson

from foretell.errors import ForetellError, RequestTimeoutError
from foretell.serving.auth import authorise
from foretell.serving.dataplane import DataPlane
from foretell.serving.http import MAX_BODY_BYTES, record_request, request_id_of
from foretell.serving.keys import KeyStore
from foretell.serving.limits import Limits, error_parts
from foretell.serving.rest_v2 import HEADER_LENGTH, ClientGone, InferRoute
from foretell.serving.v2 import V2

if TYPE_CHECKING:
    from httptools import HttpRequestParser

    from foretell.serving.protocol import HttpProtocol

log = logging.getLogger("foretell.serving")

#: The infer route in a raw request target: printable ASCII, nothing percent-encoded, no query.
_PART = rb"([^/:%?\x00-\x20\x7f-\xff]+)"
PATH = re.compile(rb"/v2/models/" + _PART + rb"(?:/versions/" + _PART + rb")?/infer")
_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_HEADER_LENGTH = HEADER_LENGTH.encode()


class FastCycle:
    """One infer request on the fast path. It stands in for uvicorn's request-response cycle
    where the protocol looks at one (``response_complete``, ``keep_alive``, ``disconnected``,
    ``message_event``)."""

    __slots__ = (
        "chunks",
        "disconnected",
        "headers",
        "keep_alive",
        "more_body",
        "name",
        "path",
        "response_complete",
        "version",
        "waiter",
    )

    def __init__(
        self,
        path: str,
        name: str,
        version: str | None,
        headers: dict[bytes, bytes],
        keep_alive: bool,
    ) -> None:
        self.path, self.name, self.version, self.headers = path, name, version, headers
        self.keep_alive = keep_alive
        self.chunks: list[bytes] = []
        self.more_body = True
        self.response_complete = self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None

    @property
    def message_event(self) -> FastCycle:
        """What uvicorn sets when the connection is lost: wakes a wait for the body."""
        return self

    def set(self) -> None:
        """Wakes the request if it waits for more of its body."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def complete(self) -> None:
        """The body has arrived in full."""
        self.more_body = False
        self.set()

    async def body(self) -> bytes:
        """The request body, once it has arrived; ClientGone if the client left first."""
        while self.more_body and not self.disconnected:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if self.more_body:
            raise ClientGone
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class FastInfer:
    """Serves the V2 infer requests that :meth:`take` accepts for ``plane``'s models."""

    def __init__(
        self,
        plane: DataPlane,
        keys: KeyStore | None = None,
        limits: Limits | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.plane, self.keys = plane, keys
        self.limits = limits or Limits(request_timeout=None)
        self.route = InferRoute(V2(plane), max_body_bytes, self.limits)
        self.max_body_bytes = max_body_bytes
        # a rate per client address needs the proxy headers that the ASGI path reads
        self.usable = self.limits.rate is None or keys is not None

    def take(
        self, parser: HttpRequestParser, url: bytes, headers: list[tuple[bytes, bytes]]
    ) -> FastCycle | None:
        """A cycle for the request whose head was just parsed, or None when it is not one for
        the fast path."""
        if not self.usable or parser.get_method() != b"POST":
            return None
        found = PATH.fullmatch(url)
        if found is None or parser.get_http_version() != "1.1" or parser.should_upgrade():
            return None
        wanted = dict(headers)
        length = wanted.get(b"content-length", b"")
        if (
            not length.isdigit()
            or int(length) > self.max_body_bytes
            or wanted.get(b"content-encoding", b"identity").lower() != b"identity"
            or b"transfer-encoding" in wanted
            or b"expect" in wanted
        ):
            return None
        name, version = found.groups()
        return FastCycle(
            url.decode(),  # printable ASCII, as PATH matched it
            name.decode(),
            None if version is None else version.decode(),
            wanted,
            parser.should_keep_alive(),
        )

    def start(self, protocol: HttpProtocol, cycle: FastCycle) -> None:
        """Serves ``cycle`` in a task of its own, tracked as uvicorn tracks its requests (so a
        graceful shutdown waits for it)."""
        task = protocol.loop.create_task(self._serve(protocol, cycle))
        protocol.tasks.add(task)
        task.add_done_callback(protocol.tasks.discard)

    async def _serve(self, protocol: HttpProtocol, cycle: FastCycle) -> None:
        started = time.perf_counter()
        request_id = request_id_of(cycle.headers.get(b"x-request-id"))
        status = 200
        try:
            content, headers = await self._answer(cycle)
        except ClientGone:  # nobody to answer, nothing to count
            return
        except ForetellError as exc:
            status = exc.status
            content, headers = error_parts(exc)
            if isinstance(exc, RequestTimeoutError):  # its body may still be arriving
                cycle.keep_alive = False
        except Exception as exc:
            log.exception("the infer request %s failed", request_id)
            status = 500
            content = orjson.dumps({"error": f"internal error: {type(exc).__name__}"})
            headers = [(b"content-type", b"application/json")]
            cycle.keep_alive = False
        self._write(protocol, cycle, status, content, headers, request_id)
        seconds = time.perf_counter() - started
        record_request(self.plane, "POST", cycle.path, cycle.name, status, seconds, request_id)

    async def _answer(self, cycle: FastCycle) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        if self.keys is not None:
            header = cycle.headers.get(b"authorization", b"").decode("latin-1")
            key = authorise(self.keys, header, f"predict:{cycle.name}")
            self.limits.admit_key(key.id)
        content, headers = await self.limits.in_time(self._infer(cycle))
        headers.append((b"content-length", str(len(content)).encode()))
        return content, headers

    async def _infer(self, cycle: FastCycle) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        self.plane.model(cycle.name, cycle.version)  # unknown or unready: before the body
        body = await cycle.body()
        length = cycle.headers.get(_HEADER_LENGTH)
        header_length = None if length is None else length.decode("latin-1")
        return await self.route.respond(cycle.name, cycle.version, body, header_length)

    def _write(
        self,
        protocol: HttpProtocol,
        cycle: FastCycle,
        status: int,
        content: bytes,
        headers: list[tuple[bytes, bytes]],
        request_id: str,
    ) -> None:
        if cycle.disconnected:
            return
        parts = [_STATUS[status]]
        for name, value in (*protocol.server_state.default_headers, *headers):
            parts += (name, b": ", value, b"\r\n")
        parts += (b"x-request-id: ", request_id.encode(), b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", content)
        protocol.out.write_now(b"".join(parts))
        cycle.response_complete = True
        if not cycle.keep_alive:
            protocol.transport.close()
        protocol.on_response_complete()
