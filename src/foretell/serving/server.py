"""Runs the REST and gRPC transports in one process, and drains both on SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import uvicorn

from foretell.serving.dataplane import DataPlane
from foretell.serving.fastpath import FastInfer
from foretell.serving.http import create_app
from foretell.serving.keys import KeyStore
from foretell.serving.limits import Limits
from foretell.serving.protocol import http_protocol
from foretell.serving.v2 import V2
from foretell.serving.workers import mark_ready, shared_socket

log = logging.getLogger("foretell.serving")
#: How long a thread may hold the interpreter lock while another waits for it, in a serving
#: process (Python's default is 5 ms): the event loop waits at most this long while a worker
#: thread or the prediction log's shipping thread holds the lock. At 0.5 ms p99 latency was a
#: fifth to two fifths lower for the same throughput (docs/benchmarks.md).
SWITCH_INTERVAL_S = 0.0005


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop (installed with uvicorn[standard]; several times faster at socket
    I/O and callbacks), or asyncio's own where uvloop is missing (Windows)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def serve(
    plane: DataPlane,
    host: str,
    port: int,
    grpc_port: int | None,
    log_level: str = "info",
    grace_seconds: float = 30.0,
    log_config: dict[str, Any] | None = None,
    keys: KeyStore | None = None,
    tls: tuple[Path, Path] | None = None,
    limits: Limits | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then stops accepting and lets in-flight requests finish
    (at most ``grace_seconds``) on both transports before returning."""
    limits = limits or Limits()
    config = uvicorn.Config(
        create_app(plane, keys=keys, limits=limits),
        host=host,
        port=port,
        log_level=log_level.lower(),
        lifespan="off",
        access_log=False,  # foretell.access logs every request, with its id
        timeout_graceful_shutdown=int(grace_seconds),
        log_config=log_config,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        http=http_protocol(limits.request_timeout, FastInfer(plane, keys, limits)),
    )
    http = uvicorn.Server(config)
    grpc_server = None
    if grpc_port is not None:
        from foretell.serving.grpc import create_grpc_server

        pem = (tls[1].read_bytes(), tls[0].read_bytes()) if tls else None
        grpc_server = create_grpc_server(V2(plane), host, grpc_port, keys, pem, limits)
        await grpc_server.start()
        log.info("gRPC serving on %s:%d", host, grpc_port)
    # uvicorn re-raises the signal it caught once it has drained; a no-op handler lets the
    # process end with status 0 after gRPC has drained too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)

    async def stop_grpc_on_exit() -> None:
        while not http.should_exit:
            await asyncio.sleep(0.05)
        if grpc_server is not None:
            await grpc_server.stop(grace_seconds)

    async def mark_ready_once_serving() -> None:
        while not http.started and not http.should_exit:
            await asyncio.sleep(0.02)
        if http.started:
            mark_ready()

    watcher = asyncio.create_task(stop_grpc_on_exit())
    marker = asyncio.create_task(mark_ready_once_serving())
    # the loads and unloads of the other workers
    changes = None if plane.siblings is None else asyncio.create_task(plane.siblings.watch())
    shared = shared_socket()  # a worker accepts on its supervisor's socket
    try:
        await http.serve(sockets=[shared] if shared is not None else None)
    finally:
        http.should_exit = True
        await watcher
        await marker
        if changes is not None:
            changes.cancel()
