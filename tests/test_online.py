"""Online learning, rollback, fairness and prediction drift: the feedback loop on real servers.

The example ``loan-approval`` (an SGD logistic regression that supports ``partial_fit``) is
served from a private copy of the example repository; predictions, ground truth, the monitoring
report, online updates and rollbacks all go over HTTP, as a client would send them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import yaml
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn import metrics
from typer.testing import CliRunner

from foretell import Repository
from foretell.cli import app
from foretell.errors import SpecError, UserError
from foretell.examples import datasets
from foretell.examples.build import REGIONS, loan_applications
from foretell.monitoring import online
from foretell.monitoring.fairness import fairness
from foretell.monitoring.prediction_drift import prediction_drift
from foretell.monitoring.store import MonitoringStore
from foretell.repository.spec import parse_spec
from tests.conftest import Server

LOAN = "loan-approval"
TIMEOUT = 60.0


def _predict(url: str, frame: pd.DataFrame, batch: int = 100) -> list[dict[str, Any]]:
    """Scores the rows (outcome dropped) in requests of ``batch`` rows: one logged time each."""
    records = frame.drop(columns="outcome").to_dict("records")
    answers: list[dict[str, Any]] = []
    for start in range(0, len(records), batch):
        response = httpx.post(
            f"{url}:predict", json={"instances": records[start : start + batch]}, timeout=TIMEOUT
        )
        assert response.status_code == 200, response.text
        answers.extend(response.json()["predictions"])
    return answers


def _feedback(url: str, answers: list[dict[str, Any]], truth: list[str]) -> None:
    items = [
        {"prediction_id": a["prediction_id"], "ground_truth": t}
        for a, t in zip(answers, truth, strict=True)
    ]
    response = httpx.post(f"{url}/feedback", json={"feedback": items}, timeout=TIMEOUT)
    assert response.json() == {"accepted": len(items)}


def _report(url: str, labelled: int) -> dict[str, Any]:
    """The monitoring report once ``labelled`` predictions with ground truth are logged."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        report: dict[str, Any] = httpx.get(f"{url}/monitoring", timeout=TIMEOUT).json()
        if report["quality"]["rows"] >= labelled:
            return report
        assert time.monotonic() < deadline, f"{report['quality']['rows']} of {labelled} logged"
        time.sleep(0.1)


def _served(server: Server) -> list[str]:
    versions: list[str] = httpx.get(f"{server.url}/v2/models/{LOAN}").json()["versions"]
    return versions


def test_feedback_drift_update_and_rollback_over_http(examples_copy: Path, tmp_path: Path) -> None:
    running = Server(["--repository", str(examples_copy)], cwd=tmp_path)
    url = f"{running.url}/v1/models/{LOAN}"
    try:
        # predictions now, their ground truth later; live accuracy from the monitoring report
        usual = loan_applications(200, seed=101)
        answers = _predict(url, usual)
        assert {a["version"] for a in answers} == {"1"}
        assert {a["decision"] for a in answers} <= {"approve", "review", "decline"}
        _feedback(url, answers, usual["outcome"].tolist())
        report = _report(url, labelled=200)
        accuracy = report["quality"]["versions"]["1"]["accuracy"]
        expected = metrics.accuracy_score(usual["outcome"], [a["label"] for a in answers])
        assert accuracy == pytest.approx(expected) and accuracy > 0.75
        assert report["drift"]["drifted"] == [] and report["drift"]["predictions"]["drifted"] == []
        fair = report["fairness"]["versions"]["1"]["attributes"]
        assert set(fair) == {"age_band", "region"}
        assert set(fair["region"]["groups"]) == set(REGIONS)

        # a downturn: poorer applicants who are riskier than the model learned
        downturn = loan_applications(400, seed=102, income_factor=0.7, risk_shift=2.0)
        later = _predict(url, downturn)
        _feedback(url, later, downturn["outcome"].tolist())
        report = _report(url, labelled=600)
        assert "income" in report["drift"]["drifted"]
        assert report["drift"]["predictions"]["drifted"] == ["label"]
        assert {"drift", "prediction_drift"} <= {a["kind"] for a in report["alerts"]}
        assert report["quality"]["versions"]["1"]["accuracy"] < accuracy

        # an online update learns the downturn into version 2, which serves at once
        result = httpx.post(f"{url}/update", timeout=TIMEOUT).json()
        assert (result["base_version"], result["version"], result["serving"]) == ("1", "2", "2")
        assert result["promoted"] is True and result["metric"] == "accuracy"
        assert result["after"] > result["before"], result["reason"]
        assert (result["trained_rows"], result["held_out_rows"]) == (480, 120)
        assert _served(running) == ["2"]
        assert {a["version"] for a in _predict(url, downturn.iloc[:10])} == {"2"}
        folder = examples_copy / LOAN
        assert (folder / "2" / "online.json").is_file()
        one, two = (yaml.safe_load((folder / v / "model.yaml").read_text()) for v in "12")
        assert two["version"] == "2" and two["sha256"] != one["sha256"]
        assert two["reference"] == one["reference"]
        assert Repository(examples_copy).load(LOAN).version == "2"  # the sha256 holds

        # rollback serves version 1 again, pinned in policy.yaml; version 1 has no earlier one
        back = httpx.post(f"{url}/rollback", timeout=TIMEOUT)
        assert back.json() == {"model": LOAN, "previous": "2", "serving": "1", "ready": True}
        assert _served(running) == ["1"]
        assert {a["version"] for a in _predict(url, usual.iloc[:10])} == {"1"}
        assert yaml.safe_load((folder / "policy.yaml").read_text()) == {"serve": "1"}
        again = httpx.post(f"{url}/rollback", timeout=TIMEOUT)
        assert again.status_code == 400 and "no earlier version" in again.json()["error"]
        assert httpx.post(f"{running.url}/v1/models/nope/rollback").status_code == 404
    finally:
        running.stop()


