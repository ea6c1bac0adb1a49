"""Adaptive batching: concurrent callers merged into one forward pass each get their own rows."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_breast_cancer
from tritonclient.utils import InferenceServerException

from foretell import Repository
from foretell.errors import ForetellError, ValidationError
from foretell.monitoring.monitor import Monitor
from foretell.monitoring.store import MonitoringStore
from foretell.pipeline import Model, Prediction
from foretell.pipeline.model import Batch
from foretell.serving.batching import Batcher, BatchPolicy
from tests.conftest import Server

CANCER = load_breast_cancer().data
NAMES = [str(n) for n in load_breast_cancer().feature_names]
#: A long wait, so that requests sent together surely meet in one batch.
MERGING = {"max_batch_size": 64, "max_wait_ms": 200.0}


@pytest.fixture
def cancer(repository: Repository) -> Model:
    """A fresh breast-cancer model (ONNX, rejects invalid rows) with no observers."""
    return repository.load("breast-cancer", "2")


def seen_batches(model: Model) -> list[int]:
    """The sizes of the batches ``model`` scores from now on."""
    sizes: list[int] = []

    def observe(batch: Batch) -> None:
        sizes.append(batch.length)

    model.observers.append(observe)
    return sizes


async def gather(batcher: Batcher, model: Model, requests: list[Any], **options: Any) -> list[Any]:
    calls = [batcher.predict(model, rows, **options) for rows in requests]
    return await asyncio.gather(*calls, return_exceptions=True)


def probabilities(results: list[Prediction]) -> np.ndarray:
    return np.array([list(r.outputs["probabilities"].values()) for r in results])


def test_each_caller_gets_its_own_rows_in_one_forward_pass(cancer: Model) -> None:
    sizes = seen_batches(cancer)
    starts = [0, 1, 4, 11, 12, 30]
    lengths = [1, 3, 7, 1, 18, 2]  # mixed sizes, 32 rows in all
    requests = [CANCER[s : s + n] for s, n in zip(starts, lengths, strict=True)]

    answers = asyncio.run(gather(Batcher(**MERGING), cancer, requests))

    assert sizes == [32]  # one forward pass for six callers
    alone = [cancer.predict(rows) for rows in requests]
    for answer, expected, n in zip(answers, alone, lengths, strict=True):
        assert len(answer) == n
        np.testing.assert_allclose(probabilities(answer), probabilities(expected))
        assert [r.decision for r in answer] == [r.decision for r in expected]
    ids = [r.prediction_id for answer in answers for r in answer]
    assert len(set(ids)) == 32


def test_records_and_arrays_merge(cancer: Model) -> None:
    records = [dict(zip(NAMES, map(float, row), strict=True)) for row in CANCER[5:8]]
    answers = asyncio.run(gather(Batcher(**MERGING), cancer, [records, CANCER[:2], records[:1]]))
    assert [len(a) for a in answers] == [3, 2, 1]
    np.testing.assert_allclose(probabilities(answers[0]), probabilities(cancer.predict(records)))
    np.testing.assert_allclose(probabilities(answers[1]), probabilities(cancer.predict(CANCER[:2])))


def test_a_broken_row_fails_only_its_own_request(cancer: Model) -> None:
    sizes = seen_batches(cancer)
    rejected: list[int] = []
    cancer.observers.append(lambda batch: rejected.append(batch.length - len(batch.usable)))
    bad = CANCER[10:13].copy()
    bad[1, 0] = -5.0  # 'mean radius' below its minimum: the model rejects the request
    requests = [CANCER[:2], bad, CANCER[20:24]]

    answers = asyncio.run(gather(Batcher(**MERGING), cancer, requests))

    assert sizes == [9]
    assert [len(a) for a in (answers[0], answers[2])] == [2, 4]
    error = answers[1]
    assert isinstance(error, ValidationError)
    assert [(v.row, v.field, v.rule) for v in error.violations] == [(1, "mean radius", "range")]
    # the observers (metrics, prediction log) see the bad request's rows unscored, no others
    assert rejected == [3]
    expected = probabilities(cancer.predict(CANCER[20:24]))
    np.testing.assert_allclose(probabilities(answers[2]), expected)


def test_a_malformed_request_fails_before_it_joins(cancer: Model) -> None:
    answers = asyncio.run(gather(Batcher(**MERGING), cancer, [CANCER[:1], CANCER[:2, :5]]))
    assert len(answers[0]) == 1
    assert isinstance(answers[1], ForetellError)
    assert "shape" in str(answers[1])


def test_options_are_never_mixed(cancer: Model) -> None:
    sizes = seen_batches(cancer)

    async def both() -> list[Any]:
        batcher = Batcher(**MERGING)
        plain = [batcher.predict(cancer, CANCER[i : i + 1]) for i in range(3)]
        explained = [batcher.predict(cancer, CANCER[i : i + 2], explain=True) for i in range(2)]
        return await asyncio.gather(*plain, *explained, return_exceptions=True)

    answers = asyncio.run(both())
    plain, explained = answers[:3], answers[3:]
    for answer in plain:
        assert len(answer) == 1 and "explanation" not in answer[0].to_dict()
    for answer in explained:  # explained, or refused for that reason, but never plain
        if isinstance(answer, BaseException):
            assert "expla" in str(answer)
        else:
            assert len(answer) == 2 and "explanation" in answer[0].to_dict()
    assert sorted(sizes) in ([3], [3, 4])


def test_a_full_batch_leaves_at_once_and_the_rest_waits_its_turn(cancer: Model) -> None:
    sizes = seen_batches(cancer)
    requests = [CANCER[i : i + 3] for i in range(5)]  # 15 rows: no batch may pass 8
    answers = asyncio.run(gather(Batcher(max_batch_size=8, max_wait_ms=200.0), cancer, requests))
    assert [len(a) for a in answers] == [3] * 5
    assert all(size <= 8 for size in sizes) and sum(sizes) == 15


def test_without_merging_every_request_runs_alone(cancer: Model) -> None:
    sizes = seen_batches(cancer)
    alone = Batcher(max_batch_size=1)
    answers = asyncio.run(gather(alone, cancer, [CANCER[:1], CANCER[:3], CANCER[:2]]))
    assert [len(a) for a in answers] == [1, 3, 2]
    assert sorted(sizes) == [1, 2, 3]


def test_the_spec_sets_the_policy_and_the_command_line_overrides_it(cancer: Model) -> None:
    assert Batcher().policy_of(cancer) == BatchPolicy(64, 0.0)  # on, and never waiting
    data = {**cancer.spec.model_dump(), "batching": {"max_batch_size": 16, "max_wait_ms": 1.5}}
    cancer.spec = type(cancer.spec).model_validate(data)
    assert Batcher().policy_of(cancer) == BatchPolicy(16, 1.5)
    assert Batcher(4, 0.0).policy_of(cancer) == BatchPolicy(4, 0.0)
    # a flag overrides its own field only
    assert Batcher(max_wait_ms=5.0).policy_of(cancer) == BatchPolicy(16, 5.0)
    assert Batcher(max_batch_size=4).policy_of(cancer) == BatchPolicy(4, 1.5)


def test_by_default_a_batch_forms_while_the_model_is_busy(cancer: Model) -> None:
    sizes = seen_batches(cancer)
    requests = [CANCER[i : i + 1] for i in range(6)]
    answers = asyncio.run(gather(Batcher(), cancer, requests))
    assert [len(a) for a in answers] == [1] * 6
    assert sizes == [1, 5]  # the first never waits; the others meet while it runs


# --- through a real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching_server(examples_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    args = ["--repository", str(examples_root), "--no-monitoring"]
    running = Server(
        [*args, "--max-batch-size", "64", "--max-wait-ms", "100"],
        cwd=tmp_path_factory.mktemp("batching"),
    )
    yield running  # type: ignore[misc]
    running.stop()


def batch_sizes(server: Server, model: str) -> dict[float, int]:
    """Cumulative counts of ``model``'s scored batches by size bound (``le``; ``inf``: all)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    pattern = rf'^foretell_batch_rows_bucket{{le="([^"]+)",model="{model}"}} ([0-9.e+]+)$'
    return {float(le): int(float(n)) for le, n in re.findall(pattern, text, re.M)}


