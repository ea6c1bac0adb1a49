#!/usr/bin/env python3
"""Real-time serving benchmark: foretell against MLServer and BentoML on the same model.

One command, everything in a temporary folder that is deleted at the end::

    .venv/bin/python bench/serving.py                      # 3 repeats of 5 s per load
    .venv/bin/python bench/serving.py --repeat 3 --duration 10
    .venv/bin/python bench/serving.py --no-peers --only foretell   # foretell's configurations

What it does:

1. installs what is missing: ``wrk`` (apt-get), MLServer 1.7 with its scikit-learn runtime into
   ``bench/.venv-mlserver``, BentoML into ``bench/.venv-bentoml`` (git-ignored; a peer that
   does not install is reported and skipped);
2. builds the ``breast-cancer`` example (gradient boosting, 100 trees of depth 2, 30 float
   inputs): version 1 is the scikit-learn estimator (skops), version 2 the same estimator
   converted to ONNX. The very same fitted estimator is written with joblib for the peers;
3. serves it in each configuration of :data:`CONFIGS`, one at a time, and drives identical
   Open Inference Protocol (V2) JSON load with ``wrk``: 1-row requests at 1, 8 and 32
   connections, 32-row requests at 8 connections, ``--duration`` s each after a warm-up;
   then the same over gRPC with a ``tritonclient.grpc.aio`` load script (Triton's
   ``perf_analyzer`` is not on PyPI as a binary) for the servers that speak gRPC. It does so
   in ``--repeat`` rounds over every configuration (a fresh server each round), so that a busy
   spell of the shared machine costs every server a run rather than one server all of its;
4. measures the ceilings: in-process predictions of the same model (onnxruntime alone, the
   scikit-learn estimator alone, and foretell's whole pipeline) and the requests/s of a no-op
   route (``GET /v2/health/live``) on foretell's own HTTP stack, at 32 connections (it goes
   through the ASGI layers, which the V2 infer route's fast path does without);
5. prints Markdown tables: per server and load the median requests/s (min-max), rows/s, p50
   and p99 latency (medians), errors, and the CPU used during the run in cores (CPU seconds
   per second, medians): by the server's processes together and by the busiest one (1.00
   means that process kept a core busy: one interpreter is the limit), and by the load
   generator; foretell / peer ratios from this run; the ceilings.

Every server gets the same body; each answers with its own default outputs (foretell: label,
probabilities, decision and a prediction id per row; MLServer: ``predict``; BentoML: the
probabilities). foretell's default configuration also writes every prediction to its
prediction log (SQLite), which the peers do not have; ``--no-monitoring`` rows show the cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from procstat import cpu_seconds, process_tree, status_bytes

MODEL = "breast-cancer"
HERE = Path(__file__).resolve().parent
MLSERVER_VENV = HERE / ".venv-mlserver"
BENTOML_VENV = HERE / ".venv-bentoml"
#: (rows per request, connections) of each load.
LOADS = [(1, 1), (1, 8), (1, 32), (32, 8)]

#: name -> (server kind, options). foretell options are `foretell serve` flags (``foretell``
#: alone is the default: one worker, adaptive batching, prediction log on); ``repo`` picks the
#: repository: ``onnx`` serves version 2, ``sklearn`` version 1, ``compiled`` version 1 with
#: ``compile: onnx``.
CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "foretell": ("foretell", {"repo": "onnx", "args": []}),
    "foretell 2 workers": ("foretell", {"repo": "onnx", "args": ["--workers", "2"]}),
    "foretell no batching": ("foretell", {"repo": "onnx", "args": ["--max-batch-size", "1"]}),
    "foretell --no-monitoring": ("foretell", {"repo": "onnx", "args": ["--no-monitoring"]}),
    "foretell sklearn": ("foretell", {"repo": "sklearn", "args": []}),
    "foretell sklearn compile: onnx": ("foretell", {"repo": "compiled", "args": []}),
    "MLServer default": ("mlserver", {}),
    "MLServer no pool + batching": (
        "mlserver",
        {"parallel_workers": 0, "max_batch_size": 32, "max_batch_time": 0.002},
    ),
    "MLServer 2 workers + batching": (
        "mlserver",
        {"parallel_workers": 2, "max_batch_size": 32, "max_batch_time": 0.002},
    ),
    "BentoML 1 worker": ("bentoml", {"workers": 1}),
    "BentoML 1 worker + batching": ("bentoml", {"workers": 1, "batch": 32}),
    "BentoML 2 workers": ("bentoml", {"workers": 2}),
}

BENTO_SERVICE = """
import os
import joblib
import numpy as np
import bentoml

