"""Stream jobs against the real Redis, Mosquitto and PostgreSQL on 127.0.0.1.

Every test uses its own streams, topics and tables (named with a uuid) and removes them; every
wait is bounded. Consumers run as real ``foretell stream`` processes, killed with SIGKILL or
stopped with SIGTERM where the test says so. A service that is down fails these tests (it is
never a skip): ``make services`` starts them.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pandas as pd
import psycopg
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_breast_cancer

from foretell import Repository
from foretell.destinations import Destination
from foretell.errors import UserError
from foretell.jobs.stream import StreamJob
from foretell.sources.stream import Message, StreamSource
from tests.conftest import free_port

MODEL = "breast-cancer"
JOB = f"stream-{MODEL}"
REDIS_URL = "redis://127.0.0.1:6379/0"
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


# -- events ----------------------------------------------------------------------------------


def _events() -> list[dict[str, float]]:
    data = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    return [{str(k): float(v) for k, v in row.items()} for row in data.to_dict("records")]


EVENTS = _events()
NOT_JSON = b"this is not JSON {"
INVALID = {**EVENTS[0], "mean radius": -1.0}  # below the spec's minimum


def event(i: int, **extra: Any) -> bytes:
    return orjson.dumps({**extra, **EVENTS[i % len(EVENTS)]})


# -- helpers ---------------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def service_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def need(port: int, name: str) -> None:
    """Fails (never skips) when a service is down: under CI=true that must fail the run."""
    if not service_up(port):
        pytest.fail(f"{name} is not reachable on 127.0.0.1:{port}; start it with `make services`")


class Consumer:
    """``foretell stream breast-cancer`` as a child process, its output in a log file."""

    def __init__(
        self,
        repo: Path,
        source: str,
        destination: str,
        *extra: str,
        log: Path,
        stdin: int | None = None,
    ) -> None:
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
            destination,
            *extra,
        ]
        self.log = log
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self, timeout: float = 60) -> Consumer:
        def started() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the consumer exited early:\n{self.output()}")
            return "consuming " in self.output()

        wait_until(started, timeout, "the consumer to start")
        return self

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"the consumer ran past {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(30)

    def scored(self) -> int:
        """The ``N scored`` of the consumer's last line (after it stopped)."""
        line = [x for x in self.output().splitlines() if x.startswith("stopped:")][-1]
        return int(line.split(" scored")[0].rsplit(" ", 1)[-1].replace(",", ""))


@pytest.fixture
def consumers(examples_root: Path, tmp_path: Path) -> Iterator[Callable[..., Consumer]]:
    """Starts consumers; any still running at the end of the test is killed."""
    started: list[Consumer] = []

    def start(source: str, destination: str, *extra: str, stdin: int | None = None) -> Consumer:
        log = tmp_path / f"consumer-{len(started)}.log"
        consumer = Consumer(examples_root, source, destination, *extra, log=log, stdin=stdin)
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        if consumer.process.poll() is None:
            consumer.process.kill()
            consumer.process.wait(10)
        if consumer.process.stdin is not None:
            consumer.process.stdin.close()


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def rdb() -> Iterator[redis.Redis]:
    need(6379, "Redis")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def names(rdb: redis.Redis, tag: str) -> Iterator[tuple[str, str, str]]:
    """The test's source, output and dead-letter streams; deleted after it."""
    source = f"foretell-test-{tag}"
    streams = (source, f"{source}-out", f"dead-{source}")
    yield streams
    rdb.delete(*streams)


def source_uri(stream: str, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"stream": stream, **options}.items())
    return f"{REDIS_URL}?{query}"


def sqlite_uri(tmp_path: Path, table: str) -> str:
    return f"sqlite:///{tmp_path / 'scores.db'}?table={table}"


def stored_keys(tmp_path: Path, table: str) -> list[str]:
    """Every row key stored in a SQLite table (one entry per stored row)."""
    path = tmp_path / "scores.db"
    if not path.exists():
        return []
    with closing(sqlite3.connect(path, timeout=10)) as db:
        try:
            rows = db.execute(f'SELECT row_key FROM "{table}" WHERE job_id = ?', (JOB,))
        except sqlite3.OperationalError:  # not created yet
            return []
        return [r[0] for r in rows]


def pending(rdb: redis.Redis, stream: str, group: str = "foretell") -> int:
    return int(rdb.xpending(stream, group)["pending"])


