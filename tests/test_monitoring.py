"""Prediction log, feedback, live quality and drift: against scikit-learn and real servers."""

from __future__ import annotations

import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn import metrics
from sklearn.datasets import load_breast_cancer, load_diabetes

from foretell import Repository
from foretell.examples import datasets
from foretell.monitoring.drift import drift
from foretell.monitoring.quality import quality
from tests.conftest import Server

if TYPE_CHECKING:
    from foretell.monitoring.predlog import PredictionLog
    from foretell.pipeline.model import Batch


def _labelled(outputs: list[dict[str, object]], truth: list[object]) -> pd.DataFrame:
    n = len(truth)
    return pd.DataFrame(
        {
            "prediction_id": [str(i) for i in range(n)],
            "version": "1",
            "ts": np.arange(n, dtype=float),
            "outputs": [orjson.dumps(o).decode() for o in outputs],
            "ground_truth": [orjson.dumps(t).decode() for t in truth],
            "received_at": np.arange(n, dtype=float) + 30.0,
        }
    )


def test_classifier_quality_equals_scikit_learn(repository: Repository) -> None:
    data = load_breast_cancer()
    model = repository.load("breast-cancer")
    results = model.predict(data.data[:200] * 1.05)  # a little off, so it makes mistakes
    truth = [str(data.target_names[t]) for t in data.target[:200]]
    report = quality(model.spec, _labelled([r.outputs for r in results], truth))
    scores = report["versions"]["1"]
    y = np.array(truth)
    pred = np.array([r.outputs["label"] for r in results])
    p_benign = np.array([r.outputs["probabilities"]["benign"] for r in results])
    probs = np.column_stack([1 - p_benign, p_benign])  # columns: benign-sorted order below
    assert scores["accuracy"] == metrics.accuracy_score(y, pred)
    assert scores["precision"] == metrics.precision_score(y, pred, pos_label="benign")
    assert scores["recall"] == metrics.recall_score(y, pred, pos_label="benign")
    assert scores["f1"] == metrics.f1_score(y, pred, pos_label="benign")
    assert scores["roc_auc"] == metrics.roc_auc_score(y == "benign", p_benign)
    assert scores["log_loss"] == pytest.approx(
        metrics.log_loss(y, probs[:, ::-1], labels=["benign", "malignant"]), rel=1e-12
    )
    assert 0 <= scores["calibration"]["ece"] <= 1
    assert report["label_delay_seconds"]["median"] == 30.0


def test_regressor_quality_equals_scikit_learn(repository: Repository) -> None:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False)
    model = repository.load("diabetes")
    results = model.predict(data.data.iloc[:150])
    truth = data.target.iloc[:150].tolist()
    scores = quality(model.spec, _labelled([r.outputs for r in results], truth))["versions"]["1"]
    pred = [r.outputs["value"] for r in results]
    assert scores["mae"] == metrics.mean_absolute_error(truth, pred)
    assert scores["rmse"] == metrics.root_mean_squared_error(truth, pred)
    assert scores["r2"] == metrics.r2_score(truth, pred)


def _fraud_inputs(seed: int, rows: int = 500) -> pd.DataFrame:
    return datasets.card_transactions(rows=rows, seed=seed).drop(columns=["is_fraud"])


def test_shifted_features_drift_and_the_others_do_not(repository: Repository) -> None:
    spec = repository.get("card-fraud").spec
    shifted = _fraud_inputs(1000)
    shifted["amount"] *= 3
    shifted["merchant_category"] = "electronics"
    report = drift(spec, shifted)
    assert report["drifted"] == ["amount", "merchant_category"]
    assert drift(spec, _fraud_inputs(1001))["drifted"] == []


def test_false_alarm_rate_over_100_unshifted_samples(repository: Repository) -> None:
    """The rate documented in docs/monitoring.md: samples of 500 rows from the same process."""
    spec = repository.get("card-fraud").spec
    alarms = sum(bool(drift(spec, _fraud_inputs(2000 + i))["drifted"]) for i in range(100))
    assert alarms <= 5, f"{alarms} of 100 unshifted samples raised a drift alarm"


