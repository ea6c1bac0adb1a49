#!/usr/bin/env python3
"""Stream benchmark of foretell: Redis stream to Redis stream, and MQTT, on breast-cancer.

One command; the model repository is built into a temporary folder, and every stream, topic,
table and file it creates is deleted at the end (also when a step fails):

1. **sustained messages/s**: ``--messages`` events (rows of scikit-learn's breast cancer data,
   30 floats, one JSON ``data`` field per entry) are preloaded into a fresh Redis stream, then
   ``foretell stream breast-cancer --source redis://...?stream=IN --destination DEST
   --output redis://...?stream=OUT --exit-when-idle 2`` runs as a child process and drains it.
   Messages/s = messages / (time of the last decision on OUT - the consumer ready), so model
   loading and the idle wait at the end are excluded;
2. **latency at a fixed input rate**: the consumer runs first, then a producer paced in 1 ms
   steps XADDs ``--rate`` events/s for ``--duration`` seconds; an event's time is its Redis
   entry id (the server's clock when it was added) and its decision's time is the id of its
   entry on OUT (published after the result is stored), so latency = OUT id - IN id, in ms.
   The producer checks that it kept the rate (it says so when it could not);
3. **MQTT messages/s**: the consumer subscribes with QoS 1 and a persistent session, then
   ``--mqtt-messages`` QoS 1 messages are published; messages/s = messages / (last decision
   on OUT - first publish). A broker queues at most ``max_queued_messages`` (mosquitto: 1000)
   QoS 1 messages per client beyond those in flight and drops the rest, so the publisher keeps
   at most ``--mqtt-lead`` messages ahead of the decisions it has seen. The broker sends a
   client at most ``max_inflight_messages`` (mosquitto: 20) unacknowledged messages, and the
   consumer acknowledges only once they are stored, so that window bounds a micro-batch:
   ``--mqtt-inflight N`` also measures on a private mosquitto with a window of N.

Each is repeated ``--repeat`` times; the medians are printed (and written with ``--json``).

Examples::

    python bench/stream.py                      # everything, 3 repeats
    python bench/stream.py --messages 50000 --repeat 1 --skip-mqtt
    python bench/stream.py --destination parquet --max-batch 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

MODEL = "breast-cancer"


class BenchError(Exception):
    """A step failed; the message says which and why."""


@dataclass
class Result:
    name: str
    unit: str
    runs: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")


def events(count: int, seed: int = 1) -> list[bytes]:
    """``count`` valid breast-cancer events as JSON, rows of the real data with a little noise."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    rng = np.random.default_rng(seed)
    rows = data.to_numpy()[rng.integers(0, len(data), count)]
    rows = np.clip(rows * rng.normal(1.0, 0.01, rows.shape), 0, data.max().to_numpy())
    names = list(data.columns)
    return [orjson.dumps(dict(zip(names, row.tolist(), strict=True))) for row in rows]


def preload(client: Any, stream: str, bodies: list[bytes]) -> None:
    for start in range(0, len(bodies), 5000):
        pipe = client.pipeline(transaction=False)
        for body in bodies[start : start + 5000]:
            pipe.xadd(stream, {"data": body})
        pipe.execute()


def id_seconds(entry_id: bytes | str) -> float:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) / 1000.0