class Producer(threading.Thread):
    """XADDs events at a steady pace; ``ids`` are the entry ids, in order."""

    def __init__(
        self, rdb: redis.Redis, stream: str, count: int, rate: float, start: int = 0
    ) -> None:
        super().__init__(daemon=True)
        self.rdb, self.stream, self.count, self.rate, self.first = rdb, stream, count, rate, start
        self.ids: list[str] = []

    def run(self) -> None:
        began = time.monotonic()
        for i in range(self.count):
            delay = began + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.ids.append(self.rdb.xadd(self.stream, {"data": event(self.first + i)}).decode())

    def finish(self, timeout: float = 60) -> list[str]:
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        return self.ids


def exactly_once(keys: list[str], expected: list[str]) -> None:
    duplicates = len(keys) - len(set(keys))
    missing, extra = set(expected) - set(keys), set(keys) - set(expected)
    assert (duplicates, len(missing), len(extra)) == (0, 0, 0), (
        f"{duplicates} duplicates, {len(missing)} missing, {len(extra)} unexpected"
    )


# -- Redis -----------------------------------------------------------------------------------


def test_redis_to_sqlite_scores_once_dead_letters_and_publishes(
    rdb: redis.Redis,
    names: tuple[str, str, str],
    tag: str,
    tmp_path: Path,
    consumers: Callable[..., Consumer],
) -> None:
    source, out, dead = names
    valid = [rdb.xadd(source, {"data": event(i)}).decode() for i in range(40)]
    bad_json = rdb.xadd(source, {"data": NOT_JSON}).decode()
    invalid = rdb.xadd(source, {"data": orjson.dumps(INVALID)}).decode()
    # An entry may also hold one field per feature, each value JSON text.
    fields = {k: orjson.dumps(v) for k, v in EVENTS[1].items()}
    valid.append(rdb.xadd(source, fields).decode())
    valid += [rdb.xadd(source, {"data": event(i)}).decode() for i in range(40, 60)]

    table = f"t_{tag}"
    consumer = consumers(
        source_uri(source),
        sqlite_uri(tmp_path, table),
        "--output",
        source_uri(out),
        "--exit-when-idle",
        "1",
    )
    assert consumer.wait(90) == 0, consumer.output()

    exactly_once(stored_keys(tmp_path, table), valid)
    dead_letters = {
        f["row_key"]: f for f in (orjson.loads(f[b"data"]) for _, f in rdb.xrange(dead))
    }
    assert set(dead_letters) == {bad_json, invalid}
    assert "not valid JSON" in dead_letters[bad_json]["error"]
    assert dead_letters[bad_json]["input"] == NOT_JSON.decode()
    assert "mean radius" in dead_letters[invalid]["error"]
    assert orjson.loads(dead_letters[invalid]["input"]) == INVALID
    decisions = [orjson.loads(f[b"data"]) for _, f in rdb.xrange(out)]
    assert sorted(d["row_key"] for d in decisions) == sorted(valid)
    assert {d["decision"] for d in decisions} <= {"refer", "review", "routine"}
    assert pending(rdb, source) == 0
    assert "61 scored, 2 dead letters" in consumer.output()


def test_kill_9_mid_flow_then_restart_stores_each_event_once(
    rdb: redis.Redis,
    names: tuple[str, str, str],
    tag: str,
    tmp_path: Path,
    consumers: Callable[..., Consumer],
) -> None:
    source, _, _ = names
    table = f"t_{tag}"
    uri = source_uri(source, consumer="worker-1")
    args = ("--max-batch", "25", "--exit-when-idle", "1.5")
    rdb.xgroup_create(source, "foretell", id="0", mkstream=True)
    first = consumers(uri, sqlite_uri(tmp_path, table), *args).ready()
    producer = Producer(rdb, source, 1500, rate=500)
    producer.start()
    wait_until(lambda: len(stored_keys(tmp_path, table)) >= 150, 60, "150 rows stored")
    first.kill()
    assert producer.is_alive(), "the producer ended before the kill: the kill was not mid-flow"
    unacked = pending(rdb, source)
    second = consumers(uri, sqlite_uri(tmp_path, table), *args)
    ids = producer.finish()
    assert second.wait(90) == 0, second.output()

    exactly_once(stored_keys(tmp_path, table), ids)
    assert pending(rdb, source) == 0, f"{unacked} were pending at the kill"