def test_feedback_quality_and_drift_through_http(server: Server) -> None:
    data = load_breast_cancer()
    url = f"{server.url}/v1/models/breast-cancer"
    answers = httpx.post(
        f"{url}:predict", json={"instances": data.data[:150].tolist()}, timeout=30
    ).json()["predictions"]
    feedback = [
        {"prediction_id": a["prediction_id"], "ground_truth": str(data.target_names[t])}
        for a, t in zip(answers, data.target[:150], strict=True)
    ]
    assert httpx.post(f"{url}/feedback", json=feedback[0]).json() == {"accepted": 1}
    assert httpx.post(f"{url}/feedback", json={"feedback": feedback}).json() == {"accepted": 150}
    bad = httpx.post(f"{url}/feedback", json={"prediction_id": "p", "ground_truth": "maybe"})
    assert bad.status_code == 400 and "must be one of its labels" in bad.json()["error"]
    assert httpx.post(f"{url}/feedback", json={"nope": 1}).status_code == 400
    deadline = time.monotonic() + 30
    while True:
        report = httpx.get(f"{url}/monitoring", timeout=30).json()
        if report["quality"]["rows"] >= 150 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    scores = report["quality"]["versions"]["2"]
    assert scores["rows"] >= 150 and scores["accuracy"] > 0.9
    assert report["predictions"] >= 150 and "features" in report["drift"]
    assert httpx.get(f"{url}/monitoring?window=abc").status_code == 400
    text = httpx.get(f"{server.url}/metrics").text
    assert 'foretell_quality{metric="accuracy",model="breast-cancer",version="2"}' in text


def test_sigterm_flushes_every_answered_prediction(examples_root: Path, tmp_path: Path) -> None:
    running = Server(["--repository", str(examples_root)], cwd=tmp_path)
    answered = 0
    for _ in range(40):
        response = httpx.post(
            f"{running.url}/v1/models/sentiment:predict",
            json={"instances": [{"text": "fine"}] * 25},
        )
        answered += len(response.json()["predictions"])
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=60) == 0
    with closing(sqlite3.connect(tmp_path / "foretell-data" / "monitoring.db")) as db:
        logged = db.execute("SELECT COUNT(*) FROM foretell_predictions").fetchone()[0]
    assert logged == answered == 1000


def test_json_logs_carry_ids_and_no_payloads(examples_root: Path, tmp_path: Path) -> None:
    running = Server(["--repository", str(examples_root), "--log-format", "json"], cwd=tmp_path)
    try:
        response = httpx.post(
            f"{running.url}/v1/models/sentiment:predict",
            json={"instances": [{"text": "a secret review text"}]},
            headers={"X-Request-ID": "req-42"},
        )
        assert response.headers["x-request-id"] == "req-42"
        prediction_id = response.json()["predictions"][0]["prediction_id"]
    finally:
        running.stop()
    lines = [
        orjson.loads(line) for line in running.log.read_text().splitlines() if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("request_id") == "req-42"]
    assert {line["logger"] for line in mine} == {"foretell.serving", "foretell.access"}
    assert any(prediction_id in line.get("prediction_ids", []) for line in mine)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert "a secret review text" not in running.log.read_text()