def batches_scored(server: Server, model: str) -> int:
    """How many batches ``server`` has scored for ``model``."""
    return batch_sizes(server, model).get(float("inf"), 0)


@dataclass(frozen=True, eq=False)
class Call:
    """One caller's V2 request: its rows, the outputs it asks for (name, binary), parameters."""

    rows: np.ndarray
    outputs: tuple[tuple[str, bool], ...] | None = None
    parameters: dict[str, Any] | None = None


def infer(server: Server, call: Call) -> triton.InferResult | InferenceServerException:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("input", list(call.rows.shape), "FP64")
    tensor.set_data_from_numpy(call.rows, binary_data=False)
    outputs = None
    if call.outputs is not None:
        outputs = [triton.InferRequestedOutput(n, binary_data=b) for n, b in call.outputs]
    try:
        return client.infer("breast-cancer", [tensor], outputs=outputs, parameters=call.parameters)
    except InferenceServerException as exc:
        return exc
    finally:
        client.close()


def test_concurrent_v2_callers_each_get_their_own_rows_outputs_and_parameters(
    batching_server: Server,
) -> None:
    broken = CANCER[40:42].copy()
    broken[1, 3] = -1.0  # "mean area" below its minimum: this caller's request fails alone
    explain = {"explain": True}
    calls = [
        Call(CANCER[0:1], (("label", False),)),
        Call(CANCER[1:6]),
        Call(CANCER[6:8], (("probabilities", True), ("prediction_id", False))),
        Call(CANCER[8:11], (("decision", False), ("attribution", True)), explain),
        Call(CANCER[11:12], None, explain),
        Call(CANCER[12:19], (("label", True), ("decision", True))),
        Call(broken),
        Call(CANCER[19:23], (("base_value", False),), explain),
        Call(CANCER[23:24], (("probabilities", False),), {"explain": False}),
    ]
    before = batches_scored(batching_server, "breast-cancer")
    with ThreadPoolExecutor(len(calls)) as pool:  # within the server's 100 ms of waiting
        together = list(pool.map(lambda call: infer(batching_server, call), calls))
    merged = batches_scored(batching_server, "breast-cancer") - before
    # the same requests one at a time: each scored alone
    alone = [infer(batching_server, call) for call in calls]
    assert batches_scored(batching_server, "breast-cancer") - before - merged == len(calls)
    assert merged < len(calls) - 2  # callers were merged: two option sets, at most a few passes

    failed = next(r for c, r in zip(calls, together, strict=True) if c.rows is broken)
    assert isinstance(failed, InferenceServerException) and "mean area" in str(failed)
    ids = []
    for call, mine, reference in zip(calls, together, alone, strict=True):
        if call.rows is broken:
            continue
        assert isinstance(mine, triton.InferResult), mine
        assert isinstance(reference, triton.InferResult), reference
        names = [o["name"] for o in mine.get_response()["outputs"]]
        expected = [o["name"] for o in reference.get_response()["outputs"]]
        assert names == expected
        if call.outputs is not None:
            assert names == [name for name, _ in call.outputs]
        if call.outputs is None:  # every output: the insight ones only where asked for
            explained = bool(call.parameters and call.parameters["explain"])
            assert ("attribution" in names) == ("base_value" in names) == explained
        for name in names:
            got, want = mine.as_numpy(name), reference.as_numpy(name)
            assert got is not None and want is not None and len(got) == len(call.rows), name
            if name == "prediction_id":
                ids += got.tolist()
            elif got.dtype.kind in "fc":
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=name)
            else:
                assert got.tolist() == want.tolist(), name
    with_ids = [
        c
        for c, r in zip(calls, alone, strict=True)
        if c.rows is not broken
        and "prediction_id" in {o["name"] for o in r.get_response()["outputs"]}
    ]
    assert len(ids) == len(set(ids)) == sum(len(c.rows) for c in with_ids)