class Consumer:
    """``foretell stream`` as a child process; ``ready`` is when it started consuming."""

    def __init__(self, args: argparse.Namespace, repo: Path, source: str, out: str, dest: str):
        command = [
            sys.executable,
            "-m",
            "foretell",
            "stream",
            MODEL,
            "--repository",
            str(repo),
            "--source",
            source,
            "--destination",
            dest,
            "--output",
            out,
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--exit-when-idle",
            str(args.idle),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        self.log: list[str] = []
        assert self.process.stderr is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise BenchError(f"the consumer exited before it started: {''.join(self.log)}")
            self.log.append(line)
            if line.startswith("consuming "):
                self.ready = time.time()
                break
        else:
            self.process.kill()
            raise BenchError("the consumer did not start within 120 s")
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def wait(self, timeout: float) -> None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise BenchError(f"the consumer ran past {timeout:.0f} s") from None
        self.reader.join(5)
        if code != 0:
            raise BenchError(f"the consumer failed ({code}): {''.join(self.log[-20:])}")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        import redis

        self.args, self.work = args, work
        self.redis = redis.Redis.from_url(args.redis)
        self.redis.ping()
        self.repo = work / "models"
        self.streams: list[str] = []
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}"

    def names(self) -> tuple[str, str, str]:
        tag = f"{self.prefix}-{len(self.streams)}"
        streams = [f"{tag}-in", f"{tag}-out", f"dead-{tag}-in"]
        self.streams.extend(streams)
        return streams[0], streams[1], tag.replace("-", "_")

    def uri(self, stream: str, **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"stream": stream, **options}.items())
        return f"{self.args.redis}?{query}"

    def destination(self, table: str) -> str:
        if self.args.destination == "parquet":
            return str(self.work / f"{table}.parquet")
        return f"sqlite:///{self.work / 'scores.db'}?table={table}"

    def cleanup(self) -> None:
        if self.streams:
            self.redis.delete(*self.streams)
        self.redis.close()

    def sustained(self, bodies: list[bytes]) -> float:
        source, out, table = self.names()
        preload(self.redis, source, bodies)
        consumer = Consumer(
            self.args, self.repo, self.uri(source), self.uri(out), self.destination(table)
        )
        consumer.wait(600)
        count = int(self.redis.xlen(out))
        if count != len(bodies):
            raise BenchError(f"{count:,} decisions for {len(bodies):,} events")
        last = self.redis.xrevrange(out, count=1)[0][0]
        self.redis.delete(source, out)
        return len(bodies) / (id_seconds(last) - consumer.ready)

    def latency(self, bodies: list[bytes]) -> tuple[float, float, float]:
        source, out, table = self.names()
        self.redis.xgroup_create(source, "foretell", id="0", mkstream=True)
        consumer = Consumer(
            self.args, self.repo, self.uri(source), self.uri(out), self.destination(table)
        )
        rate, total = self.args.rate, len(bodies)
        pipe = self.redis.pipeline(transaction=False)
        sent, behind = 0, 0.0
        start = time.perf_counter()
        deadline = start + 2 * self.args.duration + 10
        while sent < total and time.perf_counter() < deadline:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            if due > sent:
                behind = max(behind, (due - sent) / rate)
                for body in bodies[sent:due]:
                    pipe.xadd(source, {"data": body})
                pipe.execute()
                sent = due
            time.sleep(0.0005)
        produced = total / (time.perf_counter() - start)
        consumer.wait(120)
        entries = self.redis.xrange(out)
        if len(entries) != total:
            raise BenchError(f"{len(entries):,} decisions for {total:,} events")
        millis = sorted(
            (id_seconds(i) - id_seconds(orjson.loads(f[b"data"])["row_key"])) * 1000
            for i, f in entries
        )
        self.redis.delete(source, out)
        if produced < 0.98 * rate:
            print(f"  note: the producer reached {produced:,.0f} events/s of {rate:,}")
        p50 = millis[len(millis) // 2]
        p99 = millis[min(len(millis) - 1, int(len(millis) * 0.99))]
        return p50, p99, produced

    def mqtt(self, bodies: list[bytes], broker: str, lead: int) -> float:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        _, out, table = self.names()
        topic = f"{self.prefix}/{table}"
        client_id = f"{self.prefix}-{table}"
        parts = urlsplit(broker)
        host, port = parts.hostname or "127.0.0.1", parts.port or 1883
        source = f"mqtt://{host}:{port}/{topic}?client_id={client_id}"
        consumer = Consumer(self.args, self.repo, source, self.uri(out), self.destination(table))
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-pub")
        publisher.max_inflight_messages_set(100)
        publisher.connect(host, port)
        publisher.loop_start()
        try:
            time.sleep(1.0)  # the consumer's SUBSCRIBE is asynchronous
            first = time.time()
            pending = []
            seen = 0
            for i, body in enumerate(bodies):
                while i - seen > lead:
                    time.sleep(0.001)
                    seen = self._seen(out)
                record = orjson.loads(body)
                pending.append(publisher.publish(topic, orjson.dumps({"id": i, **record}), qos=1))
                if len(pending) >= 100:
                    for info in pending:
                        info.wait_for_publish(30)
                    pending.clear()
            for info in pending:
                info.wait_for_publish(30)
            consumer.wait(300)
        finally:
            publisher.loop_stop()
            publisher.disconnect()
            self._forget_session(host, port, client_id)
        count = int(self.redis.xlen(out))
        if count != len(bodies):
            raise BenchError(f"MQTT: {count:,} decisions for {len(bodies):,} events")
        last = self.redis.xrevrange(out, count=1)[0][0]
        self.redis.delete(out)
        return len(bodies) / (id_seconds(last) - first)

    def _seen(self, stream: str) -> int:
        return int(self.redis.xlen(stream))

    @staticmethod
    def _forget_session(host: str, port: int, client_id: str) -> None:
        """Ends the consumer's persistent session on the broker (a clean session replaces it)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        with suppress(OSError):
            client.connect(host, port)
            client.loop_start()
            time.sleep(0.2)
            client.loop_stop()
            client.disconnect()


@contextmanager
def private_broker(work: Path, inflight: int) -> Iterator[str]:
    """A mosquitto of our own on a free port, with a larger in-flight window and queue."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = work / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_inflight_messages {inflight}\nmax_queued_messages 1000000\n"
    )
    process = subprocess.Popen(
        ["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise BenchError("the private mosquitto did not start") from None
                time.sleep(0.1)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="foretell-bench-stream-"))
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, Python {platform.python_version()}, {platform.system()}"


