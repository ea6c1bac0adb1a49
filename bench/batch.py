#!/usr/bin/env python3
"""Batch benchmark of foretell: `foretell batch` rows/s against an in-process ceiling, peak RSS.

One command, everything in a temporary folder that is deleted at the end:

1. builds the ``breast-cancer`` example (version 2: ONNX gradient boosting, 30 float inputs)
   into a model repository, unless ``--repository`` names one;
2. writes ``--rows`` rows shaped like scikit-learn's breast cancer data (rows sampled from it,
   small Gaussian noise, clipped to the spec's ranges so every row is valid) to a Parquet file
   with several row groups, from a fixed seed;
3. measures the in-process ceiling: the same ``model.onnx`` called with plain onnxruntime on
   pyarrow record batches of ``--chunk-rows`` rows read from that file, writing nothing;
4. runs ``foretell batch breast-cancer --source X.parquet --destination out.parquet`` as a child
   process (``OMP_NUM_THREADS=1``), ``--repeat`` times: its rows/s, its peak RSS (VmHWM), the
   cores it kept busy, and its ratio to the ceiling measured in the same run;
5. optionally: Parquet to PostgreSQL (``--postgres``), a bigger job to compare peak RSS
   (``--rss-rows``), and MLServer's batch command (``mlserver infer``) when an ``mlserver`` is
   on PATH or in ``--peers-venv`` (``--install-peers`` puts one there; nothing is installed
   otherwise).

Prints a Markdown table (median rows/s of the repeats with min and max) and the targets: Parquet
to Parquet at least 80% of the ceiling; peak RSS of the ``--rss-rows`` job under 1 GiB and
within 10% of the ``--rows`` job. Exits 1 with ``Error: ...`` when a measurement fails.

Examples::

    python bench/batch.py --rows 1000000 --repeat 3 --rss-rows 10000000
    python bench/batch.py --rows 200000 --repeat 1 \\
        --postgres 'postgresql://postgres@127.0.0.1:5432/test?table=bench_scores'
    python bench/batch.py --install-peers          # MLServer into bench/.venv-mlserver first

The rows/s of a ``foretell batch`` run is rows / the job's own time (from the job store: load
and start-up excluded, like the ceiling, whose session is created before timing); the
end-to-end rows/s (process start to exit) is shown beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from procstat import process_tree, status_bytes

#: Why this Python cannot run the benchmark (``--help`` works anyway).
MISSING: list[str] = []
try:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as exc:
    MISSING.append(f"{exc}: run it with foretell's venv, e.g. .venv/bin/python bench/batch.py")

MODEL = "breast-cancer"
VERSION = "2"
HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".venv-mlserver"
GIB = 1024**3
MIB = 1024**2

#: Trains, in MLServer's environment, the same estimator as foretell's breast-cancer example.
TRAIN_FOR_MLSERVER = """
import sys, joblib
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
data = load_breast_cancer()
model = GradientBoostingClassifier(n_estimators=100, max_depth=2, random_state=0)
joblib.dump(model.fit(data.data, data.target), sys.argv[1])
"""


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


@dataclass
class Measurement:
    """Repeated runs of one thing. Per run: the seconds its rows/s is computed from, the
    end-to-end seconds of its process, its peak RSS, and the cores it kept busy on average
    (CPU seconds over seconds)."""

    name: str
    rows: int
    seconds: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, seconds: float, child: ChildRun | None = None) -> None:
        self.seconds.append(seconds)
        if child is not None:
            self.wall.append(child.wall)
            self.rss.append(child.peak_rss)
            self.busy.append(child.cpu / child.wall)

    def rates(self) -> list[float]:
        return [self.rows / s for s in self.seconds]

    def rate(self) -> float:
        return statistics.median(self.rates())

    def wall_rate(self) -> float | None:
        return statistics.median(self.rows / s for s in self.wall) if self.wall else None

    def peak_rss(self) -> int | None:
        return int(statistics.median(self.rss)) if self.rss else None

    def cores(self) -> float | None:
        return statistics.median(self.busy) if self.busy else None


@dataclass
class Results:
    machine: dict[str, str]
    command: str
    ceilings: list[Measurement] = field(default_factory=list)
    runs: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Measurements asked for that failed: reported, and the exit code is 1.
    failures: list[str] = field(default_factory=list)

    def best_ceiling(self) -> Measurement | None:
        return max(self.ceilings, key=Measurement.rate) if self.ceilings else None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- inputs -------------------------------------------------------------------------------


def build_repository(root: Path) -> Path:
    from foretell.examples import build_examples

    say(f"building the {MODEL} example into {root}")
    build_examples(root, only=[MODEL])
    return root


def spec_ranges(repository: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The model's feature names in schema order and each one's allowed [min, max]."""
    from foretell.repository import Repository

    spec = Repository(repository).get(MODEL, VERSION).spec
    names = spec.feature_names
    if len(names) != 30 or any(f.dtype != "float" for f in spec.inputs):
        raise BenchError(f"{MODEL} v{VERSION} should take 30 float inputs; it takes {names}")
    low = np.array([-np.inf if f.min is None else f.min for f in spec.inputs])
    high = np.array([np.inf if f.max is None else f.max for f in spec.inputs])
    return names, low, high