def test_a_worse_update_is_written_but_not_served(examples_copy: Path, tmp_path: Path) -> None:
    running = Server(["--repository", str(examples_copy)], cwd=tmp_path)
    url = f"{running.url}/v1/models/{LOAN}"
    try:
        rows = loan_applications(400, seed=201)
        answers = _predict(url, rows)
        flipped = {"repaid": "default", "default": "repaid"}
        truth = rows["outcome"].tolist()  # the first 300 labels arrive flipped, the rest right
        truth = [flipped[t] if i < 300 else t for i, t in enumerate(truth)]
        _feedback(url, answers, truth)
        _report(url, labelled=400)
        response = httpx.post(f"{url}/update", json={"holdout": 0.2}, timeout=TIMEOUT)
        result = response.json()
        assert response.status_code == 200 and result["promoted"] is False, result
        assert (result["version"], result["serving"]) == ("2", "1")
        assert result["after"] < result["before"]
        assert "worse, so it is written but not served" in result["reason"]
        assert "80 most recent labelled predictions" in result["reason"]
        assert (examples_copy / LOAN / "2" / "model.yaml").is_file()
        assert _served(running) == ["1"]
        bad = httpx.post(f"{url}/update", json={"holdout": "most"}, timeout=TIMEOUT)
        assert bad.status_code == 400 and "holdout" in bad.json()["error"]
    finally:
        running.stop()
    # the same from the command line: version 3 is written, version 1 still serves
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'foretell-data' / 'monitoring.db'}"
    repo = ["-r", str(examples_copy)]
    done = runner.invoke(app, ["update", LOAN, *repo, "--monitoring-db", db])
    assert done.exit_code == 0, done.output
    assert "loan-approval v3 (from v1, 320 rows learned) is written but not served" in done.stderr
    assert Repository(examples_copy).serving_version(LOAN) == "1"
    refused = runner.invoke(app, ["rollback", LOAN, *repo])
    assert refused.exit_code == 2 and "no earlier version to roll back to" in refused.stderr
    (examples_copy / LOAN / "policy.yaml").write_text("serve: latest\n")
    rolled = runner.invoke(app, ["rollback", LOAN, *repo])
    assert rolled.exit_code == 0 and "serving v1 (was v3)" in rolled.stderr


def test_update_refuses_what_cannot_learn_online(examples_copy: Path, tmp_path: Path) -> None:
    repo = Repository(examples_copy)
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    try:
        with pytest.raises(
            UserError, match=r"need a scikit-learn estimator saved as \.skops; got format 'onnx'"
        ):
            online.update(repo, store, "breast-cancer")  # version 2 is ONNX
        (examples_copy / "breast-cancer" / "policy.yaml").write_text('serve: "1"\n')
        with pytest.raises(UserError, match="GradientBoostingClassifier has no partial_fit"):
            online.update(repo, store, "breast-cancer")
        with pytest.raises(UserError, match="0 labelled predictions it has not learned from"):
            online.update(repo, store, LOAN)
        with pytest.raises(UserError, match="holdout must be a share between 0 and 1"):
            online.update(repo, store, LOAN, holdout=1.5)
    finally:
        store.dispose()
    assert repo.versions(LOAN) == ["1"]


def _labelled(frame: pd.DataFrame, results: list[Any]) -> pd.DataFrame:
    n = len(frame)
    return pd.DataFrame(
        {
            "prediction_id": [r.prediction_id for r in results],
            "version": "1",
            "ts": np.arange(n, dtype=float),
            "inputs": [orjson.dumps(r).decode() for r in frame.to_dict("records")],
            "outputs": [orjson.dumps(r.outputs).decode() for r in results],
            "ground_truth": [orjson.dumps(t).decode() for t in frame["outcome"]],
            "received_at": np.arange(n, dtype=float) + 60.0,
        }
    )


