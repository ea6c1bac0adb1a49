"""Bayesian models: posteriors against their closed forms, and updating from real feedback.

The example ``fraud-rates`` (Beta-Binomial fraud rates per merchant category) is served from a
private copy of the example repository; predictions, ground truth, updates and the posterior go
over HTTP. Every posterior is checked against the conjugate result Beta(a + s, b + n - s) and
every interval against ``scipy.stats.beta.ppf``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import skops.io as sio
from scipy import stats
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.linear_model import BayesianRidge, Ridge

import foretell
from foretell import Repository
from foretell.errors import ModelLoadError, UserError, ValidationError
from foretell.examples import datasets
from foretell.insight.bayes import BetaBinomial, NormalLinear, parse_conjugate
from foretell.monitoring import online
from foretell.monitoring.store import MonitoringStore
from foretell.repository.spec import Decision, Feature, ModelSpec, Rule, write_spec
from foretell.serving.auth import required_scope
from tests.conftest import Server

RATES = "fraud-rates"
TIMEOUT = 60.0
SEGMENTS = datasets.MERCHANT_CATEGORIES


def _artifact(folder: Path) -> BetaBinomial:
    model = parse_conjugate(json.loads((folder / "posterior.json").read_text()), str(folder))
    assert isinstance(model, BetaBinomial)
    return model


def _counts(frame: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Events and trials per merchant category, counted here without foretell."""
    counts: dict[str, tuple[int, int]] = {}
    for segment, outcome in zip(frame["merchant_category"], frame["outcome"], strict=True):
        s, n = counts.get(segment, (0, 0))
        counts[segment] = (s + (outcome == "fraud"), n + 1)
    return counts


def _closed_form(
    prior: tuple[float, float], *evidence: dict[str, tuple[int, int]]
) -> dict[str, tuple[float, float]]:
    """Beta(a + s, b + n - s) per segment, summing the evidence given."""
    a, b = prior
    out = {}
    for segment in SEGMENTS:
        s = sum(e.get(segment, (0, 0))[0] for e in evidence)
        n = sum(e.get(segment, (0, 0))[1] for e in evidence)
        out[segment] = (a + s, b + n - s)
    return out


