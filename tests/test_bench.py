"""The benchmark scripts that need no load generator run as documented: bench/predlog.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def predlog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "predlog.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_prediction_log_benchmark_logs_every_row_and_reports_its_cost() -> None:
    done = predlog("--sizes", "1,32", "--rows", "64", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| (-?[\d.]+) \| ([\d,]+) \|$", done.stdout, re.M)
    assert [size for size, *_ in rows] == ["1", "32"]
    for _, serving, _, logged in rows:
        assert logged == "64"  # the script itself fails when the log stored fewer
        assert float(serving) > 0  # the writer's figure, less its start-up, may be ~0 here


def test_the_prediction_log_benchmark_refuses_a_bad_size_by_name() -> None:
    done = predlog("--sizes", "1,x")
    assert done.returncode == 2
    assert "--sizes must be whole numbers" in done.stderr
