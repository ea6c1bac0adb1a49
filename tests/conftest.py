"""Shared fixtures: the example repository built once, and a real server on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from foretell import Repository
from foretell.examples import build_examples

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def examples_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models, built once per test session. Treat it as read-only."""
    root = tmp_path_factory.mktemp("examples")
    build_examples(root)
    return root


@pytest.fixture
def examples_copy(examples_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the example repository."""
    target = tmp_path / "models"
    shutil.copytree(examples_root, target)
    return target


@pytest.fixture(scope="session")
def repository(examples_root: Path) -> Repository:
    return Repository(examples_root)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A ``foretell serve`` process on 127.0.0.1 and a free port."""

    def __init__(self, args: list[str], cwd: Path | None = None, timeout: float = 60.0) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        tls = "--tls-cert" in args
        self.verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=args[args.index("--tls-cert") + 1]) if tls else True
        )
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = (cwd or Path.cwd()) / f"server-{self.port}.log"
        ports = ["--port", str(self.port), "--grpc-port", str(self.grpc_port)]
        command = [sys.executable, "-m", "foretell", "serve", *ports, *args]
        with self.log.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/v2/health/live", timeout=1.0, verify=self.verify)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def server(examples_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server over the example repository, shared by the session."""
    running = Server(["--repository", str(examples_root)], cwd=tmp_path_factory.mktemp("srv"))
    yield running
    running.stop()
