"""Limits on callers and requests: per-caller rate limits, request time limits, slow clients.

A :class:`RateLimiter` keeps a token bucket per caller: per API key when keys are on (keyed by
the key's id, never its secret), per client address otherwise. A caller over its rate is
answered 429 with ``Retry-After`` (gRPC ``RESOURCE_EXHAUSTED``). Health checks are exempt, so a
load balancer never sees a throttled server as down.

A request that is not answered within ``request_timeout`` seconds, counting from when its
headers arrived, is answered 504 (gRPC ``DEADLINE_EXCEEDED``). Python cannot stop a thread, so
a model still computing goes on in its worker thread and its result is dropped; the timeout
frees the caller, not the CPU. A client that takes longer than the same limit to send its
request headers is disconnected (:class:`foretell.serving.protocol.HttpProtocol`): slow
clients hold a socket for at most that long and never hold a worker.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foretell.errors import (
    ForetellError,
    RateLimitedError,
    RequestTimeoutError,
    UnauthorizedError,
)

#: Paths never rate limited: load balancers and orchestrators poll them.
EXEMPT = frozenset({"/v2/health/live", "/v2/health/ready"})
#: The default of ``foretell serve --request-timeout``, in seconds.
REQUEST_TIMEOUT = 30.0

_T = TypeVar("_T")


class RateLimiter:
    """A token bucket per caller: ``rate`` requests per second, bursts of up to ``burst``."""

    #: Past this many buckets, the full ones are dropped (a full bucket equals a new one).
    MAX_BUCKETS = 10_000

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1; got {rate}, {burst}")
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, caller: str) -> None:
        """Takes one token of ``caller``'s bucket, or raises RateLimitedError when it is empty."""
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise RateLimitedError(
                    f"{caller} sent more than the rate limit of {self.rate:g} requests per "
                    f"second (bursts of {self.burst}); retry in {wait} s",
                    retry_after=wait,
                )
            self._buckets[caller] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_BUCKETS:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        refill = self.burst / self.rate
        self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < refill}


class Deadlines:
    """Time limits of the requests in flight on one event loop, watched by one timer that
    looks every :attr:`TICK` seconds, rather than by a timer per request: a request is
    cancelled at most a tick after its time is up.

    Every request has the same limit, so deadlines come due in the order the requests
    started, and a look stops at the first that is not due.
    """

    #: How often the timer looks for requests past their time, in seconds.
    TICK = 0.05

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._due: dict[asyncio.Task[Any], float] = {}  # in the order the requests started
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> asyncio.Task[Any] | None:
        """Starts timing the current task (None, and nothing timed, without a limit)."""
        task = asyncio.current_task()
        if self.seconds is None or task is None:
            return None
        loop = task.get_loop()
        self._due[task] = loop.time() + self.seconds
        if self._timer is None:
            self._timer = loop.call_later(self.TICK, self._look, loop)
        return task

    def finish(self, task: asyncio.Task[Any] | None) -> bool:
        """Stops timing ``task``; whether it was cancelled for running out of time (that
        cancellation is then taken back)."""
        if task is None:
            return False
        self._due.pop(task, None)
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late = []
        for task, due in self._due.items():
            if due > now:
                break
            late.append(task)
        for task in late:
            del self._due[task]
            self._expired.add(task)
            task.cancel()
        self._timer = loop.call_later(self.TICK, self._look, loop) if self._due else None


