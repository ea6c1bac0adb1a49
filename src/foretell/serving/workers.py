"""Worker processes: ``foretell serve --workers N`` runs N copies of the server on its ports.

A Python process computes on one core at a time, so N workers use N cores. The supervisor
(the process the user started) loads no model: it starts N workers with the same command
line, restarts any that dies, and forwards SIGTERM/SIGINT so that every worker drains.
The supervisor opens the HTTP socket and every worker accepts on it, so a worker's death
loses only the requests it was answering; the next connections go to the others at once.
gRPC cannot adopt a socket, so the workers bind its port with ``SO_REUSEPORT``: a gRPC
connection being set up at the moment a worker dies may be refused, and clients retry.

Readiness stays honest: each worker marks itself ready in a shared folder once it serves,
the supervisor removes a dead worker's mark, and every worker's ``/v2/health/ready`` answers
503 until all N are ready again.

Admin calls (load, unload, update, rollback) reach every worker: the worker that accepts one
applies it, tells the others through the shared folder (:class:`Siblings`), and answers once
each of them has applied it too; a worker started later replays every change before it
serves. The workers keep their metrics in files of the shared folder, which ``/metrics`` adds
up (:mod:`foretell.monitoring.metrics`), and the monitoring store (SQLite in WAL mode, or
PostgreSQL) takes the writes of all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from foretell.errors import ForetellError, UserError

log = logging.getLogger("foretell.serving")

#: Set in a worker's environment: the folder where the workers mark themselves ready.
WORKER_DIR = "FORETELL_WORKER_DIR"
#: Set in a worker's environment: how many workers the supervisor keeps running.
WORKER_COUNT = "FORETELL_WORKER_COUNT"
#: Set in a worker's environment: the file descriptor of the shared HTTP socket.
WORKER_SOCKET = "FORETELL_WORKER_SOCKET"
#: A worker that dies sooner than this after its start counts as a failed start.
_FAILED_START_S = 5.0
#: Restarts given up after this many failed starts in a row (a broken command line).
_MAX_FAILED_STARTS = 5


def worker_folder() -> Path | None:
    """The folder the workers share (``ready/`` marks, ``changes/`` and ``applied/`` for
    :class:`Siblings`, ``metrics/``) when this process is a worker, else None."""
    value = os.environ.get(WORKER_DIR)
    return Path(value) if value else None


def listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP socket the workers share, bound to ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def shared_socket() -> socket.socket | None:
    """The HTTP socket the supervisor opened, when this process is a worker."""
    fd = os.environ.get(WORKER_SOCKET)
    return socket.socket(fileno=int(fd)) if fd else None


def mark_ready() -> None:
    """Marks this worker ready in the shared folder (a no-op outside a worker)."""
    folder = worker_folder()
    if folder is not None:
        (folder / "ready" / str(os.getpid())).touch()


def all_ready() -> bool:
    """Whether every worker is serving (always true outside a worker)."""
    folder = worker_folder()
    if folder is None:
        return True
    try:
        return len(os.listdir(folder / "ready")) >= int(os.environ.get(WORKER_COUNT, "1"))
    except OSError:
        return False


class Siblings:
    """The admin changes (load or unload a model) that the workers share, as files in
    ``changes/`` of their folder, named ``<time ns>-<pid>-<load|unload>`` and holding the
    model's name; each worker that applied one leaves ``<change>@<pid>`` in ``applied/``.

    ``apply(action, model)`` makes a change in this worker (it runs in a thread; a model
    another worker loaded may be one this worker cannot: its state says so)."""

    POLL_SECONDS = 0.1
    #: How long :meth:`tell` waits for the other workers (a model may take long to load).
    WAIT_SECONDS = 120.0

    def __init__(
        self, folder: Path, apply: Callable[[str, str], object], me: int | None = None
    ) -> None:
        self.changes, self.applied = folder / "changes", folder / "applied"
        self.ready = folder / "ready"
        self.apply, self.me = apply, me if me is not None else os.getpid()
        self.seen: set[str] = set()

    def catch_up(self) -> None:
        """Applies every change made so far, in order (a worker does so before it serves)."""
        for change in sorted(os.listdir(self.changes)):
            self._apply(change)

    async def watch(self) -> None:
        """Applies the other workers' changes as they appear, until cancelled."""
        while True:
            for change in sorted(os.listdir(self.changes)):
                if change not in self.seen:
                    await asyncio.to_thread(self._apply, change)
            await asyncio.sleep(self.POLL_SECONDS)

    async def tell(self, action: str, model: str) -> list[int]:
        """Shares a change this worker has made; returns once every other serving worker has
        applied it, or after :attr:`WAIT_SECONDS` with the workers that have not."""
        change = f"{time.time_ns():020d}-{self.me}-{action}"
        self.seen.add(change)
        staged = self.changes / f".{change}"
        staged.write_text(model, encoding="utf-8")
        staged.rename(self.changes / change)  # whole, or not there at all
        deadline = time.monotonic() + self.WAIT_SECONDS
        while True:
            lagging = [
                pid
                for pid in map(int, os.listdir(self.ready))
                if pid != self.me and not (self.applied / f"{change}@{pid}").exists()
            ]
            if not lagging or time.monotonic() > deadline:
                return lagging
            await asyncio.sleep(self.POLL_SECONDS / 2)

    def _apply(self, change: str) -> None:
        self.seen.add(change)
        if change.startswith("."):
            return
        _, pid, action = change.split("-")
        if int(pid) != self.me:
            model = (self.changes / change).read_text(encoding="utf-8")
            try:
                self.apply(action, model)
            except ForetellError as exc:  # e.g. unloading a model this worker never loaded
                log.warning("change %s of model %s: %s", action, model, exc.message)
        (self.applied / f"{change}@{self.me}").touch()