def _predict(url: str, frame: pd.DataFrame, **extra: Any) -> list[dict[str, Any]]:
    body = {"instances": frame[["merchant_category"]].to_dict("records"), **extra}
    response = httpx.post(f"{url}:predict", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def _feedback_logged(url: str, answers: list[dict[str, Any]], truth: list[str], total: int) -> None:
    """Sends the ground truth, then waits until ``total`` labelled predictions are logged."""
    items = [
        {"prediction_id": a["prediction_id"], "ground_truth": t}
        for a, t in zip(answers, truth, strict=True)
    ]
    response = httpx.post(f"{url}/feedback", json={"feedback": items}, timeout=TIMEOUT)
    assert response.json() == {"accepted": len(items)}
    deadline = time.monotonic() + TIMEOUT
    while httpx.get(f"{url}/monitoring", timeout=TIMEOUT).json()["quality"]["rows"] < total:
        assert time.monotonic() < deadline, "the labelled predictions were never logged"
        time.sleep(0.1)


def _check_results(answers: list[dict[str, Any]], frame: pd.DataFrame, posterior: Any) -> None:
    """Each result is its segment's posterior mean with the 90% equal-tailed interval."""
    for answer, segment in zip(answers, frame["merchant_category"], strict=True):
        a, b = posterior[segment]
        assert answer["probabilities"]["fraud"] == pytest.approx(a / (a + b), rel=1e-12)
        uncertainty = answer["uncertainty"]
        assert uncertainty["method"] == "bayesian" and uncertainty["confidence"] == 0.9
        assert uncertainty["mean"] == pytest.approx(a / (a + b), rel=1e-12)
        std = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        assert uncertainty["std"] == pytest.approx(std, rel=1e-12)
        np.testing.assert_allclose(
            uncertainty["interval"], stats.beta.ppf([0.05, 0.95], a, b), rtol=1e-12
        )
        lower, upper = uncertainty["interval"]
        expected = "block" if lower >= 0.02 else "review" if upper >= 0.02 else "approve"
        assert answer["decision"] == expected


def _check_posterior(report: dict[str, Any], posterior: Any, level: float) -> None:
    tail = (1 - level) / 2
    for segment, (a, b) in posterior.items():
        got = report["posterior"][segment]
        assert (got["alpha"], got["beta"]) == pytest.approx((a, b), rel=1e-12)
        assert got["mean"] == pytest.approx(a / (a + b), rel=1e-12)
        np.testing.assert_allclose(
            got["interval"], stats.beta.ppf([tail, 1 - tail], a, b), rtol=1e-12
        )
    assert report["level"] == level


def test_feedback_updates_the_posterior_to_the_closed_form(
    examples_copy: Path, tmp_path: Path
) -> None:
    first = _artifact(examples_copy / RATES / "1")
    prior = (first.prior.alpha, first.prior.beta)
    built = {s: (c.successes, c.trials) for s, c in first.evidence.items()}
    running = Server(["--repository", str(examples_copy)], cwd=tmp_path)
    url = f"{running.url}/v1/models/{RATES}"
    try:
        # version 1: the prior and the evidence it was built with
        posterior = _closed_form(prior, built)
        batch = datasets.merchant_outcomes(rows=400, seed=101)
        answers = _predict(url, batch)
        assert {a["version"] for a in answers} == {"1"}
        _check_results(answers, batch, posterior)
        before = httpx.get(f"{url}/posterior", timeout=TIMEOUT).json()
        assert before["last_update"] is None and before["prior"] == {"alpha": 1.0, "beta": 99.0}
        _check_posterior(before, posterior, 0.9)

        # ground truth for those predictions becomes version 2's evidence
        _feedback_logged(url, answers, batch["outcome"].tolist(), total=400)
        result = httpx.post(f"{url}/update", timeout=TIMEOUT).json()
        assert (result["base_version"], result["version"], result["serving"]) == ("1", "2", "2")
        assert result["promoted"] is True and result["trained_rows"] == 400
        assert result["after"] - result["before"] == 400
        added = _counts(batch)
        posterior = _closed_form(prior, built, added)
        report = httpx.get(f"{url}/posterior", timeout=TIMEOUT).json()
        assert (report["model"], report["version"], report["family"]) == (
            RATES,
            "2",
            "beta_binomial",
        )
        _check_posterior(report, posterior, 0.9)
        assert report["last_update"]["from_version"] == "1"
        assert {
            s: (c["successes"], c["trials"]) for s, c in report["last_update"]["evidence"].items()
        } == added
        assert report["prior"] == before["prior"]
        _check_results(_predict(url, batch), batch, posterior)

        # a second update adds only the new evidence: nothing is counted twice
        later = datasets.merchant_outcomes(rows=150, seed=102)
        answers = _predict(url, later)
        assert {a["version"] for a in answers} == {"2"}
        _feedback_logged(url, answers, later["outcome"].tolist(), total=550)
        result = httpx.post(f"{url}/update", timeout=TIMEOUT).json()
        assert (result["version"], result["trained_rows"]) == ("3", 150)
        posterior = _closed_form(prior, built, added, _counts(later))
        _check_posterior(httpx.get(f"{url}/posterior?level=0.5").json(), posterior, 0.5)
        _check_results(_predict(url, later), later, posterior)
        stored = _artifact(examples_copy / RATES / "3")
        assert {s: stored.posterior(s) for s in SEGMENTS} == posterior  # whole counts: exact

        # nothing new to learn from: no version is written
        again = httpx.post(f"{url}/update", timeout=TIMEOUT)
        assert again.status_code == 400 and "no new labelled predictions" in again.json()["error"]
        assert not (examples_copy / RATES / "4").exists()

        # rollback serves the version the update started from
        back = httpx.post(f"{url}/rollback", timeout=TIMEOUT).json()
        assert (back["previous"], back["serving"]) == ("3", "2")
    finally:
        running.stop()


def test_posterior_route_refuses_what_has_none(server: Server) -> None:
    url = f"{server.url}/v1/models"
    sklearn_model = httpx.get(f"{url}/loan-approval/posterior")
    assert sklearn_model.status_code == 400
    assert "'sklearn' model" in sklearn_model.json()["error"]
    for level in ("high", "1.5", "0"):
        bad = httpx.get(f"{url}/{RATES}/posterior", params={"level": level})
        assert bad.status_code == 400 and "level" in bad.json()["error"], level
    assert httpx.get(f"{url}/nope/posterior").status_code == 404
    assert required_scope(f"/v1/models/{RATES}/posterior") == f"monitor:{RATES}"
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/models/{name}/posterior" in doc["paths"]


def test_the_callers_level_changes_the_interval_not_the_decision(
    repository: Repository,
) -> None:
    model = repository.load(RATES)
    rows = [{"merchant_category": c} for c in SEGMENTS]
    usual = model.predict(rows)
    narrow = model.predict(rows, confidence=0.5)
    assert [p.decision for p in usual] == [p.decision for p in narrow]
    assert {p.decision for p in usual} == {"approve", "review", "block"}
    for p, q in zip(usual, narrow, strict=True):
        assert p.uncertainty is not None and q.uncertainty is not None
        a = p.uncertainty["mean"]
        assert q.uncertainty["mean"] == a and q.uncertainty["confidence"] == 0.5
        assert q.uncertainty["interval"][0] > p.uncertainty["interval"][0]
        assert q.uncertainty["interval"][1] < p.uncertainty["interval"][1]
    # flat results for tables keep the columns
    table = model.run(rows).table()
    assert {"mean", "std", "lower", "upper", "level"} <= set(table)
    for bad in (0.0, 1.0, 2, True):
        with pytest.raises(UserError, match="strictly between 0 and 1"):
            model.predict(rows, confidence=bad)


def _rates_model(tmp_path: Path, on_invalid: str = "reject", **artifact: Any) -> Path:
    folder = tmp_path / "rates" / "1"
    folder.mkdir(parents=True)
    data = {
        "family": "beta_binomial",
        "segment_by": "shop",
        "prior": {"alpha": 2.0, "beta": 8.0},
        "evidence": {"a": {"successes": 3, "trials": 10}},
        **artifact,
    }
    (folder / "rates.yaml").write_text(json.dumps(data))
    spec = ModelSpec(
        name="rates",
        version="1",
        task="classification",
        format="conjugate",
        artifact="rates.yaml",
        inputs=[Feature(name="shop", dtype="category", categories=["a", "b"])],
        labels=["no", "yes"],
        on_invalid=on_invalid,  # type: ignore[arg-type]
    )
    write_spec(spec, folder)
    return folder


def test_segments_without_evidence_get_the_prior_and_unknown_ones_are_flagged(
    tmp_path: Path,
) -> None:
    model = foretell.load(_rates_model(tmp_path))
    seen, unseen = model.predict([{"shop": "a"}, {"shop": "b"}])
    assert seen.outputs["probabilities"]["yes"] == pytest.approx(5 / 20)  # Beta(2+3, 8+7)
    assert unseen.outputs["probabilities"]["yes"] == pytest.approx(2 / 10)  # the prior
    assert unseen.uncertainty is not None
    np.testing.assert_allclose(unseen.uncertainty["interval"], stats.beta.ppf([0.05, 0.95], 2, 8))
    with pytest.raises(ValidationError, match="'shop'"):
        model.predict([{"shop": "z"}])

    flagging = foretell.load(_rates_model(tmp_path / "flag", on_invalid="flag"))
    [unknown] = flagging.predict([{"shop": "z"}])
    assert [v.field for v in unknown.flags] == ["shop"]
    assert unknown.outputs["probabilities"]["yes"] == pytest.approx(2 / 10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"evidence": {"a": {"successes": 11, "trials": 10}}}, "successes (11) exceed trials"),
        ({"evidence": {"c": {"successes": 1, "trials": 2}}}, "evidence for segments ['c']"),
        ({"prior": {"alpha": 0, "beta": 1}}, "field 'prior.alpha'"),
        ({"family": "poisson"}, "family 'beta_binomial' or 'normal'"),
        ({"segment_by": "region"}, "'segment_by' must name a one-hot 'category' input"),
    ],
)
def test_broken_artifacts_are_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        foretell.load(_rates_model(tmp_path, **change))


