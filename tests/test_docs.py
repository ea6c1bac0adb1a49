"""The documentation's Python examples run as written against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize(
    "block", re.findall(r"```python\n(.*?)```", (DOCS / "protocols.md").read_text(), re.S)
)
def test_protocol_examples_run(server: Server, block: str) -> None:
    code = block.replace("127.0.0.1:8080", f"127.0.0.1:{server.port}").replace(
        "127.0.0.1:8081", f"127.0.0.1:{server.grpc_port}"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