class Supervisor:
    """Starts ``count`` workers running ``command`` and keeps that many running."""

    def __init__(self, command: list[str], count: int, http: socket.socket) -> None:
        self.command, self.count, self.http = command, count, http
        self.folder = Path(tempfile.mkdtemp(prefix="foretell-workers-"))
        for part in ("ready", "changes", "applied", "metrics"):
            (self.folder / part).mkdir()
        self.workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.stopping = False
        self.failed_starts = 0

    def run(self) -> int:
        """Supervises until SIGTERM or SIGINT, then stops the workers; the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        try:
            for _ in range(self.count):
                self._start()
            while not self.stopping:
                self._reap()
                time.sleep(0.1)
            return self._drain()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _start(self) -> None:
        env = {
            **os.environ,
            WORKER_DIR: str(self.folder),
            WORKER_COUNT: str(self.count),
            WORKER_SOCKET: str(self.http.fileno()),
            # every worker's metrics in files there, which /metrics adds up
            "PROMETHEUS_MULTIPROC_DIR": str(self.folder / "metrics"),
        }
        process = subprocess.Popen(self.command, env=env, pass_fds=[self.http.fileno()])
        self.workers[process.pid] = (process, time.monotonic())
        log.info("worker %d started", process.pid)

    def _reap(self) -> None:
        for pid, (process, started) in list(self.workers.items()):
            code = process.poll()
            if code is None:
                continue
            del self.workers[pid]
            (self.folder / "ready" / str(pid)).unlink(missing_ok=True)
            mark_process_dead(pid, str(self.folder / "metrics"))  # type: ignore[no-untyped-call]
            if self.stopping:
                continue
            quick = time.monotonic() - started < _FAILED_START_S
            self.failed_starts = self.failed_starts + 1 if quick else 0
            if self.failed_starts >= _MAX_FAILED_STARTS:
                log.error("workers keep failing at start (last status %d); stopping", code)
                self.stopping = True
                continue
            log.warning("worker %d ended with status %d; starting another", pid, code)
            self._start()

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _drain(self) -> int:
        for process, _ in self.workers.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in self.workers.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return 1 if self.failed_starts >= _MAX_FAILED_STARTS else 0


def supervise(count: int, host: str, port: int) -> int:
    """Runs this process's own command line as ``count`` workers sharing one HTTP socket on
    ``host:port`` (see :class:`Supervisor`)."""
    command = [sys.executable, "-m", "foretell", *sys.argv[1:]]
    with listening_socket(host, port) as http:
        return Supervisor(command, count, http).run()