def test_bayesian_linear_regression_updates_to_the_batch_posterior(tmp_path: Path) -> None:
    """Two updates from the monitoring store equal one fit on all rows: ridge regression with
    alpha = noise^2 / tau^2, and predictive variance noise^2 + x' S x."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 2))
    y = 1.5 + x @ np.array([2.0, -1.0]) + rng.normal(scale=0.5, size=len(x))
    noise, tau = 0.5, 3.0
    folder = tmp_path / "repo" / "line" / "1"
    folder.mkdir(parents=True)
    start = {
        "family": "normal",
        "coefficients": ["intercept", "u", "v"],
        "noise_std": noise,
        "prior": {"mean": [0.0, 0.0, 0.0], "std": tau},
    }
    (folder / "model.json").write_text(json.dumps(start))
    inputs = [Feature(name="u"), Feature(name="v")]
    write_spec(
        ModelSpec(
            name="line",
            version="1",
            task="regression",
            format="conjugate",
            artifact="model.json",
            inputs=inputs,
        ),
        folder,
    )
    repo = Repository(tmp_path / "repo")
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    try:
        for version, rows in (("1", range(0, 70)), ("2", range(70, 120))):
            store.log(
                [
                    {
                        "prediction_id": f"p{i:03d}",
                        "model": "line",
                        "version": version,
                        "ts": 1000.0 + i,
                        "inputs": orjson.dumps({"u": float(x[i, 0]), "v": float(x[i, 1])}).decode(),
                        "outputs": "{}",
                    }
                    for i in rows
                ]
            )
            store.add_feedback("line", [(f"p{i:03d}", float(y[i])) for i in rows])
            result = online.update(repo, store, "line")
            assert result.promoted and result.trained_rows == len(rows)
    finally:
        store.dispose()
    model = repo.load("line")
    assert model.version == "3"
    design = np.column_stack([np.ones(len(x)), x])
    ridge = Ridge(alpha=noise**2 / tau**2, fit_intercept=False).fit(design, y)
    test = rng.normal(size=(9, 2))
    results = model.predict(pd.DataFrame(test, columns=["u", "v"]))
    test_design = np.column_stack([np.ones(len(test)), test])
    np.testing.assert_allclose(
        [r.outputs["value"] for r in results], ridge.predict(test_design), atol=1e-9
    )
    precision = np.eye(3) / tau**2 + design.T @ design / noise**2
    variance = noise**2 + np.einsum(
        "ij,jk,ik->i", test_design, np.linalg.inv(precision), test_design
    )
    assert all(r.uncertainty is not None for r in results)
    stds = [r.uncertainty["std"] for r in results if r.uncertainty is not None]
    np.testing.assert_allclose(stds, np.sqrt(variance))
    report = online.posterior(model)
    assert report["evidence"] == {"rows": 120} and report["last_update"]["evidence"] == {"rows": 50}
    np.testing.assert_allclose(
        [report["posterior"][c]["mean"] for c in ("intercept", "u", "v")], ridge.coef_
    )
    artifact = parse_conjugate(json.loads((folder.parent / "3" / "model.json").read_text()), "")
    assert isinstance(artifact, NormalLinear) and artifact.evidence.rows == 120


@pytest.mark.parametrize(
    "estimator",
    [BayesianRidge(), GaussianProcessRegressor(alpha=0.1, random_state=0)],
    ids=["bayesian-ridge", "gaussian-process"],
)
def test_sklearn_bayesian_regressors_serve_their_own_std(tmp_path: Path, estimator: Any) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.3, size=len(x))
    estimator.fit(x, y)
    folder = tmp_path / "bayes" / "1"
    folder.mkdir(parents=True)
    sio.dump(estimator, folder / "model.skops")
    spec = ModelSpec(
        name="bayes",
        version="1",
        task="regression",
        format="sklearn",
        artifact="model.skops",
        inputs=[Feature(name=f"x{i}") for i in range(3)],
        runtime={
            "return_std": True,
            "level": 0.8,
            "trusted_types": sio.get_untrusted_types(file=folder / "model.skops"),
        },
        decision=Decision(rules=[Rule(when="std > 0.5", action="ask_a_human")], default="ok"),
    )
    write_spec(spec, folder)
    model = foretell.load(folder)
    test = rng.normal(size=(8, 3))
    test[6:] *= 9  # far from the training rows: less certain
    mean, std = estimator.predict(test, return_std=True)
    results = model.predict(pd.DataFrame(test, columns=["x0", "x1", "x2"]))
    np.testing.assert_allclose([r.outputs["value"] for r in results], mean, rtol=1e-12)
    z = stats.norm.ppf(0.9)
    for r, m, s in zip(results, mean, std, strict=True):
        assert r.uncertainty is not None and r.uncertainty["confidence"] == 0.8
        assert r.uncertainty["std"] == pytest.approx(s, rel=1e-12)
        np.testing.assert_allclose(r.uncertainty["interval"], [m - z * s, m + z * s], rtol=1e-12)
        assert r.decision == ("ask_a_human" if s > 0.5 else "ok")

    # an estimator whose predict has no return_std is refused at load
    sio.dump(Ridge().fit(x, y), folder / "model.skops")
    write_spec(spec.model_copy(update={"sha256": None}), folder)
    with pytest.raises(ModelLoadError, match="predict takes return_std"):
        foretell.load(folder)
