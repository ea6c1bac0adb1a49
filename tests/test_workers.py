"""``foretell serve --workers N``: N processes share the ports; a dead one is replaced."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sklearn.datasets import load_breast_cancer

from tests.conftest import Server

ROWS = load_breast_cancer().data[:2].tolist()


def workers_of(server: Server) -> set[int]:
    """The process ids of the supervisor's children."""
    pid = server.process.pid
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(c) for c in (task / "children").read_text().split()}
    return children


def ready(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def infer(server: Server) -> int:
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [2, 30], "data": ROWS}]}
    url = f"{server.url}/v2/models/breast-cancer/infer"
    return httpx.post(url, json=body, timeout=10).status_code


@pytest.fixture
def two_workers(examples_root: Path, tmp_path: Path) -> Iterator[Server]:
    server = Server(
        ["--repository", str(examples_root), "--no-monitoring", "--workers", "2"],
        cwd=tmp_path,
        timeout=120,
    )
    try:
        assert wait_until(lambda: ready(server), 120), server.log.read_text()
        yield server
    finally:
        server.stop()


def test_a_killed_worker_is_replaced_and_ready_says_so_meanwhile(two_workers: Server) -> None:
    first = workers_of(two_workers)
    assert len(first) == 2
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    # the survivor answers while the replacement loads, and says the server is not all ready
    saw_not_ready = False
    answered = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert infer(two_workers) == 200
        answered += 1
        if not ready(two_workers):
            saw_not_ready = True
        elif saw_not_ready:
            break
        time.sleep(0.05)
    assert saw_not_ready, "readiness never reflected the dead worker"
    assert ready(two_workers)
    now = workers_of(two_workers)
    assert len(now) == 2 and victim not in now and len(now & first) == 1
    assert answered > 1


def test_stopping_the_server_stops_every_worker(two_workers: Server) -> None:
    workers = workers_of(two_workers)
    two_workers.process.send_signal(signal.SIGTERM)
    assert two_workers.process.wait(timeout=60) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_serve_refuses_zero_workers(examples_root: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--workers must be at least 1"):
        Server(["--repository", str(examples_root), "--workers", "0"], cwd=tmp_path)