def test_a_dead_consumers_pending_entries_are_claimed(
    rdb: redis.Redis,
    names: tuple[str, str, str],
    tag: str,
    tmp_path: Path,
    consumers: Callable[..., Consumer],
) -> None:
    source, _, _ = names
    table = f"t_{tag}"
    rdb.xgroup_create(source, "foretell", id="0", mkstream=True)
    ids = [rdb.xadd(source, {"data": event(i)}).decode() for i in range(120)]
    # A consumer that read 80 entries and died before acknowledging any.
    taken = rdb.xreadgroup("foretell", "ghost", {source: ">"}, count=80)
    assert len(taken[0][1]) == 80
    survivor = consumers(
        source_uri(source, consumer="survivor", claim_idle_ms="500"),
        sqlite_uri(tmp_path, table),
        "--exit-when-idle",
        "2",
    )
    assert survivor.wait(90) == 0, survivor.output()

    exactly_once(stored_keys(tmp_path, table), ids)
    assert pending(rdb, source) == 0
    owners = {c["name"].decode(): c["pending"] for c in rdb.xinfo_consumers(source, "foretell")}
    assert owners["ghost"] == 0


def test_two_consumers_in_one_group_split_the_work(
    rdb: redis.Redis,
    names: tuple[str, str, str],
    tag: str,
    tmp_path: Path,
    consumers: Callable[..., Consumer],
) -> None:
    source, _, _ = names
    table = f"t_{tag}"
    rdb.xgroup_create(source, "foretell", id="0", mkstream=True)
    args = ("--max-batch", "20", "--exit-when-idle", "1.5")
    pair = [
        consumers(source_uri(source, consumer=name), sqlite_uri(tmp_path, table), *args)
        for name in ("left", "right")
    ]
    for consumer in pair:
        consumer.ready()
    producer = Producer(rdb, source, 1200, rate=800)
    producer.start()
    ids = producer.finish()
    for consumer in pair:
        assert consumer.wait(60) == 0, consumer.output()

    exactly_once(stored_keys(tmp_path, table), ids)
    shares = [consumer.scored() for consumer in pair]
    assert sum(shares) == len(ids) and min(shares) > 0, shares
    assert pending(rdb, source) == 0


# -- PostgreSQL ------------------------------------------------------------------------------


def _postgres(action: str) -> None:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", action],
        check=True,
        timeout=60,
        capture_output=True,
    )


