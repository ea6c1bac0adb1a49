"""``foretell serve --workers N``: N processes share the ports; a dead one is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sklearn.datasets import load_breast_cancer

from foretell.serving.workers import Siblings
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


def test_loads_and_unloads_reach_every_worker(two_workers: Server) -> None:
    def seen() -> set[int]:
        """The model's readiness as 40 new connections, spread over the workers, see it."""
        url = f"{two_workers.url}/v2/models/sentiment/ready"
        return {httpx.get(url, timeout=5).status_code for _ in range(40)}

    assert seen() == {200}
    admin = f"{two_workers.url}/v2/repository/models/sentiment"
    assert httpx.post(f"{admin}/unload", timeout=60).status_code == 200
    assert seen() == {503}  # on every worker, at once
    assert httpx.post(f"{admin}/load", timeout=60).status_code == 200
    assert seen() == {200}
    assert httpx.post(f"{admin}/unload", timeout=60).status_code == 200

    # a worker started later replays the changes before it serves
    victim = min(workers_of(two_workers))
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in workers_of(two_workers), 10)
    assert wait_until(lambda: ready(two_workers), 120)
    assert seen() == {503}


def test_siblings_share_changes_through_their_folder(tmp_path: Path) -> None:
    for part in ("ready", "changes", "applied"):
        (tmp_path / part).mkdir()
    done: dict[int, list[tuple[str, str]]] = {1: [], 2: [], 3: []}

    def worker(me: int) -> Siblings:
        (tmp_path / "ready" / str(me)).touch()
        return Siblings(tmp_path, lambda action, model: done[me].append((action, model)), me)

    async def run() -> None:
        one, two = worker(1), worker(2)
        watching = asyncio.create_task(two.watch())
        assert await one.tell("unload", "m") == []  # returns once worker 2 has applied it
        assert done == {1: [], 2: [("unload", "m")], 3: []}
        watching.cancel()
        one.WAIT_SECONDS = 0.3
        assert await one.tell("load", "m") == [2]  # worker 2 no longer watches
        worker(3).catch_up()  # a new worker replays everything, in order
        assert done[3] == [("unload", "m"), ("load", "m")]

    asyncio.run(run())


def test_metrics_add_up_every_worker(two_workers: Server) -> None:
    def answered() -> float:
        text = httpx.get(f"{two_workers.url}/metrics", timeout=5).text
        line = 'foretell_requests_total{model="breast-cancer",protocol="v2",status="200"}'
        return sum(float(s.split()[-1]) for s in text.splitlines() if s.startswith(line))

    before = answered()
    for _ in range(30):  # a new connection each: both workers answer some
        assert infer(two_workers) == 200
    assert {answered() for _ in range(10)} == {before + 30}  # whichever worker is scraped
    ready_lines = [
        s
        for s in httpx.get(f"{two_workers.url}/metrics", timeout=5).text.splitlines()
        if s.startswith('foretell_model_ready{model="breast-cancer"')
    ]
    assert len(ready_lines) == 1 and ready_lines[0].endswith(" 1.0")


def test_workers_log_into_one_store_and_the_supervisor_loads_no_library(
    examples_root: Path, tmp_path: Path
) -> None:
    server = Server(["--repository", str(examples_root), "--workers", "2"], cwd=tmp_path)
    try:
        assert wait_until(lambda: ready(server), 120), server.log.read_text()
        # the supervisor starts the workers without importing numpy, pandas or SciPy, which
        # only the workers use (its memory maps would hold their compiled modules)
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert not [lib for lib in ("numpy", "pandas", "scipy") if f"/{lib}/" in maps]
        for _ in range(20):  # a new connection each: both workers answer some
            assert infer(server) == 200
    finally:
        server.stop()
    assert server.process.returncode == 0  # each worker drained its prediction log
    with sqlite3.connect(tmp_path / "foretell-data" / "monitoring.db") as db:
        count, distinct = db.execute(
            "SELECT count(*), count(DISTINCT prediction_id) FROM foretell_predictions"
        ).fetchone()
    assert count == distinct == 40