@dataclass(frozen=True)
class Limits:
    """What one caller and one request may take, on both transports."""

    #: Seconds a request may take from its headers to its answer; None for no limit.
    request_timeout: float | None = REQUEST_TIMEOUT
    #: Per-caller rate limit; None for none.
    rate: RateLimiter | None = None
    #: The time limits of the requests in flight (see :meth:`in_time`).
    deadlines: Deadlines = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "deadlines", Deadlines(self.request_timeout))

    def timed_out(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the request was not answered within the server's limit of "
            f"{self.request_timeout:g} s; send fewer rows per request, or start the server "
            "with a larger --request-timeout"
        )

    def admit(self, scope: Scope) -> None:
        """Raises RateLimitedError when the caller of ``scope`` is over its rate (health
        checks never are)."""
        if self.rate is not None and scope["path"] not in EXEMPT:
            self.rate.take(caller(scope))

    def admit_key(self, key_id: str) -> None:
        """:meth:`admit` for a request whose API key is ``key_id`` (the infer fast path)."""
        if self.rate is not None:
            self.rate.take(_of_key(key_id))

    async def in_time(self, call: Awaitable[_T]) -> _T:
        """Awaits ``call`` in the current task, or raises RequestTimeoutError past
        :attr:`request_timeout` (the work in a thread goes on; only the wait for it ends).
        ``call`` must let itself be cancelled wherever it waits."""
        task = self.deadlines.start()
        late = False
        try:
            try:
                return await call
            finally:
                late = self.deadlines.finish(task)
        except asyncio.CancelledError:
            if late and task is not None and not task.cancelling():
                raise self.timed_out() from None
            raise


class EnforceLimits:
    """ASGI middleware: 429 for a caller over its rate, 504 for a request over its time.

    A request runs in a task of its own, so that one past its time can be answered while a
    route that waits on a thread it cannot cancel (Starlette's thread pool) runs on. The V2
    infer route, whose waits can all be cancelled, applies the same limits itself at less
    cost (:class:`foretell.serving.rest_v2.InferRoute`)."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app, self.limits = app, limits
        # Requests that ran out of time, still running (threads cannot be stopped)
        self._abandoned: set[asyncio.Future[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.limits.admit(scope)
        except RateLimitedError as exc:
            await send_error(send, exc)
            return
        if self.limits.request_timeout is None:
            await self.app(scope, receive, send)
        else:
            await self._in_time(scope, receive, send, self.limits.request_timeout)

    async def _in_time(self, scope: Scope, receive: Receive, send: Send, seconds: float) -> None:
        started = late = False

        async def send_unless_late(message: Message) -> None:
            nonlocal started
            if late:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        # the request runs in a task of its own, so that a late one can be abandoned while its
        # thread runs on; a timer and one future stand in for asyncio.wait (a tenth of its cost)
        loop = asyncio.get_running_loop()
        task: asyncio.Future[None] = asyncio.ensure_future(
            self.app(scope, receive, send_unless_late)
        )
        woken = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        task.add_done_callback(wake)
        timer = loop.call_later(seconds, wake)
        try:
            await woken
        except asyncio.CancelledError:  # the server is stopping or the client went away
            task.cancel()
            raise
        finally:
            timer.cancel()
        if task.done() or started:  # an answer under way is let finish
            await task
            return
        late = True
        task.cancel()  # ends the wait for the body; a worker thread runs on and is ignored
        self._abandoned.add(task)
        task.add_done_callback(_forget(self._abandoned))
        await send_error(send, self.limits.timed_out(), [(b"connection", b"close")])


def _forget(tasks: set[asyncio.Future[None]]) -> Any:
    def done(task: asyncio.Future[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it: the caller was answered

    return done


def caller(scope: Scope) -> str:
    """Who a request comes from: the API key's id when keys are on, else the client address."""
    key = scope.get("state", {}).get("key_id")
    if key is not None:
        return _of_key(key)
    client = scope.get("client")
    return f"client {client[0] if client else 'unknown'}"


def error_parts(error: ForetellError) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The JSON body and the headers of the answer to ``error``."""
    body = orjson.dumps(error.to_json())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(error, RateLimitedError):
        headers.append((b"retry-after", str(error.retry_after).encode()))
    elif isinstance(error, UnauthorizedError):
        headers.append((b"www-authenticate", b'Bearer realm="foretell"'))
    return body, headers


def _of_key(key_id: str) -> str:
    return f"key '{key_id}'"


async def send_error(
    send: Send, error: ForetellError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answers with ``error`` as JSON, before the app has answered anything."""
    body, own = error_parts(error)
    await send(
        {"type": "http.response.start", "status": error.status, "headers": own + (headers or [])}
    )
    await send({"type": "http.response.body", "body": body})