def _postgres_ready() -> bool:
    try:
        with psycopg.connect(POSTGRES, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture
def postgres_table(tag: str) -> Iterator[str]:
    """A fresh table name; PostgreSQL is running again after the test, whatever happened."""
    need(5432, "PostgreSQL")
    table = f"t_{tag}"
    yield table
    if not _postgres_ready():
        _postgres("start")
        wait_until(_postgres_ready, 60, "PostgreSQL to be back")
    with psycopg.connect(POSTGRES, connect_timeout=5, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.execute(f'DROP TABLE IF EXISTS "{table}_errors"')


def _postgres_keys(table: str) -> list[str]:
    try:
        with psycopg.connect(POSTGRES, connect_timeout=2) as conn:
            rows = conn.execute(f'SELECT row_key FROM "{table}" WHERE job_id = %s', (JOB,))
            return [r[0] for r in rows]
    except psycopg.Error:  # down, or the table is not created yet
        return []


def test_postgres_restart_mid_flow_is_retried_and_stores_once(
    rdb: redis.Redis,
    names: tuple[str, str, str],
    postgres_table: str,
    consumers: Callable[..., Consumer],
) -> None:
    source, _, _ = names
    rdb.xgroup_create(source, "foretell", id="0", mkstream=True)
    consumer = consumers(
        source_uri(source),
        f"{POSTGRES}?table={postgres_table}",
        "--max-batch",
        "25",
        "--exit-when-idle",
        "2",
    ).ready()
    producer = Producer(rdb, source, 1500, rate=400)
    producer.start()
    wait_until(lambda: len(_postgres_keys(postgres_table)) >= 100, 60, "100 rows stored")
    _postgres("stop")  # a restart with a window in which writes fail
    time.sleep(1.0)
    _postgres("start")
    wait_until(_postgres_ready, 60, "PostgreSQL to be back")
    ids = producer.finish()
    assert consumer.wait(90) == 0, consumer.output()

    assert "retrying" in consumer.output(), "no write failed: the restart was not mid-flow"
    exactly_once(_postgres_keys(postgres_table), ids)
    assert pending(rdb, source) == 0


# -- MQTT ------------------------------------------------------------------------------------


class Publisher:
    """A QoS 1 MQTT publisher that returns once the broker has each message."""

    def __init__(self) -> None:
        need(MQTT_PORT, "Mosquitto")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"foretell-test-{uuid.uuid4().hex}"
        )
        self.client.connect(MQTT_HOST, MQTT_PORT)
        self.client.loop_start()

    def publish(self, topic: str, payloads: list[bytes]) -> None:
        sent = [self.client.publish(topic, p, qos=1) for p in payloads]
        for info in sent:
            info.wait_for_publish(10)
            assert info.is_published()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def forget_session(client_id: str) -> None:
    """Ends a persistent session: a clean session with the same client id replaces it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.connect(MQTT_HOST, MQTT_PORT)
    client.loop_start()
    time.sleep(0.2)
    client.loop_stop()
    client.disconnect()


@pytest.fixture
def mqtt_session(tag: str) -> Iterator[tuple[str, str]]:
    """A topic and a client id of the test; its persistent session is removed after it."""
    need(MQTT_PORT, "Mosquitto")
    client_id = f"foretell-test-{tag}"
    yield f"foretell-test/{tag}/readings", client_id
    forget_session(client_id)


def test_mqtt_qos1_persistent_session_survives_kill_9(
    tag: str,
    tmp_path: Path,
    mqtt_session: tuple[str, str],
    consumers: Callable[..., Consumer],
) -> None:
    topic, client_id = mqtt_session
    table = f"t_{tag}"
    uri = f"mqtt://{MQTT_HOST}:{MQTT_PORT}/{topic}?client_id={client_id}"
    args = ("--max-batch", "10", "--exit-when-idle", "2")
    publisher = Publisher()
    try:
        first = consumers(uri, sqlite_uri(tmp_path, table), *args).ready()
        # SUBSCRIBE is asynchronous: the session is in place once a probe is stored.
        probes: list[str] = []

        def probe_stored() -> bool:
            probes.append(f"probe-{len(probes)}")
            publisher.publish(topic, [event(0, id=probes[-1])])
            time.sleep(0.3)
            return bool(set(probes) & set(stored_keys(tmp_path, table)))

        wait_until(probe_stored, 30, "the consumer to subscribe")
        during = [f"a-{i}" for i in range(400)]
        for start in range(0, len(during), 50):
            publisher.publish(topic, [event(i, id=k) for i, k in enumerate(during[start:][:50])])
            time.sleep(0.02)
        wait_until(lambda: len(stored_keys(tmp_path, table)) >= 60, 30, "60 rows stored")
        first.kill()
        down = [f"b-{i}" for i in range(300)]  # published while no consumer runs
        publisher.publish(topic, [event(i, id=k) for i, k in enumerate(down)])
        publisher.publish(topic, [NOT_JSON, orjson.dumps({**INVALID, "id": "bad"})])
        second = consumers(uri, sqlite_uri(tmp_path, table), *args)
        assert second.wait(90) == 0, second.output()
    finally:
        publisher.close()

    keys = stored_keys(tmp_path, table)
    events = during + down
    exactly_once([k for k in keys if not k.startswith("probe-")], events)
    with closing(sqlite3.connect(tmp_path / "scores.db", timeout=10)) as db:
        errors = dict(db.execute(f'SELECT row_key, error FROM "{table}_errors"').fetchall())
    assert "mean radius" in errors["bad"]
    assert any("not valid JSON" in e for e in errors.values())


# -- JSON lines ------------------------------------------------------------------------------


def test_followed_jsonl_file_and_restart_from_the_saved_offset(
    tmp_path: Path, consumers: Callable[..., Consumer]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(event(i) + b"\n" for i in range(30)))
    table = "t_lines"
    uri = f"{events}?follow=true"
    first = consumers(uri, sqlite_uri(tmp_path, table)).ready()
    wait_until(lambda: len(stored_keys(tmp_path, table)) == 30, 30, "the first 30 lines")
    with events.open("ab") as f:
        f.write(b"".join(event(i) + b"\n" for i in range(30, 50)))
        f.flush()
        f.write(event(50)[:20])  # half a line: waited for, not scored as it is
        f.flush()
        time.sleep(0.3)
        f.write(event(50)[20:] + b"\n")
    wait_until(lambda: len(stored_keys(tmp_path, table)) == 51, 30, "the appended lines")
    assert first.terminate() == 0, first.output()
    assert first.scored() == 51
    offset = tmp_path / "events.jsonl.foretell-offset"
    assert int(offset.read_text()) == events.stat().st_size

    with events.open("ab") as f:  # appended while no consumer runs
        f.write(b"".join(event(i) + b"\n" for i in range(51, 60)))
    second = consumers(uri, sqlite_uri(tmp_path, table), "--exit-when-idle", "1")
    assert second.wait(60) == 0, second.output()
    assert second.scored() == 9, "lines before the saved offset were read again"
    keys = stored_keys(tmp_path, table)
    assert len(keys) == len(set(keys)) == 60


def test_standard_input_is_scored_as_lines_arrive(
    tmp_path: Path, consumers: Callable[..., Consumer]
) -> None:
    table = "t_stdin"
    consumer = consumers("-", sqlite_uri(tmp_path, table), stdin=subprocess.PIPE).ready()
    stdin = consumer.process.stdin
    assert stdin is not None
    stdin.write(b"".join(event(i) + b"\n" for i in range(5)))
    stdin.flush()  # the pipe stays open: these are scored without waiting for its end
    wait_until(lambda: len(stored_keys(tmp_path, table)) == 5, 30, "the first lines")
    stdin.write(b"".join(event(i) + b"\n" for i in range(5, 12)) + NOT_JSON + b"\n")
    stdin.close()
    assert consumer.wait(60) == 0, consumer.output()
    assert "12 scored, 1 dead letters" in consumer.output()
    assert len(set(stored_keys(tmp_path, table))) == 12


# -- stopping and metrics --------------------------------------------------------------------


def test_sigterm_mid_flow_stores_and_acknowledges_what_was_read(
    rdb: redis.Redis,
    names: tuple[str, str, str],
    tag: str,
    tmp_path: Path,
    consumers: Callable[..., Consumer],
) -> None:
    source, _, _ = names
    table = f"t_{tag}"
    rdb.xgroup_create(source, "foretell", id="0", mkstream=True)
    consumer = consumers(
        source_uri(source, consumer="graceful"), sqlite_uri(tmp_path, table), "--max-batch", "30"
    ).ready()
    producer = Producer(rdb, source, 1000, rate=500)
    producer.start()
    wait_until(lambda: len(stored_keys(tmp_path, table)) >= 100, 60, "100 rows stored")
    assert consumer.terminate() == 0, consumer.output()
    ids = producer.finish()
    assert "stopped:" in consumer.output()

    # Nothing read is left unacknowledged, and everything read up to the group's last
    # delivered entry is stored: no event was lost by stopping.
    assert pending(rdb, source) == 0
    group = next(g for g in rdb.xinfo_groups(source) if g["name"] == b"foretell")
    delivered = group["last-delivered-id"].decode()
    read = [
        i for i in ids if tuple(map(int, i.split("-"))) <= tuple(map(int, delivered.split("-")))
    ]
    assert 0 < len(read) < len(ids), "the stop was not mid-flow"
    exactly_once(stored_keys(tmp_path, table), read)
    assert consumer.scored() == len(read)


def test_metrics_endpoint_exposes_rate_lag_latency_and_dead_letters(
    rdb: redis.Redis,
    names: tuple[str, str, str],
    tag: str,
    tmp_path: Path,
    consumers: Callable[..., Consumer],
) -> None:
    source, _, _ = names
    port = free_port()
    consumer = consumers(
        source_uri(source), sqlite_uri(tmp_path, f"t_{tag}"), "--metrics-port", str(port)
    ).ready()
    for i in range(25):
        rdb.xadd(source, {"data": event(i)})
    rdb.xadd(source, {"data": NOT_JSON})

    def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return samples

    def counted(samples: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> float:
        return sum(samples.get("foretell_stream_messages_total", {}).values())

    wait_until(lambda: counted(scrape()) == 26, 30, "26 messages counted")
    samples = scrape()
    model = (("model", MODEL),)
    total = samples["foretell_stream_messages_total"]
    assert total[(("model", MODEL), ("outcome", "scored"))] == 25
    assert total[(("model", MODEL), ("outcome", "dead"))] == 1
    assert samples["foretell_stream_dead_letters_total"][model] == 1
    assert samples["foretell_stream_latency_seconds_count"][model] == 25
    assert samples["foretell_stream_latency_seconds_sum"][model] > 0
    assert (("le", "+Inf"), ("model", MODEL)) in samples["foretell_stream_latency_seconds_bucket"]
    wait_until(lambda: scrape()["foretell_stream_lag"][model] == 0, 10, "the lag gauge to reach 0")
    assert scrape()["foretell_stream_messages_per_second"][model] > 0
    assert consumer.terminate() == 0, consumer.output()


# -- in-process: poison messages, retries, stopping ------------------------------------------


class ListSource(StreamSource):
    """A finite source in memory that records each acknowledgement and what was stored then."""

    def __init__(self, bodies: list[Any], store: MemoryDestination) -> None:
        super().__init__("memory")
        self.waiting = [Message(f"m{i}", b, time.time(), i) for i, b in enumerate(bodies)]
        self.store = store
        self.acked: list[tuple[str, int]] = []  # (message id, rows stored when acknowledged)
        self.ended = False

    def read(self, count: int, timeout: float) -> list[Message]:
        batch, self.waiting = self.waiting[:count], self.waiting[count:]
        self.ended = not batch
        return batch

    def ack(self, messages: list[Message]) -> None:
        self.acked.extend((m.id, len(self.store.rows)) for m in messages)


class MemoryDestination(Destination):
    """Rows by (job_id, row_key); ``failures`` are raised by the next writes, in order."""

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        super().__init__("memory")
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.failures = list(failures or [])
        self.always: BaseException | None = None

    def write(self, job_id: str, chunk: int, frame: pd.DataFrame) -> None:
        if self.always is not None:
            raise self.always
        if self.failures:
            raise self.failures.pop(0)
        for row in frame.to_dict("records"):
            self.rows.setdefault((job_id, str(row["row_key"])), row)

    def read(self, job_id: str) -> pd.DataFrame:
        return pd.DataFrame([r for (j, _), r in self.rows.items() if j == job_id])


def _job(repository: Repository, bodies: list[Any], store: MemoryDestination) -> StreamJob:
    model = repository.load(MODEL)
    dead = MemoryDestination()
    return StreamJob(model, ListSource(bodies, store), store, dead, max_batch=4)


def _lost_connection() -> UserError:
    """A destination's error that wraps a lost connection, as the SQL destination raises it."""
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError:
            raise UserError("cannot write chunk 1: database is locked") from None
    except UserError as exc:
        return exc


def test_a_poison_message_becomes_a_dead_letter_and_its_batch_goes_on(
    repository: Repository,
) -> None:
    huge = {**EVENTS[2], "mean radius": 2**70}  # the pipeline cannot take it with the others
    store = MemoryDestination()
    job = _job(repository, [EVENTS[0], huge, EVENTS[1], "[1, 2]"], store)
    totals = job.run(threading.Event())
    assert (totals.scored, totals.dead) == (2, 2)
    assert sorted(k for _, k in store.rows) == ["m0", "m2"]
    assert isinstance(job.dead_letters, MemoryDestination)
    dead = {k: r["error"] for (_, k), r in job.dead_letters.rows.items()}
    assert "mean radius" in dead["m1"] and "JSON object" in dead["m3"]
    assert isinstance(job.source, ListSource)
    assert [m for m, _ in job.source.acked] == ["m0", "m1", "m2", "m3"]


def test_a_failing_destination_is_retried_and_nothing_acknowledged_before_it_stores(
    repository: Repository,
) -> None:
    store = MemoryDestination([ConnectionError("refused"), _lost_connection()])
    job = _job(repository, EVENTS[:6], store)
    totals = job.run(threading.Event())
    assert totals.scored == 6 and len(store.rows) == 6
    assert isinstance(job.source, ListSource)
    # Each message was acknowledged only once its batch (of 4, then 2) was stored.
    assert job.source.acked == [(f"m{i}", 4 if i < 4 else 6) for i in range(6)]
    retries = job.metrics.registry.get_sample_value(
        "foretell_stream_write_retries_total", {"model": MODEL}
    )
    assert retries == 2


def test_an_error_retrying_cannot_fix_stops_the_job_unacknowledged(
    repository: Repository,
) -> None:
    store = MemoryDestination([UserError("table 't' does not match the results")])
    job = _job(repository, EVENTS[:6], store)
    with pytest.raises(UserError, match="does not match"):
        job.run(threading.Event())
    assert isinstance(job.source, ListSource)
    assert job.source.acked == []


def test_stopping_while_the_destination_is_down_acknowledges_nothing_unstored(
    repository: Repository,
) -> None:
    store = MemoryDestination()
    store.always = ConnectionError("the database is down")
    job = _job(repository, EVENTS[:12], store)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    job.run(stop)
    assert time.monotonic() - started < 10
    assert isinstance(job.source, ListSource)
    assert job.source.acked == [] and store.rows == {}
