#!/usr/bin/env python3
"""Soak benchmark of ``foretell serve``: a long run at 70% of the measured maximum throughput.

One command; the example repository is built into a temporary folder (or ``--repository``),
and a ``foretell serve`` child process answers on a free port with its defaults (prediction
log and monitoring on), logging at ``warning``:

1. **maximum throughput**: ``wrk`` (when installed, else this script's own closed loop) sends
   single-row KServe V1 predictions to ``breast-cancer`` from ``--connections`` connections
   for ``--probe-seconds``; requests/s is the ceiling;
2. **soak**: an open-loop generator sends ``--load`` (0.7) of that rate, each request at its
   scheduled time whatever the answers before it did (latency counts from the scheduled time,
   so a stalled server shows as latency, not as fewer requests), for ``--minutes`` (10).
   Every ``--every`` (10) seconds it records requests, errors (any status but 200, a broken
   connection, no answer within 10 s), p50 and p99 latency and the server's RSS;
3. **verdict**: errors must be 0, and the RSS at the end must be within 5% of the RSS after
   warm-up (the first ``--warm-up`` minutes, 1 by default).

It writes ``soak.csv`` and ``soak.png`` (p99 and RSS over time) to ``--out``.

Examples::

    python bench/soak.py                        # 10 minutes
    python bench/soak.py --minutes 1 --out /tmp/soak
    python bench/soak.py --no-monitoring        # the server without its prediction log
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from procstat import status_bytes

MODEL = "breast-cancer"
PATH = f"/v1/models/{MODEL}:predict"
#: A request without an answer after this many seconds counts as an error.
REQUEST_TIMEOUT = 10.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bodies(repository: Path, count: int = 64) -> list[bytes]:
    """``count`` distinct valid single-row bodies, uniform within each feature's range."""
    from foretell.repository import Repository

    spec = Repository(repository).load(MODEL).spec
    rng = np.random.default_rng(7)
    out = []
    for _ in range(count):
        row = {
            f.name: float(rng.uniform(f.min or 0.0, f.max if f.max is not None else 1.0))
            for f in spec.inputs
        }
        out.append(orjson.dumps({"instances": [row]}))
    return out


class Server:
    """``foretell serve`` on a free port, its log in ``folder``."""

    def __init__(self, repository: Path, folder: Path, extra: list[str]) -> None:
        self.port = free_port()
        script = Path(sys.executable).parent / "foretell"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "foretell"]
        command += ["serve", "--repository", str(repository), "--port", str(self.port)]
        command += ["--grpc-port", "0", "--log-level", "warning", *extra]
        self.log = folder / "server.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("the server did not start within 120 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def request(port: int, body: bytes) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads its answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def call(self, raw: bytes) -> int:
        """The status of the answer to ``raw``; reconnects once the server closed."""
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(match[1]) if match else 0)
            return int(head[9:12])
        except BaseException:
            writer.close()
            self.streams = None
            raise