def load() -> str:
    """The 1-minute load average: other work on the machine skews every number here."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Targets: 20,000 messages/s sustained Redis to Redis on 2 cores; p99 under "
        "50 ms at 5,000 messages/s.",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    parser.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="MQTT broker")
    parser.add_argument("--messages", type=int, default=200_000, help="events for messages/s")
    parser.add_argument("--rate", type=int, default=5000, help="input rate for latency, /s")
    parser.add_argument("--duration", type=float, default=20.0, help="latency run, seconds")
    parser.add_argument("--mqtt-messages", type=int, default=20_000, help="MQTT events")
    parser.add_argument("--mqtt-lead", type=int, default=800, help="MQTT publisher's lead")
    parser.add_argument(
        "--mqtt-inflight",
        type=int,
        default=0,
        help="also measure on a private mosquitto (started here) with this "
        "max_inflight_messages (the default broker's is 20)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument(
        "--destination",
        choices=["sqlite", "parquet"],
        default="sqlite",
        help="where the consumer stores results (default: a SQLite table)",
    )
    parser.add_argument("--max-batch", type=int, default=2000, help="consumer's --max-batch")
    parser.add_argument("--max-wait-ms", type=int, default=50, help="consumer's --max-wait-ms")
    parser.add_argument("--idle", type=float, default=2.0, help="consumer's --exit-when-idle")
    parser.add_argument("--skip-sustained", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-mqtt", action="store_true")
    parser.add_argument("--repository", type=Path, help="an existing repository to use")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    results: list[Result] = []
    with workspace(args.keep) as work:
        bench = Bench(args, work)
        try:
            if args.repository:
                bench.repo = args.repository
            else:
                from foretell.examples import build_examples

                build_examples(bench.repo, only=[MODEL])
            print(f"machine: {machine()}")
            print(
                f"consumer: --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms}, "
                f"destination {args.destination}"
            )
            if not args.skip_sustained:
                bodies = events(args.messages)
                sustained = Result("Redis -> Redis sustained", "messages/s")
                for run in range(args.repeat):
                    sustained.runs.append(bench.sustained(bodies))
                    print(
                        f"  sustained run {run + 1}: {sustained.runs[-1]:,.0f} messages/s "
                        f"(load {load()})"
                    )
                results.append(sustained)
            if not args.skip_latency:
                bodies = events(int(args.rate * args.duration), seed=2)
                p50 = Result(f"latency p50 at {args.rate:,}/s", "ms")
                p99 = Result(f"latency p99 at {args.rate:,}/s", "ms")
                for run in range(args.repeat):
                    low, high, produced = bench.latency(bodies)
                    p50.runs.append(low)
                    p99.runs.append(high)
                    print(
                        f"  latency run {run + 1}: p50 {low:.0f} ms, p99 {high:.0f} ms "
                        f"({produced:,.0f} events/s produced, load {load()})"
                    )
                results.extend([p50, p99])
            if not args.skip_mqtt:
                bodies = events(args.mqtt_messages, seed=3)
                rate = Result("MQTT QoS 1 -> Redis", "messages/s")
                for run in range(args.repeat):
                    rate.runs.append(bench.mqtt(bodies, args.mqtt, args.mqtt_lead))
                    print(f"  MQTT run {run + 1}: {rate.runs[-1]:,.0f} messages/s (load {load()})")
                results.append(rate)
                if args.mqtt_inflight:
                    wide = Result(
                        f"MQTT QoS 1 -> Redis, broker window {args.mqtt_inflight}", "messages/s"
                    )
                    with private_broker(work, args.mqtt_inflight) as broker:
                        for run in range(args.repeat):
                            wide.runs.append(bench.mqtt(bodies, broker, len(bodies)))
                            print(f"  MQTT wide run {run + 1}: {wide.runs[-1]:,.0f} messages/s")
                    results.append(wide)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            bench.cleanup()
    print(f"\nmedians of {args.repeat} run(s) (load average at the end: {load()}):")
    for r in results:
        runs = ", ".join(f"{v:,.0f}" for v in r.runs)
        print(f"  {r.name}: {r.median:,.0f} {r.unit}  (runs: {runs})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "results": {r.name: r.median for r in results}}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