#: The most rows of one adaptive batch; 0: every request alone.
BATCH = int(os.environ["BENCH_BATCH"])


def answer(p):
    return {"model_name": "breast-cancer", "outputs": [{"name": "probabilities",
            "datatype": "FP64", "shape": list(p.shape), "data": p.ravel().tolist()}]}


def matrix(tensor):
    return np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])


@bentoml.service(workers=int(os.environ["BENCH_WORKERS"]))
class BreastCancer:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL"])

    if BATCH:
        # BentoML's adaptive batching: the "inputs" lists of concurrent requests arrive as
        # one list; each caller gets the answers of its own tensors back (as a list)
        @bentoml.api(route="/v2/models/breast-cancer/infer", batchable=True,
                     max_batch_size=BATCH, max_latency_ms=1000)
        def infer(self, inputs: list[dict]) -> list[dict]:
            xs = [matrix(tensor) for tensor in inputs]
            p = self.model.predict_proba(np.concatenate(xs))
            return [answer(part) for part in np.split(p, np.cumsum([len(x) for x in xs])[:-1])]
    else:
        @bentoml.api(route="/v2/models/breast-cancer/infer")
        def infer(self, inputs: list[dict]) -> dict:
            return answer(self.model.predict_proba(matrix(inputs[0])))
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "r")
wrk.body = f:read("*a")
f:close()
"""


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- installing --------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    say("installing wrk (apt-get install -y wrk)")
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk is not installed and apt-get could not install it")
    return found


def ensure_venv(venv: Path, executable: str, packages: list[str]) -> Path | None:
    """``venv/bin/executable``, installing ``packages`` there first if needed; None if not."""
    target = venv / "bin" / executable
    if target.exists():
        return target
    say(f"installing {' '.join(packages)} into {venv}")
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--disable-pip-version-check", *packages], check=True, timeout=1200)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        say(f"could not install {packages[0]} ({exc}); going on without it")
        return None
    return target if target.exists() else None


# --- the model and the bodies --------------------------------------------------------------


def prepare(folder: Path) -> dict[str, Path]:
    """Repositories for foretell, the joblib file for the peers, and the request bodies."""
    import joblib
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer

    from foretell.examples import build_examples

    onnx = folder / "onnx"
    build_examples(onnx, only=[MODEL])
    sklearn = folder / "sklearn"
    shutil.copytree(onnx, sklearn)
    shutil.rmtree(sklearn / MODEL / "2")
    compiled = folder / "compiled"
    shutil.copytree(sklearn, compiled)
    with (compiled / MODEL / "1" / "model.yaml").open("a") as spec:
        spec.write("compile: onnx\n")
    skops_file = sklearn / MODEL / "1" / "model.skops"
    estimator = sio.load(skops_file, trusted=sio.get_untrusted_types(file=skops_file))
    joblib.dump(estimator, folder / "model.joblib")
    data = load_breast_cancer().data
    paths = {"onnx": onnx, "sklearn": sklearn, "compiled": compiled}
    for rows in {r for r, _ in LOADS}:
        body = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP64",
                    "shape": [rows, 30],
                    "data": data[:rows].ravel().tolist(),
                }
            ]
        }
        paths[f"body{rows}"] = folder / f"body{rows}.json"
        paths[f"body{rows}"].write_text(json.dumps(body))
    paths["lua"] = folder / "post.lua"
    paths["lua"].write_text(WRK_SCRIPT)
    paths["joblib"] = folder / "model.joblib"
    return paths


# --- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process of one configuration, on free ports."""

    name: str
    command: list[str]
    cwd: Path
    ready_url: str
    infer_url: str
    grpc: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0

    def start(self, timeout: float = 180.0) -> None:
        log = (self.cwd / "server.log").open("wb")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", **self.env},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as answer:
                    if answer.status == 200:
                        self.start_seconds = time.perf_counter() - started
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.name} was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        lines = (self.cwd / "server.log").read_text(errors="replace").splitlines()
        return "\n".join("    " + line for line in lines[-15:])

    def pids(self) -> list[int]:
        """The server's process and its descendants that are running."""
        return [] if self.process is None else process_tree(self.process.pid)

    def rss_mib(self) -> list[float]:
        """The resident memory of each process of the server's tree, in MiB."""
        sizes = [status_bytes(p, "VmRSS") / 2**20 for p in self.pids()]
        return [size for size in sizes if size]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def make_server(
    name: str, kind: str, options: dict[str, object], paths: dict[str, Path], work: Path
) -> Server | None:
    folder = work / re.sub(r"[^a-z0-9]+", "-", name.lower())
    folder.mkdir()
    port, grpc = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    infer = f"{base}/v2/models/{MODEL}/infer"
    if kind == "foretell":
        repo = paths[str(options["repo"])]
        args = [str(a) for a in options["args"]]  # type: ignore[attr-defined]
        command = [sys.executable, "-m", "foretell", "serve", "--repository", str(repo)]
        command += ["--port", str(port), "--grpc-port", str(grpc), "--log-level", "warning"]
        return Server(name, [*command, *args], folder, f"{base}/v2/health/ready", infer, grpc)
    if kind == "mlserver":
        mlserver = ensure_venv(MLSERVER_VENV, "mlserver", MLSERVER_PACKAGES)
        if mlserver is None:
            return None
        settings = {
            "http_port": port,
            "grpc_port": grpc,
            "metrics_port": free_port(),
            "parallel_workers": options.get("parallel_workers", 1),
            "debug": False,
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        model = {
            "name": MODEL,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(paths["joblib"])},
        }
        for key in ("max_batch_size", "max_batch_time"):
            if key in options:
                model[key] = options[key]
        (folder / "model-settings.json").write_text(json.dumps(model))
        ready = f"{base}/v2/models/{MODEL}/ready"
        return Server(name, [str(mlserver), "start", str(folder)], folder, ready, infer, grpc)
    bentoml = ensure_venv(BENTOML_VENV, "bentoml", ["bentoml", "scikit-learn", "joblib"])
    if bentoml is None:
        return None
    (folder / "service.py").write_text(BENTO_SERVICE)
    env = {
        "BENCH_MODEL": str(paths["joblib"]),
        "BENCH_WORKERS": str(options["workers"]),
        "BENCH_BATCH": str(options.get("batch", 0)),
    }
    command = [str(bentoml), "serve", "service:BreastCancer", "--port", str(port)]
    return Server(name, command, folder, f"{base}/readyz", infer, None, env)