def test_feedback_import_and_monitor_report(examples_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from foretell.cli import app

    running = Server(["--repository", str(examples_root)], cwd=tmp_path)
    data = load_breast_cancer()
    try:
        answers = httpx.post(
            f"{running.url}/v1/models/breast-cancer:predict",
            json={"instances": data.data[:120].tolist()},
        ).json()["predictions"]
    finally:
        running.stop()
    labels = pd.DataFrame(
        {
            "prediction_id": [a["prediction_id"] for a in answers],
            "ground_truth": [str(data.target_names[t]) for t in data.target[:120]],
        }
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    db = f"sqlite:///{tmp_path / 'foretell-data' / 'monitoring.db'}"
    runner = CliRunner()
    imported = runner.invoke(
        app,
        [
            "feedback",
            "import",
            "breast-cancer",
            str(tmp_path / "labels.csv"),
            "-r",
            str(examples_root),
            "--monitoring-db",
            db,
        ],
    )
    assert imported.exit_code == 0, imported.output
    assert "imported 120 ground-truth values" in imported.stderr
    wrong = pd.DataFrame({"prediction_id": ["x"], "ground_truth": ["maybe"]})
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    refused = runner.invoke(
        app,
        [
            "feedback",
            "import",
            "breast-cancer",
            str(tmp_path / "wrong.csv"),
            "-r",
            str(examples_root),
            "--monitoring-db",
            db,
        ],
    )
    assert refused.exit_code == 2 and "must be one of its labels" in refused.stderr
    report = runner.invoke(
        app,
        [
            "monitor",
            "breast-cancer",
            "-r",
            str(examples_root),
            "--monitoring-db",
            db,
            "--html",
            str(tmp_path / "r.html"),
        ],
    )
    assert report.exit_code == 0, report.output
    assert "120 with ground truth" in report.stdout and "accuracy" in report.stdout
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "Monitoring of breast-cancer" in page
    assert 'src="http' not in page and 'href="http' not in page


# -- the prediction log's writes, in SQLite and PostgreSQL -----------------------------------

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def monitoring_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh monitoring store's URI (PostgreSQL's tables are dropped afterwards)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    prefix = f"monitoring_{time.time_ns()}"

    def drop() -> None:
        import psycopg

        with psycopg.connect(POSTGRES, connect_timeout=5, autocommit=True) as conn:
            for table in ("predictions", "feedback"):
                conn.execute(f'DROP TABLE IF EXISTS "{prefix}_{table}"')

    request.addfinalizer(drop)
    return f"{POSTGRES}?table={prefix}"


def test_logged_rows_are_stored_once_exactly_as_given(monitoring_uri: str) -> None:
    from foretell.monitoring.store import MonitoringStore

    rows = [
        {
            "prediction_id": f"p{i}",
            "model": "m",
            "version": "1",
            "ts": 1000.1 + i / 3,
            "inputs": orjson.dumps({"a": i / 7, "b": None, "c": 'it\'s "quoted"\n'}).decode(),
            "outputs": orjson.dumps({"label": "é", "probabilities": {"x": 0.1}}).decode(),
            "decision": "routine",
            "latency_ms": 0.1 * i,
        }
        for i in range(5)
    ]
    bare = {"prediction_id": "p5", "model": "m", "version": "1", "ts": 1009.0}
    store = MonitoringStore(monitoring_uri)
    try:
        store.log(rows[:3])
        store.log([*rows, rows[4]])  # a retried write, and a row given twice
        store.log([{**bare, "inputs": "{}", "outputs": "{}"}])  # no decision nor latency
        logged = store.predictions_of("m").to_dict("records")
    finally:
        store.dispose()
    assert logged[:5] == rows  # oldest first
    assert pd.isna(logged[5]["decision"]) and pd.isna(logged[5]["latency_ms"])  # NULL


def test_a_new_sqlite_log_has_large_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    from foretell.monitoring.store import MonitoringStore
    from foretell.sql_uri import SQLITE_PAGE_BYTES

    def page_size(path: Path) -> int:
        with closing(sqlite3.connect(path)) as conn:
            return int(conn.execute("PRAGMA page_size").fetchone()[0])

    row = {
        "prediction_id": "p0",
        "model": "m",
        "version": "1",
        "ts": 1000.0,
        "inputs": "{}",
        "outputs": "{}",
    }
    new = tmp_path / "new.db"
    store = MonitoringStore(f"sqlite:///{new}")
    store.log([row])
    store.dispose()
    assert page_size(new) == SQLITE_PAGE_BYTES == 16384

    old = tmp_path / "old.db"  # made by an earlier foretell, with SQLite's default pages
    with closing(sqlite3.connect(old)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE kept (x)")
    assert page_size(old) == 4096
    for _ in range(2):  # opened twice: the second time finds the table made the first
        store = MonitoringStore(f"sqlite:///{old}")
        store.log([row])  # stored once: the second is a retried write
        assert len(store.predictions_of("m")) == 1
        store.dispose()
    assert page_size(old) == 4096


def logged_through(
    uri: str, batches: list[Batch], sample_rate: float = 1.0
) -> tuple[list[dict[str, Any]], PredictionLog]:
    """The rows a prediction log stores in a fresh store at ``uri`` from ``batches`` (of every
    model they are of), and the log, closed."""
    from foretell.monitoring.predlog import PredictionLog
    from foretell.monitoring.store import MonitoringStore

    store = MonitoringStore(uri)
    predlog = PredictionLog(store, sample_rate=sample_rate)
    try:
        for batch in batches:
            predlog.observe(batch)
        predlog.close()
        models = dict.fromkeys(batch.model.name for batch in batches)
        rows = [r for m in models for r in store.predictions_of(m).to_dict("records")]
    finally:
        store.dispose()
    return rows, predlog


def test_the_log_samples_rows_and_stores_inputs_and_outputs_as_json(
    repository: Repository, monitoring_uri: str
) -> None:
    model = repository.load("breast-cancer")
    rows = load_breast_cancer().data[:200].astype(object)
    rows[[3, 50], 0] = -1.0  # breaks the feature's minimum: not scored, not logged
    batch = model.run(rows)
    logged, predlog = logged_through(monitoring_uri, [batch], sample_rate=0.5)
    scored = dict(zip(np.array(batch.prediction_ids)[batch.usable], batch.records(), strict=True))
    assert 60 < len(logged) == predlog.written < 140
    names = model.spec.feature_names
    for row in logged:
        position = batch.prediction_ids.index(row["prediction_id"])
        assert orjson.loads(row["inputs"]) == dict(zip(names, rows[position], strict=True))
        assert orjson.loads(row["outputs"]) == scored[row["prediction_id"]]
        assert (row["model"], row["version"]) == ("breast-cancer", model.version)


def test_rows_sampled_out_never_leave_the_serving_process(
    repository: Repository, tmp_path: Path
) -> None:
    from foretell.monitoring.predlog import PredictionLog
    from foretell.monitoring.store import MonitoringStore

    batch = repository.load("breast-cancer").run(load_breast_cancer().data[:50])
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    predlog = PredictionLog(store, sample_rate=0.0)
    try:
        for _ in range(20):
            predlog.observe(batch)
        predlog.close()
    finally:
        store.dispose()
    # sampled before the queue: no batch was shipped, so no writer process ever started
    assert predlog.written == 0 and predlog._process is None


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_a_clean_numeric_batch_is_logged_from_its_checked_matrix(
    repository: Repository, monitoring_uri: str, sample_rate: float
) -> None:
    model = repository.load("breast-cancer")
    rows = load_breast_cancer().data[:100]
    batch = model.run(np.repeat(rows, 2, axis=1)[:, ::2])  # a strided view of the rows
    assert batch.matrix is not None  # validation's matrix travels to the log as it is
    logged, predlog = logged_through(monitoring_uri, [batch], sample_rate=sample_rate)
    assert len(logged) == predlog.written and 0 < len(logged) <= 100
    assert (len(logged) == 100) == (sample_rate == 1.0)
    names = model.spec.feature_names
    for row in logged:
        position = batch.prediction_ids.index(row["prediction_id"])
        assert orjson.loads(row["inputs"]) == dict(zip(names, rows[position], strict=True))


def test_batches_merged_on_their_way_to_the_writer_keep_each_row_its_own(
    repository: Repository, monitoring_uri: str
) -> None:
    cancer, diabetes = repository.load("breast-cancer"), repository.load("diabetes")
    loans = repository.load("loan-approval")
    data = load_breast_cancer().data
    broken = data[20:24].astype(object)
    broken[1, 0] = -1.0  # breaks the feature's minimum: not scored nor logged
    loan = {
        "income": 52.0,
        "loan_amount": 20.0,
        "credit_score": 700,
        "debt_to_income": 0.3,
        "years_employed": 4,
        "region": "north",
        "age_band": "26-40",
    }
    batches = [
        cancer.run(data[:3]),
        cancer.run(data[3:4]),
        cancer.run(data[4:9]),
        cancer.run(broken),
        loans.run([loan, {**loan, "region": "west"}]),  # text inputs: each batch alone
        loans.run([{**loan, "income": 9.5}]),
        diabetes.run(load_diabetes(scaled=False).data[:2]),
        cancer.run(data[9:11]),
    ]
    stored, predlog = logged_through(monitoring_uri, batches)
    # runs of one model's batches with numeric inputs travel as one wire
    assert [len(w.usable) for _, _, w in predlog._items(batches)] == [12, 2, 1, 2, 2]
    hundred = cancer.run(data[:100])  # runs stop at MERGE_ROWS (256) rows
    assert [len(w.usable) for _, _, w in predlog._items([hundred] * 5)] == [200, 200, 100]
    logged = {row["prediction_id"]: row for row in stored}
    expected = 0
    for batch in batches:
        names = batch.model.spec.feature_names
        records, decisions = batch.records(), batch.decisions.tolist()
        for j, row in enumerate(batch.usable.tolist()):
            got = logged[batch.prediction_ids[row]]
            assert orjson.loads(got["inputs"]) == {n: batch.inputs[n][row] for n in names}
            assert orjson.loads(got["outputs"]) == records[j]
            assert got["decision"] == str(decisions[j])
            assert got["latency_ms"] == pytest.approx(sum(batch.timings_ms.values()))
            assert got["model"] == batch.model.name
            expected += 1
    assert len(logged) == expected == predlog.written == 19


def test_background_reports_are_measured_apart_and_set_the_gauges(
    repository: Repository, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry

    from foretell.monitoring.monitor import Monitor
    from foretell.monitoring.snapshot import measure
    from foretell.monitoring.store import MonitoringStore

    model = repository.load("breast-cancer")
    registry = CollectorRegistry()
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    monitor = Monitor(store, registry, interval=0.2)
    try:
        monitor.attach(model)
        model.run(load_breast_cancer().data[:300])
        deadline = time.monotonic() + 60  # the reporter process starts on the first report
        while len(store.predictions_of("breast-cancer")) < 300 and time.monotonic() < deadline:
            time.sleep(0.1)
        expected = measure(store, model.spec, monitor.window, monitor.sample_rows)
        assert expected["predictions"] == 300
        wanted = expected["drift"]["features"]["mean radius"]["psi"]
        labels = {"model": "breast-cancer", "feature": "mean radius"}
        psi = None
        while psi != pytest.approx(wanted) and time.monotonic() < deadline:
            time.sleep(0.2)
            psi = registry.get_sample_value("foretell_drift_psi", labels)
        assert psi == pytest.approx(wanted), "no background report set the gauge within 60 s"
        assert monitor._reporter is not None  # measured in the reporter process
    finally:
        monitor.close()
        store.dispose()
    assert monitor._reporter is None


@pytest.mark.parametrize("width", [0, 1, 3, 30])
@pytest.mark.parametrize("rows", [0, 1, 57])
def test_input_rows_become_the_json_objects_a_dict_per_row_would(rows: int, width: int) -> None:
    from foretell.monitoring.predlog import json_objects, object_heads

    rng = np.random.default_rng(rows * 31 + width)
    matrix = rng.standard_normal((rows, width)) * 10.0 ** rng.integers(-320, 308, (rows, width))
    specials = [np.nan, np.inf, -np.inf, -0.0, 5e-324, 1e16, 1e-5, 17.99, 0.0]
    matrix.flat[: len(specials)] = specials[: matrix.size]
    names = ['a "quoted"\nname', "é", "back\\slash", *(f"f{i}" for i in range(width))][:width]
    got = json_objects(matrix, object_heads(names))
    expected = [
        orjson.dumps(dict(zip(names, row, strict=True))).decode() for row in matrix.tolist()
    ]
    assert got == expected
    assert [orjson.loads(text) for text in got[:1]] == [
        {n: (None if not np.isfinite(v) else v) for n, v in zip(names, row, strict=True)}
        for row in matrix.tolist()[:1]
    ]
    if rows > 2:  # a view in another order, as a sample of a batch's rows is
        assert json_objects(matrix[::-2], object_heads(names)) == expected[::-2]
