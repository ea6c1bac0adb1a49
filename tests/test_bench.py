"""The benchmark scripts run as documented: bench/predlog.py, and bench/serving.py on one of
foretell's configurations (its peers install into their own environments, which a test run
does not wait for)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``bench/<script>`` with ``args`` as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_prediction_log_benchmark_logs_every_row_and_reports_its_cost() -> None:
    done = bench("predlog.py", "--sizes", "1,32", "--rows", "64", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| (-?[\d.]+) \| ([\d,]+) \|$", done.stdout, re.M)
    assert [size for size, *_ in rows] == ["1", "32"]
    for _, serving, _, logged in rows:
        assert logged == "64"  # the script itself fails when the log stored fewer
        assert float(serving) > 0  # the writer's figure, less its start-up, may be ~0 here


def test_the_prediction_log_benchmark_refuses_a_bad_size_by_name() -> None:
    done = bench("predlog.py", "--sizes", "1,x")
    assert done.returncode == 2
    assert "--sizes must be whole numbers" in done.stderr


def test_the_serving_benchmark_drives_every_load_over_rest_and_grpc_and_reports_ceilings() -> None:
    done = bench(
        "serving.py",
        *("--no-peers", "--only", "foretell --no-monitoring"),
        *("--repeat", "1", "--duration", "1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = r"^\| foretell --no-monitoring \| (REST|gRPC) \| (\d+) \| (\d+) \| ([\d,]+) .*\| (\d+) \|"
    runs = re.findall(row + r" [\d.]+ \([\d.]+\) \| [\d.]+ \|$", done.stdout, re.M)
    loads = [(protocol, int(rows), int(conns)) for protocol, rows, conns, *_ in runs]
    each = [(1, 1), (1, 8), (1, 32), (32, 8)]
    assert loads == [("REST", *load) for load in each] + [("gRPC", *load) for load in each]
    for *_, rps, errors in runs:
        assert int(rps.replace(",", "")) > 0 and errors == "0"
    ceilings = re.findall(r"^- in-process (.+): ([\d,]+) rows/s$", done.stdout, re.M)
    assert len(ceilings) == 6 and all(int(n.replace(",", "")) > 0 for _, n in ceilings)
    assert re.search(r"foretell --no-monitoring: ready [\d.]+ s after start", done.stdout)


def test_the_serving_benchmark_refuses_a_configuration_it_does_not_have_by_name() -> None:
    done = bench("serving.py", "--no-peers", "--only", "MLServer")
    assert done.returncode == 2
    assert "no configuration matches --only ['MLServer'] with --no-peers" in done.stderr
    assert "foretell --no-monitoring" in done.stderr  # what there is to choose from
    done = bench("serving.py", "--repeat", "0")
    assert done.returncode == 2
    assert "--repeat and --duration must be at least 1; got 0 and 5" in done.stderr