def test_concurrent_v1_callers_get_their_own_rows(
    batching_server: Server, repository: Repository
) -> None:
    url = f"{batching_server.url}/v1/models/breast-cancer:predict"
    model = repository.load("breast-cancer")

    def send(i: int) -> httpx.Response:
        rows = [dict(zip(NAMES, map(float, r), strict=True)) for r in CANCER[i : i + i % 4 + 1]]
        return httpx.post(url, json={"instances": rows}, timeout=30)

    before = batches_scored(batching_server, "breast-cancer")
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(send, range(12)))
    assert batches_scored(batching_server, "breast-cancer") - before < 12  # merged
    ids = []
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        expected = model.predict(CANCER[i : i + i % 4 + 1])
        assert [p["label"] for p in predictions] == [e.outputs["label"] for e in expected]
        got = [list(p["probabilities"].values()) for p in predictions]
        np.testing.assert_allclose(got, probabilities(expected), rtol=1e-6)
        ids += [p["prediction_id"] for p in predictions]
    assert len(set(ids)) == len(ids) == sum(i % 4 + 1 for i in range(12))


def test_a_server_takes_the_specs_batching_and_a_flag_overrides_only_its_own_field(
    examples_copy: Path, tmp_path: Path
) -> None:
    spec = examples_copy / "breast-cancer" / "2" / "model.yaml"
    spec.write_text(spec.read_text() + "batching:\n  max_batch_size: 4\n  max_wait_ms: 0\n")
    # --max-wait-ms makes 12 requests sent together meet; the spec still bounds them at 4 rows
    server = Server(["--repository", str(examples_copy), "--max-wait-ms", "300"], cwd=tmp_path)
    try:
        url = f"{server.url}/v2/models/breast-cancer/infer"

        def send(i: int) -> httpx.Response:
            body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 30]}]}
            body["inputs"][0]["data"] = CANCER[i].tolist()
            return httpx.post(url, json=body, timeout=30)

        with ThreadPoolExecutor(12) as pool:
            assert all(r.status_code == 200 for r in pool.map(send, range(12)))
        sizes = batch_sizes(server, "breast-cancer")
    finally:
        server.stop()
    batches = sizes[float("inf")]
    assert batches < 12  # merged, as the flag's wait allows
    assert sizes[4.0] == batches  # none over the spec's 4 rows
    assert sizes[2.0] < batches  # and some of more than 2: they did wait for each other