@dataclass
class Window:
    """What one sampling window saw."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0


async def closed_loop(port: int, raws: list[bytes], connections: int, seconds: float) -> float:
    """Requests/s with ``connections`` clients each sending as soon as its answer came."""
    count = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal count
        connection = Connection(port)
        while time.perf_counter() < stop:
            await connection.call(raws[(count + i) % len(raws)])
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(connections)))
    return count / (time.perf_counter() - started)


def wrk_rate(port: int, body: bytes, connections: int, seconds: float, folder: Path) -> float:
    script = folder / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {orjson.dumps(body.decode()).decode()}\n"
    )
    url = f"http://127.0.0.1:{port}{PATH}"
    command = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors while measuring the maximum:\n{out}")
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    return float(match[1])


async def open_loop(
    port: int,
    raws: list[bytes],
    rate: float,
    seconds: float,
    every: float,
    pid: int,
    rows: list[dict[str, float]],
) -> None:
    """Sends ``rate`` requests/s on schedule for ``seconds``; appends a row per window."""
    queue: asyncio.Queue[float] = asyncio.Queue()
    window = Window()

    async def worker() -> None:
        connection = Connection(port)
        while True:
            due = await queue.get()
            try:
                call = connection.call(raws[int(due * 1000) % len(raws)])
                status = await asyncio.wait_for(call, REQUEST_TIMEOUT)
                ok = status == 200
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                ok = False
            if ok:
                window.latencies.append(time.perf_counter() - due)
            else:
                window.errors += 1

    workers = [asyncio.create_task(worker()) for _ in range(256)]
    started = time.perf_counter()
    sent, next_sample = 0, started + every
    while (now := time.perf_counter()) < started + seconds:
        due_count = int((now - started) * rate)
        for i in range(sent, due_count):
            queue.put_nowait(started + i / rate)
        sent = max(sent, due_count)
        if now >= next_sample:
            done, window = window, Window()
            lat = np.array(done.latencies) * 1000
            row = {
                "seconds": round(now - started, 1),
                "requests": len(done.latencies) + done.errors,
                "errors": done.errors,
                "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
                "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
                "rss_mib": status_bytes(pid, "VmRSS") / 2**20,
                "backlog": queue.qsize(),
            }
            rows.append(row)
            say(
                f"  {row['seconds']:6.0f} s  {row['requests'] / every:7.0f} req/s  "
                f"errors {row['errors']}  p50 {row['p50_ms']:6.1f} ms  "
                f"p99 {row['p99_ms']:6.1f} ms  RSS {row['rss_mib']:6.1f} MiB"
            )
            next_sample += every
        await asyncio.sleep(0.001)
    for task in workers:
        task.cancel()


def plot(rows: list[dict[str, float]], warm_up: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["seconds"] / 60 for r in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(minutes, [r["p99_ms"] for r in rows], label="p99")
    top.plot(minutes, [r["p50_ms"] for r in rows], label="p50")
    top.set_ylabel("latency (ms)")
    top.legend()
    top.set_title(title)
    bottom.plot(minutes, [r["rss_mib"] for r in rows], color="tab:red")
    bottom.set_ylabel("server RSS (MiB)")
    bottom.set_xlabel("minutes")
    for axis in (top, bottom):
        axis.axvline(warm_up / 60, color="grey", linestyle=":")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--warm-up", type=float, default=1.0, help="minutes before RSS counts")
    parser.add_argument("--load", type=float, default=0.7, help="share of the maximum rate")
    parser.add_argument("--every", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--connections", type=int, default=16, help="for the maximum")
    parser.add_argument("--probe-seconds", type=float, default=20.0, help="for the maximum")
    parser.add_argument("--repository", type=Path, help="default: the examples, built here")
    parser.add_argument("--out", type=Path, default=Path("soak-results"))
    parser.add_argument(
        "--no-monitoring", action="store_true", help="serve without the prediction log"
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="foretell-soak-") as temp:
        folder = Path(temp)
        repository = args.repository
        if repository is None:
            from foretell.examples import build_examples

            repository = folder / "models"
            say(f"building the {MODEL} example into {repository}")
            build_examples(repository, only=[MODEL])
        server = Server(repository, folder, ["--no-monitoring"] if args.no_monitoring else [])
        try:
            payloads = bodies(repository)
            raws = [request(server.port, b) for b in payloads]
            say(f"measuring the maximum for {args.probe_seconds:g} s")
            if shutil.which("wrk"):
                ceiling = wrk_rate(
                    server.port, payloads[0], args.connections, args.probe_seconds, folder
                )
                how = "wrk"
            else:
                ceiling = asyncio.run(
                    closed_loop(server.port, raws, args.connections, args.probe_seconds)
                )
                how = "closed loop"
            rate = args.load * ceiling
            say(f"maximum {ceiling:.0f} req/s ({how}); soaking at {rate:.0f} req/s")
            rows: list[dict[str, float]] = []
            asyncio.run(
                open_loop(
                    server.port,
                    raws,
                    rate,
                    args.minutes * 60,
                    args.every,
                    server.process.pid,
                    rows,
                )
            )
        finally:
            server.stop()
    with (args.out / "soak.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    warm = [r for r in rows if r["seconds"] > args.warm_up * 60]
    errors = sum(int(r["errors"]) for r in rows)
    after_warm_up = statistics.median(r["rss_mib"] for r in warm[:3])
    at_end = statistics.median(r["rss_mib"] for r in warm[-3:])
    growth = (at_end - after_warm_up) / after_warm_up
    p99 = [r["p99_ms"] for r in warm]
    title = (
        f"foretell serve, {MODEL}, {rate:.0f} req/s (70% of {ceiling:.0f}), "
        f"{args.minutes:g} min, {os.cpu_count()} cores"
    )
    plot(rows, args.warm_up * 60, args.out / "soak.png", title)
    say(f"maximum throughput: {ceiling:.0f} req/s ({how}); soak at {rate:.0f} req/s")
    say(f"requests: {sum(int(r['requests']) for r in rows)}, errors: {errors}")
    say(
        f"p99 after warm-up: median {statistics.median(p99):.1f} ms, worst window {max(p99):.1f} ms"
    )
    say(
        f"RSS after warm-up {after_warm_up:.1f} MiB, at the end {at_end:.1f} MiB: "
        f"growth {growth:+.1%}"
    )
    verdict = errors == 0 and growth < 0.05
    say(f"verdict: {'PASS' if verdict else 'FAIL'} (0 errors and RSS growth under 5%)")
    say(f"wrote {args.out / 'soak.csv'} and {args.out / 'soak.png'}")
    sys.exit(0 if verdict else 1)


if __name__ == "__main__":
    main()