def write_rows(
    path: Path,
    rows: int,
    names: list[str],
    low: np.ndarray,
    high: np.ndarray,
    seed: int,
    row_group_rows: int,
    noise: float,
) -> None:
    """``rows`` valid rows: the bundled data resampled, plus noise, clipped; float64 columns."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).data
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise BenchError(f"the spec's inputs {missing} are not columns of sklearn's data")
    base = frame[names].to_numpy(dtype=np.float64)
    scale = noise * base.std(axis=0)
    rng = np.random.default_rng(seed)
    schema = pa.schema([(n, pa.float64()) for n in names])
    started = time.perf_counter()
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, row_group_rows):
            n = min(row_group_rows, rows - start)
            x = base[rng.integers(0, len(base), n)] + rng.standard_normal((n, len(names))) * scale
            np.clip(x, low, high, out=x)
            writer.write_table(
                pa.Table.from_arrays([pa.array(x[:, i]) for i in range(len(names))], schema=schema)
            )
    meta = pq.read_metadata(path)
    say(
        f"wrote {meta.num_rows:,} rows in {meta.num_row_groups} row groups to {path.name} "
        f"({path.stat().st_size / MIB:.0f} MiB, {time.perf_counter() - started:.1f} s)"
    )


# --- the in-process ceiling ---------------------------------------------------------------


def ceiling(
    onnx_path: Path, source: Path, names: list[str], chunk_rows: int, intra: int, threads: int
) -> tuple[float, float]:
    """Seconds (and CPU seconds) to read ``source`` in batches and run the model on each.

    Writes nothing.

    ``threads`` Python threads share one session (like foretell's scoring pool) while the
    main thread reads; the session is created before the clock starts.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    output = "probabilities" if "probabilities" in outputs else outputs[0]

    def score(batch: pa.RecordBatch) -> int:
        x = np.empty((batch.num_rows, len(names)), dtype=np.float32)
        for i, column in enumerate(batch.columns):
            x[:, i] = column.to_numpy()
        (probabilities,) = session.run([output], {input_name: x})
        return len(probabilities)

    started, cpu = time.perf_counter(), time.process_time()
    batches = pq.ParquetFile(source).iter_batches(batch_size=chunk_rows, columns=names)
    scored = 0
    if threads == 1:
        scored = sum(score(b) for b in batches)
    else:
        with ThreadPoolExecutor(threads) as pool:
            pending: deque[Future[int]] = deque()
            for batch in batches:
                pending.append(pool.submit(score, batch))
                if len(pending) >= 2 * threads:
                    scored += pending.popleft().result()
            scored += sum(f.result() for f in pending)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    expected = pq.read_metadata(source).num_rows
    if scored != expected:
        raise BenchError(f"the ceiling scored {scored:,} rows of {expected:,}")
    return seconds, cpu


# --- child processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChildRun:
    """How a child process ran: exit code, wall seconds, peak RSS in bytes, CPU seconds."""

    code: int
    wall: float
    peak_rss: int
    cpu: float


def vm_hwm(pid: int) -> int:
    """The peak RSS of process ``pid`` so far (VmHWM), in bytes; 0 once it is gone."""
    return status_bytes(pid, "VmHWM")


def run_child(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> ChildRun:
    """Runs ``command`` to its end, reading its peak RSS (VmHWM) every 20 ms until it exits.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark into a vforked child's
    ``ru_maxrss`` across ``exec``, so a child of this (big) benchmark would report the
    benchmark's own peak. VmHWM belongs to the child's own address space. Polling misses at
    most the last 20 ms of the child's life.
    """
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        peak = 0
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                peak = max(peak, vm_hwm(process.pid))
                time.sleep(0.02)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(process.returncode, wall, peak, usage.ru_utime + usage.ru_stime)


def done(rows: int, seconds: float, child: ChildRun) -> str:
    return (
        f"{rows / seconds:,.0f}/s (job {seconds:.1f} s, process {child.wall:.1f} s, "
        f"{child.cpu / child.wall:.2f} cores busy), peak RSS {child.peak_rss / MIB:,.0f} MiB"
    )


def tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


def foretell_command() -> list[str]:
    script = Path(sys.executable).parent / "foretell"
    return [str(script)] if script.exists() else [sys.executable, "-m", "foretell"]


@dataclass
class ForetellJob:
    """What every ``foretell batch`` run of this benchmark shares."""

    repository: Path
    store: Path
    chunk_rows: int
    workers: int | None
    logs: Path

    def run(
        self, job_id: str, source: Path, destination: str, rows: int, errors: Path | None = None
    ) -> tuple[float, ChildRun]:
        """Runs one job: the job's own seconds (from the job store), and how the process ran."""
        from foretell.jobs.store import JobStore

        command = [
            *foretell_command(),
            "batch",
            MODEL,
            "--repository",
            str(self.repository),
            "--version",
            VERSION,
            "--source",
            str(source),
            "--destination",
            destination,
            "--chunk-rows",
            str(self.chunk_rows),
            "--store",
            str(self.store),
            "--job-id",
            job_id,
        ]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        if errors is not None:
            command += ["--errors", str(errors)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        log = self.logs / f"{job_id}.log"
        child = run_child(command, log, env=env)
        if child.code != 0:
            raise BenchError(
                f"foretell batch ({job_id}) exited with {child.code}:\n{tail(log)}\n"
                f"  command: {' '.join(command)}"
            )
        job = JobStore(self.store).get(job_id)
        if job.status != "done" or job.rows_in != rows or job.rows_rejected:
            raise BenchError(
                f"job {job_id} is {job.status} with {job.rows_in:,} rows in, "
                f"{job.rows_rejected:,} rejected; expected {rows:,} valid rows:\n{tail(log)}"
            )
        return job.seconds, child


def parquet_rows(folder: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet"))


# --- PostgreSQL ---------------------------------------------------------------------------


class Postgres:
    """The table a Parquet to PostgreSQL run writes; dropped before each run and at the end."""

    def __init__(self, uri: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        url = make_url(uri)
        table = url.query.get("table")
        if not isinstance(table, str) or not table:
            raise BenchError(f"--postgres must name a table (?table=name); got {uri}")
        self.uri, self.table = uri, table
        url = url.difference_update_query(["table"])
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        self.engine = create_engine(url)
        self.quoted = self.engine.dialect.identifier_preparer.quote(table)

    def drop(self) -> None:
        from sqlalchemy import text

        with self._errors("drop"), self.engine.begin() as db:
            db.execute(text(f"DROP TABLE IF EXISTS {self.quoted}"))

    def count(self) -> int:
        from sqlalchemy import text

        with self._errors("count the rows of"), self.engine.connect() as db:
            return int(db.execute(text(f"SELECT count(*) FROM {self.quoted}")).scalar_one())

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise BenchError(f"cannot {doing} table {self.table} of {self.uri}: {reason}") from None


# --- MLServer -----------------------------------------------------------------------------


def find_mlserver(venv: Path) -> Path | None:
    found = shutil.which("mlserver")
    if found:
        return Path(found)
    local = venv / "bin" / "mlserver"
    return local if local.exists() else None


def install_peers(venv: Path) -> None:
    """Creates ``venv`` with MLServer and its scikit-learn runtime; on failure, says so."""
    say(f"installing MLServer into {venv} (python -m venv; pip install mlserver mlserver-sklearn)")
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                *(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"),
                *("--disable-pip-version-check", "mlserver", "mlserver-sklearn"),
                # uvloop 0.22+ raises in MLServer 1.7's inference workers ("There is no
                # current event loop"): every model fails to load without this pin.
                "uvloop<0.22",
            ],
            check=True,
            timeout=900,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        say(f"could not install MLServer ({exc}); going on without it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interpreter_of(script: Path) -> str:
    """The Python a console script runs with (its shebang), to train the model in its venv."""
    first = script.read_text(errors="replace").splitlines()[0]
    return first[2:].strip() if first.startswith("#!") else "python3"


def tree_peak_rss(pid: int) -> int:
    """The sum of VmHWM (peak RSS) over ``pid`` and its descendants, in bytes."""
    return sum(status_bytes(p, "VmHWM") for p in process_tree(pid))


class MLServer:
    """An ``mlserver start`` of the same estimator, for ``mlserver infer`` to send batches to."""

    def __init__(self, executable: Path, folder: Path) -> None:
        self.executable, self.folder = executable, folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        model = self.folder / MODEL
        model.mkdir(parents=True)
        train_log = self.folder / "train.log"
        python = interpreter_of(self.executable)
        trained = run_child(
            [python, "-c", TRAIN_FOR_MLSERVER, str(model / "model.joblib")], train_log
        )
        if trained.code != 0:
            raise BenchError(f"training the model for MLServer failed:\n{tail(train_log)}")
        (model / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": MODEL,
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": "./model.joblib"},
                }
            )
        )
        (self.folder / "settings.json").write_text(
            json.dumps(
                {
                    "http_port": self.port,
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                    "host": "127.0.0.1",
                }
            )
        )
        log = (self.folder / "server.log").open("wb")
        self.process = subprocess.Popen(
            [str(self.executable), "start", str(self.folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        url = f"http://127.0.0.1:{self.port}/v2/models/{MODEL}/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"mlserver start failed: {self.why()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise BenchError(f"MLServer was not ready in 180 s: {self.why()}")

    def why(self) -> str:
        """The errors in the server's log, and a hint for the one known cause."""
        text = (self.folder / "server.log").read_text(errors="replace")
        errors = [line.strip() for line in text.splitlines() if "Error" in line]
        hint = (
            " (uvloop >= 0.22 breaks MLServer 1.7's workers: pip install 'uvloop<0.22' into "
            "MLServer's venv)"
            if "There is no current event loop" in text
            else ""
        )
        return "; ".join(dict.fromkeys(errors[:4])) + hint + f"\n{tail(self.folder / 'server.log')}"

    def peak_rss(self) -> int:
        return tree_peak_rss(self.process.pid) if self.process else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def write_requests(source: Path, target: Path, names: list[str], chunk_rows: int) -> int:
    """The Parquet rows as V2 inference requests, one JSON line per chunk; returns the lines."""
    import orjson

    lines = 0
    with target.open("wb") as out:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows, columns=names):
            x = np.column_stack([c.to_numpy() for c in batch.columns])
            request = {
                "id": f"chunk-{lines}",
                "inputs": [
                    {"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x}
                ],
                "outputs": [{"name": "predict_proba"}],
            }
            out.write(orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            lines += 1
    return lines


def mlserver_infer(
    executable: Path, server: MLServer, requests: Path, lines: int, out: Path, log: Path
) -> ChildRun:
    command = [
        str(executable),
        "infer",
        "-u",
        f"127.0.0.1:{server.port}",
        "-m",
        MODEL,
        "-i",
        str(requests),
        "-o",
        str(out),
    ]
    child = run_child(command, log)
    if child.code != 0:
        raise BenchError(f"mlserver infer exited with {child.code}:\n{tail(log)}")
    answered = 0
    with out.open("rb") as handle:
        for line in handle:
            if b'"error"' in line[:200] or b"predict_proba" not in line:
                raise BenchError(f"mlserver infer answered an error: {line[:300]!r}")
            answered += 1
    if answered != lines:
        raise BenchError(f"mlserver infer answered {answered} of {lines} requests:\n{tail(log)}")
    return child


# --- the report ---------------------------------------------------------------------------


def machine() -> dict[str, str]:
    def capture(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return "?"

    import onnxruntime
    import pandas

    return {
        "nproc": capture(["nproc"]).strip(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in capture(["cat", "/proc/cpuinfo"]).splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "?",
        ),
        "memory": capture(["free", "-h"]).strip(),
        "python": platform.python_version(),
        "load average before": load_average(),
        "onnxruntime": onnxruntime.__version__,
        "pyarrow": pa.__version__,
        "pandas": pandas.__version__,
        "numpy": np.__version__,
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was around the run."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def table(results: Results) -> str:
    best = results.best_ceiling()
    lines = [
        "| measurement | rows | rows/s (median) | min | max | end-to-end rows/s | peak RSS | "
        "cores busy | vs ceiling |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in [*results.ceilings, *results.runs]:
        rates = m.rates()
        rss = m.peak_rss()
        ratio = f"{m.rate() / best.rate():.0%}" if best is not None else ""
        lines.append(
            f"| {m.name} | {m.rows:,} | {rate(m.rate())} | {rate(min(rates))} | "
            f"{rate(max(rates))} | {rate(m.wall_rate())} | "
            f"{'' if rss is None else f'{rss / MIB:,.0f} MiB'} | "
            f"{'' if m.cores() is None else f'{m.cores():.2f}'} | {ratio} |"
        )
    if best is not None:
        lines.append("")
        lines.append(
            f"vs ceiling: median rows/s over the best ceiling's ({best.name}). cores busy: CPU "
            "seconds over seconds (the ceiling's timed loop; a child's whole process)."
        )
    return "\n".join(lines)


def targets(results: Results, parquet: Measurement | None, big: Measurement | None) -> list[str]:
    found = []
    best = results.best_ceiling()
    if parquet is not None and best is not None:
        ratio = parquet.rate() / best.rate()
        # Each repeat against the best ceiling of the same repeat: less exposed to noise
        # that comes and goes between repeats.
        paired = [
            rate / max(c.rates()[i] for c in results.ceilings)
            for i, rate in enumerate(parquet.rates())
        ]
        found.append(
            f"Parquet to Parquet >= 80% of the ceiling: {ratio:.0%} "
            f"-> {'met' if ratio >= 0.8 else 'MISSED'} (per repeat, against that repeat's best "
            f"ceiling: {', '.join(f'{r:.0%}' for r in paired)})"
        )
    if parquet is not None and big is not None:
        small_rss, big_rss = parquet.peak_rss() or 0, big.peak_rss() or 0
        found.append(
            f"peak RSS of {big.rows:,} rows under 1 GiB: {big_rss / MIB:,.0f} MiB "
            f"-> {'met' if big_rss < GIB else 'MISSED'}"
        )
        growth = big_rss / small_rss - 1 if small_rss else float("inf")
        found.append(
            f"peak RSS of {big.rows:,} rows within 10% of {parquet.rows:,}: {growth:+.1%} "
            f"-> {'met' if abs(growth) <= 0.10 else 'MISSED'}"
        )
    return found


# --- the benchmark ------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> Results:
    results = Results(machine(), " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    repository = args.repository or build_repository(work / "models")
    onnx_path = repository / MODEL / VERSION / "model.onnx"
    if not onnx_path.is_file():
        raise BenchError(f"{onnx_path} does not exist: is --repository a foretell repository?")
    names, low, high = spec_ranges(repository)
    source = work / "rows.parquet"
    write_rows(source, args.rows, names, low, high, args.seed, args.row_group_rows, args.noise)
    logs = work / "logs"
    logs.mkdir()
    job = ForetellJob(repository, work / "jobs.db", args.chunk_rows, args.workers, logs)

    variants: list[tuple[str, int, int]] = [
        ("ceiling: onnxruntime, 1 intra-op thread", 1, 1),
        ("ceiling: onnxruntime, 2 intra-op threads", 2, 1),
        ("ceiling: onnxruntime 1 thread, 2 calling threads", 1, 2),
    ]
    results.ceilings = [Measurement(name, args.rows) for name, _, _ in variants]
    parquet = Measurement("foretell batch: Parquet -> Parquet", args.rows)
    for repeat in range(args.repeat):
        for measurement, (_, intra, threads) in zip(results.ceilings, variants, strict=True):
            seconds, cpu = ceiling(onnx_path, source, names, args.chunk_rows, intra, threads)
            measurement.seconds.append(seconds)
            measurement.busy.append(cpu / seconds)
            say(
                f"[{repeat + 1}/{args.repeat}] {measurement.name}: {measurement.rates()[-1]:,.0f}/s"
            )
        destination = work / f"out-{repeat}.parquet"
        seconds, child = job.run(f"bench-parquet-{repeat}", source, str(destination), args.rows)
        written = parquet_rows(destination)
        if written != args.rows:
            raise BenchError(f"the Parquet destination holds {written:,} rows of {args.rows:,}")
        shutil.rmtree(destination, ignore_errors=True)
        parquet.add(seconds, child)
        say(f"[{repeat + 1}/{args.repeat}] {parquet.name}: {done(args.rows, seconds, child)}")
    results.runs.append(parquet)

    if args.postgres:
        try:
            results.runs.extend(postgres_runs(args, job, source))
        except BenchError as exc:  # the other measurements are still worth reporting
            say(f"Error: Parquet -> PostgreSQL failed: {exc}")
            results.failures.append(f"Parquet -> PostgreSQL failed: {str(exc).splitlines()[0]}")
    if not args.no_mlserver:
        results.runs.extend(mlserver_runs(args, work, source, names, results))

    big: Measurement | None = None
    if args.rss_rows:
        big = Measurement("foretell batch: Parquet -> Parquet (RSS run)", args.rss_rows)
        big_source = work / "rss-rows.parquet"
        source.unlink()  # only one input on disk at a time
        write_rows(
            big_source, args.rss_rows, names, low, high, args.seed, args.row_group_rows, args.noise
        )
        destination = work / "out-rss.parquet"
        seconds, child = job.run("bench-rss", big_source, str(destination), args.rss_rows)
        written = parquet_rows(destination)
        if written != args.rss_rows:
            raise BenchError(f"the Parquet destination holds {written:,} rows of {args.rss_rows:,}")
        shutil.rmtree(destination, ignore_errors=True)
        big_source.unlink()
        big.add(seconds, child)
        say(f"{big.name}: {done(args.rss_rows, seconds, child)}")
        results.runs.append(big)
    results.notes = targets(results, parquet, big) + results.notes
    results.machine["load average after"] = load_average()
    return results


def postgres_runs(args: argparse.Namespace, job: ForetellJob, source: Path) -> list[Measurement]:
    import importlib.util

    if importlib.util.find_spec("foretell.destinations.sql") is None:
        say("skipping PostgreSQL: this foretell has no foretell.destinations.sql")
        return []
    target = Postgres(args.postgres)
    measurement = Measurement("foretell batch: Parquet -> PostgreSQL", args.rows)
    try:
        for repeat in range(args.repeat):
            target.drop()
            errors = job.logs / f"pg-errors-{repeat}.jsonl"
            seconds, child = job.run(
                f"bench-postgres-{repeat}", source, args.postgres, args.rows, errors
            )
            written = target.count()
            if written != args.rows:
                raise BenchError(f"table {target.table} holds {written:,} rows of {args.rows:,}")
            measurement.add(seconds, child)
            result = done(args.rows, seconds, child)
            say(f"[{repeat + 1}/{args.repeat}] {measurement.name}: {result}")
    finally:
        with contextlib.suppress(BenchError):  # do not hide the error that got us here
            target.drop()
        target.engine.dispose()
    return [measurement]


def mlserver_runs(
    args: argparse.Namespace, work: Path, source: Path, names: list[str], results: Results
) -> list[Measurement]:
    executable = find_mlserver(args.peers_venv)
    if executable is None:
        say(
            f"skipping MLServer: no mlserver on PATH or in {args.peers_venv / 'bin'} "
            "(--install-peers installs it there)"
        )
        return []
    rows = min(args.mlserver_rows or args.rows, args.rows)
    folder = work / "mlserver"
    requests = work / "requests.jsonl"
    table_ = pq.read_table(source).slice(0, rows) if rows < args.rows else None
    if table_ is not None:
        subset = work / "mlserver-rows.parquet"
        pq.write_table(table_, subset)
        source = subset
    lines = write_requests(source, requests, names, args.chunk_rows)
    say(f"wrote {lines:,} V2 requests of {args.chunk_rows:,} rows for mlserver infer")
    server = MLServer(executable, folder)
    measurement = Measurement(f"mlserver infer (REST, {args.chunk_rows:,} rows/request)", rows)
    try:
        server.start()
        client_rss = []
        for repeat in range(args.repeat):
            out = work / f"mlserver-out-{repeat}.jsonl"
            child = mlserver_infer(
                executable, server, requests, lines, out, work / "logs" / f"mlserver-{repeat}.log"
            )
            out.unlink()
            measurement.seconds.append(child.wall)
            client_rss.append(child.peak_rss)
            say(f"[{repeat + 1}/{args.repeat}] {measurement.name}: {rows / child.wall:,.0f}/s")
        server_rss = server.peak_rss()
        measurement.rss = [server_rss + max(client_rss)]
        measurement.note = (
            f"peak RSS = server processes {server_rss / MIB:,.0f} MiB (sum of their peaks) + "
            f"mlserver infer {max(client_rss) / MIB:,.0f} MiB; the same estimator saved with "
            "joblib for mlserver-sklearn; rows/s from the wall time of mlserver infer against "
            "a started server (the Parquet to V2 JSON conversion before it is not counted)"
        )
        results.notes.append(f"MLServer: {measurement.note}")
    except BenchError as exc:
        say(f"MLServer failed, going on without it: {exc}")
        results.notes.append(f"MLServer: failed: {str(exc).splitlines()[0]}")
        return []
    finally:
        server.stop()
        requests.unlink(missing_ok=True)
    return [measurement]


def positive(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {text}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Every temporary file lives in one folder under --tmp that is deleted at the end.",
    )
    parser.add_argument("--rows", type=positive, default=1_000_000, help="rows to score")
    parser.add_argument("--repeat", type=positive, default=3, help="runs of each measurement")
    parser.add_argument("--chunk-rows", type=positive, default=10_000, help="foretell's chunk")
    parser.add_argument(
        "--row-group-rows", type=positive, default=100_000, help="Parquet row group size"
    )
    parser.add_argument("--workers", type=positive, help="foretell's scoring threads")
    parser.add_argument("--repository", type=Path, help="use this repository; default: build")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated rows")
    parser.add_argument(
        "--noise", type=float, default=0.05, help="noise, in standard deviations of each column"
    )
    parser.add_argument(
        "--postgres",
        metavar="URI",
        help="also Parquet -> PostgreSQL, e.g. "
        "postgresql://postgres@127.0.0.1:5432/test?table=bench_scores (the table is dropped "
        "before each run and at the end)",
    )
    parser.add_argument(
        "--rss-rows", type=positive, help="one more job of this many rows, to compare peak RSS"
    )
    parser.add_argument(
        "--install-peers", action="store_true", help="pip install MLServer into --peers-venv first"
    )
    parser.add_argument(
        "--peers-venv", type=Path, default=PEERS_VENV, help="MLServer's venv (default: %(default)s)"
    )
    parser.add_argument("--no-mlserver", action="store_true", help="skip MLServer even if found")
    parser.add_argument(
        "--mlserver-rows", type=positive, help="rows sent to mlserver infer (default: --rows)"
    )
    parser.add_argument("--tmp", type=Path, help="where the temporary folder goes")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        import foretell  # noqa: F401
    except ImportError as exc:
        MISSING.append(f"{exc}: install foretell (make install) or use its venv")
    if MISSING:
        say(f"Error: {MISSING[0]}")
        return 2
    if args.install_peers:
        install_peers(args.peers_venv)
    work = Path(tempfile.mkdtemp(prefix="foretell-bench-", dir=args.tmp))
    try:
        results = run(args, work)
    except BenchError as exc:
        say(f"Error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("Error: interrupted")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"machine: {results.machine['nproc']} cores ({results.machine['cpu']}), "
        f"Python {results.machine['python']}, onnxruntime {results.machine['onnxruntime']}, "
        f"pyarrow {results.machine['pyarrow']}, pandas {results.machine['pandas']}"
    )
    print(
        f"load average (1, 5, 15 min): {results.machine['load average before']} before, "
        f"{results.machine['load average after']} after"
    )
    print(f"command: {results.command}\n")
    print(table(results))
    for note in results.notes:
        print(f"- {note}")
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    for failure in results.failures:
        say(f"Error: {failure}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