def test_serve_refuses_a_batch_size_below_one(examples_root: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="max-batch-size"):
        Server(["--repository", str(examples_root), "--max-batch-size", "0"], cwd=tmp_path)


def test_a_prediction_log_far_behind_makes_callers_wait_but_never_the_event_loop(
    cancer: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "monitoring.db"
    store = MonitoringStore(f"sqlite:///{path}")
    registry = CollectorRegistry()
    monitor = Monitor(store, registry)
    monitor.attach(cancer)
    log = monitor.predlog
    batcher = Batcher(max_batch_size=64)
    lock = sqlite3.connect(path, check_same_thread=False)
    # without the guard the loop itself would wait for the lock: let go in the end regardless
    safety = threading.Timer(10.0, lock.rollback)

    def fill() -> int:
        """Scores single rows until the log's queue is full and stays full (its writer
        cannot write, and what it was sent fills the pipe to it)."""
        for scored in range(1, 10 * log.queue.maxsize):
            cancer.run(CANCER[scored % 500 : scored % 500 + 1])
            if log.queue.full():
                time.sleep(0.2)  # longer than the shipper lingers before it takes more
                if log.queue.full():
                    return scored
        raise AssertionError("the prediction log's queue never filled")

    async def main() -> tuple[float, bool, int]:
        await batcher.predict(cancer, CANCER[:1])  # measured quick: may now run on the loop
        for _ in range(300):  # the writer process is up once that prediction is stored
            if len(store.predictions_of("breast-cancer")):
                break
            await asyncio.sleep(0.1)
        lock.execute("BEGIN EXCLUSIVE")  # the writer waits for the database from now on
        safety.start()
        filled = await asyncio.to_thread(fill)
        assert log.behind()
        loop = asyncio.get_running_loop()
        caller = asyncio.ensure_future(batcher.predict(cancer, CANCER[1:2]))
        started = loop.time()
        await asyncio.sleep(0.2)
        lag = loop.time() - started - 0.2  # how late the loop woke up
        waited = not caller.done()
        safety.cancel()
        lock.rollback()  # the writer catches up, and the caller gets its answer
        [answer] = await asyncio.wait_for(caller, 60)
        assert answer.decision in {"refer", "review", "routine"}
        return lag, waited, filled

    try:
        with caplog.at_level("WARNING", logger="foretell.predlog"):
            lag, waited, filled = asyncio.run(main())
    finally:
        safety.cancel()
        lock.close()
        monitor.close()
    assert lag < 2.0  # other requests (health checks among them) were answered meanwhile
    assert waited  # back-pressure: the caller waited for room in the log
    # ... and the operator can see it: the wait is counted and said once, with what to do
    seconds = registry.get_sample_value("foretell_prediction_log_wait_seconds_total")
    assert seconds is not None and seconds >= 0.2  # the caller's wait, at least
    said = [r.getMessage() for r in caplog.records if r.name == "foretell.predlog"]
    [warning] = [message for message in said if "cannot keep up" in message]
    assert "--log-sample-rate" in warning and "--no-monitoring" in warning
    stored = store.predictions_of("breast-cancer")
    assert len(stored) == filled + 2  # everything answered was logged, once
    assert stored["prediction_id"].is_unique