def test_fairness_equals_fairlearn(repository: Repository) -> None:
    model = repository.load(LOAN)
    frame = loan_applications(600, seed=301, risk_shift=1.0)
    results = model.predict(frame.drop(columns="outcome"))
    report = fairness(model.spec, _labelled(frame, results))
    assert (report["positive_label"], report["rows"]) == ("repaid", 600)
    truth = frame["outcome"].to_numpy()
    pred = np.array([r.outputs["label"] for r in results])
    for attribute in ("age_band", "region"):
        got = report["versions"]["1"]["attributes"][attribute]
        groups = frame[attribute].to_numpy()
        expected = MetricFrame(
            metrics={
                "selection_rate": lambda t, p: selection_rate(t, p, pos_label="repaid"),
                "accuracy": metrics.accuracy_score,
                "true_positive_rate": lambda t, p: true_positive_rate(t, p, pos_label="repaid"),
                "false_positive_rate": lambda t, p: false_positive_rate(t, p, pos_label="repaid"),
                "rows": lambda t, p: len(t),
            },
            y_true=truth,
            y_pred=pred,
            sensitive_features=groups,
        ).by_group
        assert set(got["groups"]) == set(expected.index)
        for group, row in expected.iterrows():
            for metric, value in row.items():
                assert got["groups"][group][metric] == pytest.approx(value, abs=1e-12)
        y, y_pred = truth == "repaid", pred == "repaid"
        assert got["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(y, y_pred, sensitive_features=groups), abs=1e-12
        )
        assert got["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y, y_pred, sensitive_features=groups), abs=1e-12
        )
        assert got["demographic_parity_difference"] > 0  # the groups differ in this data
    assert fairness(repository.get("breast-cancer").spec, pd.DataFrame())["versions"] == {}


def test_missing_fairlearn_names_the_extra_only_when_a_spec_needs_it(examples_root: Path) -> None:
    code = f"""
import sys
sys.modules["fairlearn"] = None  # as if the monitoring extra were not installed
import pandas as pd
from foretell import Repository
from foretell.errors import MissingExtraError
from foretell.monitoring.fairness import fairness
repo = Repository({str(examples_root)!r})
assert fairness(repo.get("breast-cancer").spec, pd.DataFrame())["versions"] == {{}}
try:
    fairness(repo.get("loan-approval").spec, pd.DataFrame())
except MissingExtraError as exc:
    print(exc.message)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "fairness metrics needs the 'fairlearn' package, which is not installed; "
        "install it with: pip install 'foretell[monitoring]'"
    )


def test_shifted_inputs_raise_prediction_drift(repository: Repository) -> None:
    loan = repository.load(LOAN)
    assert loan.spec.reference is not None and loan.spec.reference.outputs is not None
    frequencies = loan.spec.reference.outputs["label"].frequencies or {}
    assert set(frequencies) == {"repaid", "default"}

    def outputs(model_name: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
        return [r.outputs for r in repository.load(model_name).predict(frame)]

    same = loan_applications(500, seed=401).drop(columns="outcome")
    poorer = same.assign(income=same["income"] * 0.5)
    assert prediction_drift(loan.spec, outputs(LOAN, same))["drifted"] == []
    shifted = prediction_drift(loan.spec, outputs(LOAN, poorer))
    assert shifted["drifted"] == ["label"] and shifted["outputs"]["label"]["p_value"] < 1e-3
    few = prediction_drift(loan.spec, outputs(LOAN, poorer.iloc[:50]))
    assert few["drifted"] == [] and few["min_rows"] == 100

    fraud = repository.get("card-fraud").spec
    cards = datasets.card_transactions(rows=500, seed=402).drop(columns="is_fraud")
    assert prediction_drift(fraud, outputs("card-fraud", cards))["drifted"] == []
    cards["amount"] *= 10
    assert prediction_drift(fraud, outputs("card-fraud", cards))["drifted"] == ["score"]


def test_sensitive_inputs_are_checked_in_the_spec(repository: Repository) -> None:
    data = repository.get(LOAN).spec.model_dump(mode="json")
    for sensitive, message in (
        (["zip_code"], "must name inputs of the model; ['zip_code'] are not"),
        (["income"], "must be category, bool or int features (groups); ['income'] are not"),
    ):
        with pytest.raises(SpecError, match=re.escape(message)):
            parse_spec({**data, "monitoring": {"sensitive": sensitive}}, "model.yaml")
    diabetes = repository.get("diabetes").spec.model_dump(mode="json")
    with pytest.raises(SpecError, match="applies to classification models"):
        parse_spec({**diabetes, "monitoring": {"sensitive": ["sex"]}}, "model.yaml")
