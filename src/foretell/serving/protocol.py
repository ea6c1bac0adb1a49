"""uvicorn's HTTP protocol as foretell runs it: each response leaves in one write, clients
slow to send their request headers are disconnected, and V2 infer requests go to the fast
path (:mod:`foretell.serving.fastpath`)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from foretell.serving.fastpath import FastCycle, FastInfer


class OneWrite:
    """A transport whose writes within one turn of the event loop leave as one.

    uvicorn writes a response's head and body separately; on a small response the second
    send costs as much as the first (a syscall, and a TCP segment for the client to read).
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport, self.loop = transport, loop
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        if self.pending:
            data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
            self.pending.clear()
            if not self.transport.is_closing():
                self.transport.write(data)

    def write_now(self, data: bytes) -> None:
        """Writes ``data`` at once, after anything pending: for a response made in one piece,
        which gains nothing from waiting for the loop's next turn."""
        self.flush()
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol writing through :class:`OneWrite`, closing connections that
    take over :attr:`seconds` to send a request's headers (uvicorn itself only times out idle
    keep-alive connections; ``None`` waits for ever), and handing the infer requests that
    :attr:`fast` takes to it rather than to the ASGI app."""

    seconds: float | None = None
    fast: FastInfer | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.out = OneWrite(transport, self.loop)
        super().connection_made(self.out)  # type: ignore[arg-type]
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # bytes of a new request: its headers must be complete in time
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if self.fast is not None and idle:
            cycle = self.fast.take(self.parser, self.url, self.headers)
            if cycle is not None:
                self.cycle = cycle  # type: ignore[assignment]
                self.fast.start(self, cycle)
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle: object = self.cycle  # uvicorn's cycle, or a FastCycle
        if type(cycle) is FastCycle:
            if not cycle.response_complete:  # answered early (an unknown model): not kept
                cycle.chunks.append(body)  # at most the declared length, within the limit
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: object = self.cycle
        if type(cycle) is FastCycle:
            cycle.complete()
        else:
            super().on_message_complete()

    def _arm(self) -> None:
        if self.seconds is not None:
            waiting_since = self.cycle
            self._deadline = self.loop.call_later(self.seconds, self._expire, waiting_since)

    def _expire(self, waiting_since: object) -> None:
        self._deadline = None
        no_new_request = self.cycle is waiting_since
        idle = self.cycle is None or self.cycle.response_complete
        if no_new_request and idle and not self.transport.is_closing():
            self.transport.close()


def http_protocol(
    header_seconds: float | None, fast: FastInfer | None = None
) -> type[HttpProtocol]:
    """The protocol class for uvicorn (``http=``), closing senders of headers slower than
    ``header_seconds`` (None: never) and serving the infer requests ``fast`` takes (None: all
    through the ASGI app)."""
    return type("HttpProtocol", (HttpProtocol,), {"seconds": header_seconds, "fast": fast})