#: MLServer 1.7's inference workers fail with uvloop 0.22 ("There is no current event loop").
MLSERVER_PACKAGES = ["mlserver", "mlserver-sklearn", "uvloop<0.22"]


# --- load ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One load run: requests/s, latency percentiles in ms, errors, and the CPU used meanwhile
    in cores (CPU seconds per second): by the server's processes together, by the busiest of
    them, and by the load generator."""

    rps: float
    p50: float
    p99: float
    errors: int
    server_cores: float = float("nan")
    busiest_cores: float = float("nan")
    load_cores: float = float("nan")


def wrk(wrk_path: str, url: str, lua: Path, body: Path, connections: int, seconds: float) -> Run:
    command = [wrk_path, "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--latency"]
    if body.name != "none":
        command += ["-s", str(lua)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    out = subprocess.run(
        [*command, url],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body)},
        timeout=seconds + 60,
    ).stdout
    load = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu(before)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise BenchError(f"wrk gave no result:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(bad.group(1)) if bad else 0
    run = Run(float(rps.group(1)), _percentile(out, "50%"), _percentile(out, "99%"), errors)
    run.load_cores = load / (time.perf_counter() - began)
    return run


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def with_cpu(server: Server, load: Callable[..., Run], *args: object) -> Run:
    """``load(*args)``'s run, with the cores the server's processes used meanwhile. A load run
    in this process (gRPC) counts this process's CPU as the load generator's."""
    before = {pid: cpu_seconds(pid) for pid in server.pids()}
    own = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    run = load(*args)
    elapsed = time.perf_counter() - began
    if math.isnan(run.load_cores):
        run.load_cores = (_cpu(resource.getrusage(resource.RUSAGE_SELF)) - _cpu(own)) / elapsed
    # a process started meanwhile (a prediction log's writer) counts from 0
    used = [cpu_seconds(pid) - before.get(pid, 0.0) for pid in server.pids()]
    run.server_cores = sum(used) / elapsed
    run.busiest_cores = max(used, default=0.0) / elapsed
    return run


def _percentile(out: str, which: str) -> float:
    found = re.search(rf"^\s+{re.escape(which)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if found is None:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
    return float(found.group(1)) * scale


def grpc_load(address: str, rows: int, concurrency: int, seconds: float) -> Run:
    """Closed-loop gRPC load with ``concurrency`` callers of ``tritonclient.grpc.aio``."""
    import numpy as np
    import tritonclient.grpc.aio as triton
    from sklearn.datasets import load_breast_cancer

    x = np.ascontiguousarray(load_breast_cancer().data[:rows])

    async def main() -> Run:
        client = triton.InferenceServerClient(address)
        latencies: list[float] = []
        errors = 0
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                tensor = triton.InferInput("input", list(x.shape), "FP64")
                tensor.set_data_from_numpy(x)
                began = time.perf_counter()
                try:
                    await client.infer(MODEL, [tensor])
                    latencies.append(time.perf_counter() - began)
                except Exception:  # counted, like wrk's non-2xx answers
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        await client.close()
        ms = sorted(v * 1000 for v in latencies) or [float("nan")]
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        return Run(len(latencies) / elapsed, statistics.median(ms), p99, errors)

    return asyncio.run(main())


# --- ceilings ------------------------------------------------------------------------------


def ceilings(paths: dict[str, Path]) -> dict[str, float]:
    """Rows/s of in-process predictions of the same model, 1-row and 32-row calls."""
    import joblib
    import numpy as np
    import onnxruntime as ort
    from sklearn.datasets import load_breast_cancer

    from foretell.pipeline import Model

    data = load_breast_cancer().data
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    onnx_path = paths["onnx"] / MODEL / "2" / "model.onnx"
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    estimator = joblib.load(paths["joblib"])
    model = Model.from_folder(paths["onnx"] / MODEL / "2")
    calls: dict[str, Callable[[np.ndarray], object]] = {
        "onnxruntime session.run": lambda x: session.run(
            ["probabilities"], {name: x.astype(np.float32)}
        ),
        "scikit-learn predict_proba": estimator.predict_proba,
        "foretell Model.predict (whole pipeline)": model.predict,
    }
    result = {}
    for label, call in calls.items():
        for rows in (1, 32):
            x = np.ascontiguousarray(data[:rows])
            for _ in range(50):
                call(x)
            n, began = 0, time.perf_counter()
            while time.perf_counter() - began < 1.0:
                call(x)
                n += 1
            result[f"{label}, {rows}-row calls"] = n * rows / (time.perf_counter() - began)
    return result


# --- the run -------------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    protocol: str
    rows: int
    connections: int
    runs: list[Run]

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs)

    def cpu(self) -> tuple[float, float, float]:
        """The cores the runs used (medians): the server's processes, the busiest of them, and
        the load generator."""
        return (
            statistics.median(r.server_cores for r in self.runs),
            statistics.median(r.busiest_cores for r in self.runs),
            statistics.median(r.load_cores for r in self.runs),
        )

    def cores(self) -> str:
        server, busiest, load = self.cpu()
        return f"server {server:.2f} cores (busiest process {busiest:.2f}), load {load:.2f}"

    def row(self) -> str:
        rps = [r.rps for r in self.runs]
        p50 = statistics.median(r.p50 for r in self.runs)
        p99 = statistics.median(r.p99 for r in self.runs)
        errors = sum(r.errors for r in self.runs)
        server, busiest, load = self.cpu()
        return (
            f"| {self.server} | {self.protocol} | {self.rows} | {self.connections} | "
            f"{self.rps:,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | {self.rps * self.rows:,.0f} | "
            f"{p50:.2f} | {p99:.2f} | {errors} | {server:.2f} ({busiest:.2f}) | {load:.2f} |"
        )


def measure(
    server: Server, args: argparse.Namespace, wrk_path: str, paths: dict[str, Path]
) -> list[Result]:
    """One run of every load against ``server``, after a warm-up."""
    results = []
    warm = paths["body1"]
    wrk(wrk_path, server.infer_url, paths["lua"], warm, 8, min(args.duration, 3))
    for rows, connections in LOADS:
        body = paths[f"body{rows}"]
        url, lua = server.infer_url, paths["lua"]
        run = with_cpu(server, wrk, wrk_path, url, lua, body, connections, args.duration)
        results.append(Result(server.name, "REST", rows, connections, [run]))
        say(results[-1].row())
    if server.grpc is not None and not args.no_grpc:
        for rows, connections in LOADS:
            address = f"127.0.0.1:{server.grpc}"
            run = with_cpu(server, grpc_load, address, rows, connections, args.duration)
            results.append(Result(server.name, "gRPC", rows, connections, [run]))
            say(results[-1].row())
    return results


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}; load average at the start {load[0]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds over every server: runs per load (median)"
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--no-peers", action="store_true", help="foretell only")
    parser.add_argument("--no-grpc", action="store_true", help="REST only")
    parser.add_argument(
        "--only", action="append", default=[], help="configurations whose name starts so"
    )
    args = parser.parse_args()
    if args.repeat < 1 or args.duration < 1:
        parser.error(
            f"--repeat and --duration must be at least 1; got {args.repeat} and {args.duration}"
        )
    chosen = {
        name: config
        for name, config in CONFIGS.items()
        if (not args.no_peers or config[0] == "foretell")
        and (not args.only or any(name.startswith(o) for o in args.only))
    }
    if not chosen:
        parser.error(
            f"no configuration matches --only {args.only}"
            f"{' with --no-peers' if args.no_peers else ''}; the configurations: "
            + ", ".join(CONFIGS)
        )
    wrk_path = ensure_wrk()
    print(f"Machine: {machine()}\n")
    notes: list[str] = []
    # Rounds, each serving every configuration in turn and running every load once: a busy
    # spell of the shared machine then costs every server one run, not one server its all.
    measured: dict[tuple[str, str, int, int], Result] = {}
    noop = Result("foretell GET /v2/health/live", "REST", 0, 32, [])
    broken: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="foretell-bench-") as tmp:
        work = Path(tmp)
        say("building the model and the bodies")
        paths = prepare(work)
        for round_ in range(1, args.repeat + 1):
            for name, (kind, options) in chosen.items():
                if name in broken:
                    continue
                folder = work / f"round-{round_}"
                folder.mkdir(exist_ok=True)
                server = make_server(name, kind, options, paths, folder)
                if server is None:
                    notes.append(f"{name}: not installed, skipped")
                    broken.add(name)
                    continue
                say(f"--- round {round_}, {name}: {' '.join(server.command)}")
                try:
                    server.start()
                    rss_before = server.rss_mib()
                    for result in measure(server, args, wrk_path, paths):
                        key = (result.server, result.protocol, result.rows, result.connections)
                        measured.setdefault(key, dataclasses.replace(result, runs=[]))
                        measured[key].runs += result.runs
                    rss = server.rss_mib()
                    if round_ == args.repeat:
                        notes.append(
                            f"{name}: ready {server.start_seconds:.1f} s after start; RSS per "
                            f"process after the load {', '.join(f'{r:.0f}' for r in rss)} MiB "
                            f"(before: {', '.join(f'{r:.0f}' for r in rss_before)})"
                        )
                    if name == "foretell":
                        live = server.ready_url.replace("/ready", "/live")
                        no_body = (paths["lua"], Path("none"))
                        run = with_cpu(server, wrk, wrk_path, live, *no_body, 32, args.duration)
                        noop.runs.append(run)
                except BenchError as exc:
                    notes.append(f"{name}: failed: {exc}")
                    say(f"{name} failed: {exc}")
                    broken.add(name)
                finally:
                    server.stop()
        ceiling = ceilings(paths)
    report(list(measured.values()), ceiling, noop if noop.runs else None, notes)
    return 0


def report(
    results: list[Result], ceiling: dict[str, float], noop: Result | None, notes: list[str]
) -> None:
    print(
        "| server | protocol | rows/request | connections | requests/s (min-max) | rows/s "
        "| p50 ms | p99 ms | errors | server CPU, cores (busiest process) | load CPU, cores |"
        "\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for result in results:
        print(result.row())
    print("\nRatios, foretell configurations / the best peer configuration of this run:\n")
    print("| foretell configuration | protocol | load | requests/s ratio | p99 ratio | best peer |")
    print("|---|---|---|---:|---:|---|")
    keys = sorted({(r.protocol, r.rows, r.connections) for r in results})
    for protocol, rows, connections in keys:
        same = [
            r
            for r in results
            if (r.protocol, r.rows, r.connections) == (protocol, rows, connections)
        ]
        peers = [r for r in same if not r.server.startswith("foretell")]
        if not peers:
            continue
        best = max(peers, key=lambda r: r.rps)
        best_p99 = statistics.median(r.p99 for r in best.runs)
        for ours in (r for r in same if r.server.startswith("foretell")):
            p99 = statistics.median(r.p99 for r in ours.runs)
            print(
                f"| {ours.server} | {protocol} | {rows} row x {connections} conn | "
                f"{ours.rps / best.rps:.2f}x | {p99 / best_p99:.2f}x | {best.server} |"
            )
    print("\nCeilings:\n")
    for label, rows_per_s in ceiling.items():
        print(f"- in-process {label}: {rows_per_s:,.0f} rows/s")
    if noop is not None:
        print(
            f"- no-op route on foretell's HTTP stack (GET /v2/health/live, through the ASGI "
            f"layers the infer fast path skips): {noop.rps:,.0f} requests/s at 32 conn; "
            f"{noop.cores()}"
        )
        ones = [
            r
            for r in results
            if (r.server, r.protocol, r.rows, r.connections) == ("foretell", "REST", 1, 32)
        ]
        if ones:
            print(
                "- foretell 1-row requests/s at 32 connections / no-op: "
                f"{ones[0].rps / noop.rps:.0%}"
            )
    print("\nNotes:\n")
    for note in notes:
        print(f"- {note}")
    print(f"- load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
