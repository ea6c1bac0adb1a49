"""Explanations and conformal uncertainty: equal to SHAP's own output, additive, covering as
promised, and carried by every way results leave foretell."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import skops.io as sio
from sklearn.datasets import load_breast_cancer, load_diabetes
from typer.testing import CliRunner

from foretell import Repository
from foretell.cli import app
from foretell.errors import UserError
from foretell.examples.build import loan_applications
from foretell.insight.conformal import calibrate
from foretell.insight.explain import set_background
from foretell.jobs.batch import run_batch
from foretell.jobs.store import JobStore
from foretell.pipeline import Model
from foretell.pipeline.preprocess import encode
from foretell.repository.spec import Feature, ModelSpec, read_spec, write_spec
from tests.conftest import Server

with warnings.catch_warnings():  # shap 0.51 calls matplotlib methods marked for removal
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    import shap

runner = CliRunner()
DISTRICTS = ["centre", "north", "south", "harbour"]
LOAN_INPUTS = [
    "income",
    "loan_amount",
    "credit_score",
    "debt_to_income",
    "years_employed",
    "region",
    "age_band",
]
# Coverage at 0.9 with 5000 calibration rows: given the calibration set, coverage is
# Beta(k, n + 1 - k) with k = ceil(5001 * 0.9) = 4501, mean 0.9000 and sd sqrt(.9 * .1 / 5002)
# = 0.0042; 10,000 test rows add a binomial sd of sqrt(.09 / 10000) = 0.0030. Together about
# 0.0052, so the [0.88, 0.92] band is 3.8 sd wide each side. Seeds are fixed: no flakiness.
CALIBRATION_ROWS, TEST_ROWS = 5000, 10_000


def houses(rows: int, seed: int) -> pd.DataFrame:
    """Generated house sales: size, rooms, age and district, and the ``price`` (thousands)."""
    rng = np.random.default_rng(seed)
    district = rng.choice(DISTRICTS, size=rows)
    area = np.round(rng.lognormal(np.log(90), 0.35, rows), 1)
    rooms = np.clip(np.round(area / 25 + rng.normal(0, 0.7, rows)), 1, 10).astype(int)
    age = rng.integers(0, 80, rows)
    premium = pd.Series({"centre": 1.5, "north": 1.1, "south": 0.9, "harbour": 1.25})
    price = (
        2.2 * area * premium[district].to_numpy() + 8 * rooms - 0.6 * age + rng.normal(0, 15, rows)
    )
    frame = pd.DataFrame({"area": area, "rooms": rooms, "age": age, "district": district})
    return frame.assign(price=np.round(price, 1))


@pytest.fixture(scope="module")
def house_prices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XGBoost regressor of house prices with a one-hot category, calibrated on held-out
    sales and explained against a sample of its training data."""
    import xgboost

    folder = tmp_path_factory.mktemp("models") / "house-prices" / "1"
    spec = ModelSpec(
        name="house-prices",
        version="1",
        task="regression",
        format="xgboost",
        artifact="model.json",
        inputs=[
            Feature(name="area", min=0, max=2000),
            Feature(name="rooms", dtype="int", min=1, max=30),
            Feature(name="age", dtype="int", min=0, max=300),
            Feature(name="district", dtype="category", categories=DISTRICTS),
        ],
    )
    train = houses(3000, seed=1)
    matrix = xgboost.DMatrix(encode(spec, train.drop(columns=["price"])), train["price"])
    params = {"max_depth": 4, "eta": 0.1, "nthread": 1, "seed": 0}
    booster = xgboost.train(params, matrix, num_boost_round=150)
    folder.mkdir(parents=True)
    booster.save_model(str(folder / "model.json"))
    write_spec(spec, folder)
    calibrate(folder, houses(CALIBRATION_ROWS, seed=2), target="price")
    set_background(folder, train.drop(columns=["price"]), rows=100)
    return folder


def _attributions(predictions: list[Any], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([[p.explanation["attributions"][n] for n in names] for p in predictions])
    return values, np.array([p.explanation["base_value"] for p in predictions])


def _explained(p: Any) -> float:
    """The number a result's explanation explains: its value, or its label's probability."""
    if "value" in p.outputs:
        return float(p.outputs["value"])
    return float(p.outputs["probabilities"][p.outputs["label"]])


def _assert_additive(predictions: list[Any], names: list[str]) -> None:
    values, base = _attributions(predictions, names)
    explained = np.array([_explained(p) for p in predictions])
    np.testing.assert_allclose(base + values.sum(axis=1), explained, rtol=1e-6, atol=1e-6)


# ---- explanations equal SHAP's own output, and add up


def test_tree_attributions_equal_shap_for_a_scikit_learn_ensemble(examples_root: Path) -> None:
    folder = examples_root / "breast-cancer" / "1"
    model = Model.from_folder(folder)
    rows = load_breast_cancer(as_frame=True).data.iloc[::19]
    predictions = model.predict(rows, explain=True)
    names = model.spec.feature_names
    got, base = _attributions(predictions, names)
    path = folder / model.spec.artifact
    estimator = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    background = pd.read_parquet(folder / "background.parquet")[names].to_numpy()
    explainer = shap.TreeExplainer(
        estimator,
        data=background,
        feature_perturbation="interventional",
        model_output="probability",
    )
    benign = explainer.shap_values(rows.to_numpy())  # scikit-learn's class 1
    sign = np.array([1.0 if p.outputs["label"] == "benign" else -1.0 for p in predictions])
    np.testing.assert_allclose(got, benign * sign[:, None], rtol=0, atol=1e-6)
    expected_base = np.where(sign > 0, explainer.expected_value, 1 - explainer.expected_value)
    np.testing.assert_allclose(base, expected_base, rtol=0, atol=1e-6)
    _assert_additive(predictions, names)


def test_tree_attributions_of_a_one_hot_category_are_its_columns_summed(
    house_prices: Path,
) -> None:
    import xgboost

    model = Model.from_folder(house_prices)
    rows = houses(40, seed=3).drop(columns=["price"])
    predictions = model.predict(rows, explain=True)
    names = model.spec.feature_names
    got, _ = _attributions(predictions, names)
    booster = xgboost.Booster(model_file=str(house_prices / "model.json"))
    background = pd.read_parquet(house_prices / "background.parquet")
    explainer = shap.TreeExplainer(
        booster, data=encode(model.spec, background), feature_perturbation="interventional"
    )
    columns = explainer.shap_values(encode(model.spec, rows))  # area, rooms, age, 4 districts
    expected = np.column_stack([columns[:, :3], columns[:, 3:].sum(axis=1)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    _assert_additive(predictions, names)


def test_permutation_attributions_equal_shap_for_an_onnx_model(examples_root: Path) -> None:
    folder = examples_root / "breast-cancer" / "2"
    model = Model.from_folder(folder)
    rows = load_breast_cancer(as_frame=True).data.iloc[::57]
    predictions = model.predict(rows, explain=True)
    names = model.spec.feature_names
    got, base = _attributions(predictions, names)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

    def probabilities(x: np.ndarray) -> np.ndarray:
        (out,) = session.run(["probabilities"], {"input": x.astype(np.float32)})
        return np.asarray(out, dtype=np.float64)

    background = pd.read_parquet(folder / "background.parquet")[names].to_numpy(np.float64)
    masker = shap.maskers.Independent(background, max_samples=len(background))
    settings = model.spec.insight.explain
    assert settings is not None and settings.algorithm == "auto"
    chosen = [model.spec.labels.index(p.outputs["label"]) for p in predictions]  # type: ignore[union-attr]
    for i, row in enumerate(rows.to_numpy(np.float64)):  # each row from the seed, on its own
        explainer = shap.PermutationExplainer(probabilities, masker, seed=settings.seed)
        explanation = explainer(row[None, :], max_evals=settings.evaluations, silent=True)
        np.testing.assert_allclose(got[i], explanation.values[0, :, chosen[i]], rtol=0, atol=1e-6)
        np.testing.assert_allclose(base[i], explanation.base_values[0, chosen[i]], atol=1e-6)
    _assert_additive(predictions, names)


def test_a_rows_attributions_do_not_depend_on_the_rows_explained_with_it(
    examples_root: Path,
) -> None:
    model = Model.from_folder(examples_root / "breast-cancer" / "2")  # sampled permutations
    rows = load_breast_cancer().data[:12]
    names = model.spec.feature_names
    together, _ = _attributions(model.predict(rows, explain=True), names)
    for i in (0, 5, 11):
        alone, _ = _attributions(model.predict(rows[i : i + 1], explain=True), names)
        np.testing.assert_allclose(alone[0], together[i], rtol=0, atol=1e-12)


def test_categories_are_explained_as_one_input(repository: Repository) -> None:
    rows = loan_applications(rows=12, seed=9).drop(columns=["outcome"])
    predictions = repository.load("loan-approval").predict(rows, explain=True)
    assert all(list((p.explanation or {})["attributions"]) == LOAN_INPUTS for p in predictions)
    _assert_additive(predictions, LOAN_INPUTS)


# ---- conformal coverage on held-out data


def test_regression_intervals_cover_as_promised(house_prices: Path) -> None:
    model = Model.from_folder(house_prices)
    spec = model.spec.insight.uncertainty
    assert spec is not None and spec.rows == CALIBRATION_ROWS and spec.target == "price"
    test = houses(TEST_ROWS, seed=4)
    batch = model.run(test.drop(columns=["price"]), confidence=0.9)
    lower, upper = batch.outputs["lower"], batch.outputs["upper"]
    coverage = np.mean((lower <= test["price"]) & (test["price"] <= upper))
    assert 0.88 <= coverage <= 0.92, coverage
    assert np.all(batch.outputs["confidence"] == 0.9)
    narrower = model.run(test.drop(columns=["price"]), confidence=0.5)
    assert np.all(narrower.outputs["upper"] - narrower.outputs["lower"] < upper - lower)


def test_classification_sets_cover_as_promised(repository: Repository) -> None:
    model = repository.load("loan-approval")
    test = loan_applications(rows=TEST_ROWS, seed=7)  # trained on seed 5, calibrated on 6
    batch = model.run(test.drop(columns=["outcome"]), confidence=0.9)
    sets = batch.outputs["prediction_set"]
    coverage = np.mean([truth in s for truth, s in zip(test["outcome"], sets, strict=True)])
    assert 0.88 <= coverage <= 0.92, coverage
    [result] = model.predict(test.head(1).drop(columns=["outcome"]), confidence=0.9)
    assert result.uncertainty is not None
    assert result.uncertainty["method"] == "conformal" and result.uncertainty["confidence"] == 0.9
    assert set(result.uncertainty["set"]) <= {"default", "repaid"}


def test_bad_or_impossible_confidence_is_a_user_error(repository: Repository) -> None:
    loan = repository.load("loan-approval")
    rows = loan_applications(rows=2).drop(columns=["outcome"])
    for bad in (0, 1, 1.5, -0.1, True, "0.9"):
        with pytest.raises(UserError, match="parameter 'confidence' must be a number"):
            loan.predict(rows, confidence=bad)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="foretell calibrate breast-cancer"):
        repository.load("breast-cancer").predict([[10.0] * 30], confidence=0.9)
    with pytest.raises(UserError, match="explanations apply to"):
        repository.load("sentiment").predict([{"text": "fine"}], explain=True)


# ---- every way results leave foretell


def _post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120.0)


def test_v1_explain_and_confidence_over_a_real_server(server: Server) -> None:
    rows = loan_applications(rows=5, seed=8).drop(columns=["outcome"]).to_dict("records")
    response = _post(
        server,
        "/v1/models/loan-approval:explain",
        {"instances": rows, "parameters": {"confidence": 0.9}},
    )
    assert response.status_code == 200, response.text
    for result in response.json()["predictions"]:
        explanation, uncertainty = result["explanation"], result["uncertainty"]
        assert list(explanation["attributions"]) == LOAN_INPUTS
        total = explanation["base_value"] + sum(explanation["attributions"].values())
        assert total == pytest.approx(result["probabilities"][result["label"]], abs=1e-6)
        assert uncertainty["method"] == "conformal" and uncertainty["confidence"] == 0.9
        assert set(uncertainty["set"]) <= {"default", "repaid"}
    plain = _post(server, "/v1/models/loan-approval:predict", {"instances": rows[:1]})
    assert "explanation" not in plain.json()["predictions"][0]
    # the prediction log keeps the explanations: the monitoring report ranks the inputs
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        report = httpx.get(f"{server.url}/v1/models/loan-approval/monitoring", timeout=30).json()
        if report["importance"] and report["importance"]["rows"] >= 5:
            break
        time.sleep(0.2)
    assert set(report["importance"]["mean_abs_attribution"]) == set(LOAN_INPUTS)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("breast-cancer:predict", {"parameters": {"confidence": 1.2}}, "parameter 'confidence'"),
        ("breast-cancer:predict", {"parameters": {"confidence": 0.9}}, "foretell calibrate"),
        ("breast-cancer:predict", {"parameters": {"explain": "yes"}}, "parameter 'explain'"),
        ("sentiment:explain", {}, "explanations apply to"),
    ],
)
def test_bad_insight_parameters_are_400_json(
    server: Server, path: str, body: dict[str, Any], expected: str
) -> None:
    instances = [{"text": "fine"}] if path.startswith("sentiment") else [[10.0] * 30]
    response = _post(server, f"/v1/models/{path}", {"instances": instances, **body})
    assert response.status_code == 400
    assert expected in response.json()["error"]


def test_v2_extra_outputs(server: Server) -> None:
    rows = load_diabetes(scaled=False).data[:3]
    frame = loan_applications(rows=3, seed=8)
    datatypes = {"O": "BYTES", "i": "INT64", "f": "FP64"}
    inputs = [
        {
            "name": name,
            "datatype": datatypes[frame[name].dtype.kind],
            "shape": [3],
            "data": frame[name].tolist(),
        }
        for name in LOAN_INPUTS
    ]
    body = {"inputs": inputs, "parameters": {"explain": True, "confidence": 0.9}}
    response = _post(server, "/v2/models/loan-approval/infer", body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    attribution = outputs["attribution"]
    assert attribution["shape"] == [3, 7] and attribution["datatype"] == "FP64"
    assert json.loads(attribution["parameters"]["features"]) == LOAN_INPUTS
    assert outputs["base_value"]["shape"] == [3] and outputs["confidence"]["data"] == [0.9] * 3
    assert all(
        set(json.loads(s)) <= {"default", "repaid"} for s in outputs["prediction_set"]["data"]
    )
    assert "attribution" not in {
        o["name"]
        for o in _post(server, "/v2/models/diabetes/infer", _rows_body(rows)).json()["outputs"]
    }


def _rows_body(rows: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "datatype": "FP64", "shape": list(rows.shape), "data": rows.tolist()}
        ]
    }


def test_batch_job_writes_the_extra_columns(examples_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "loans.csv"
    loan_applications(rows=12, seed=8).drop(columns=["outcome"]).to_csv(source, index=False)
    destination = tmp_path / "scored.parquet"
    job = run_batch(
        Repository(examples_root),
        JobStore(tmp_path / "jobs.db"),
        model="loan-approval",
        source=str(source),
        destination=str(destination),
        chunk_rows=5,
        explain=True,
        confidence=0.9,
    )
    assert job.status == "done" and job.rows_scored == 12
    scored = pd.read_parquet(destination)
    attributions = scored[[f"attribution[{n}]" for n in LOAN_INPUTS]].sum(axis=1)
    probability = np.where(
        scored["label"] == "repaid", scored["probability_repaid"], scored["probability_default"]
    )
    np.testing.assert_allclose(scored["base_value"] + attributions, probability, atol=1e-6)
    assert (scored["confidence"] == 0.9).all()
    assert all(set(s) <= {"default", "repaid"} for s in scored["prediction_set"])


def test_cli_predict_explain_and_calibrate(examples_copy: Path, tmp_path: Path) -> None:
    data = load_diabetes(as_frame=True, scaled=False)
    rows = tmp_path / "rows.json"
    rows.write_text(data.data.iloc[:3].to_json(orient="records"))
    repo = ["-r", str(examples_copy)]
    refused = runner.invoke(
        app, ["predict", "diabetes", *repo, "-i", str(rows), "--confidence", "0.9"]
    )
    assert refused.exit_code == 2 and "foretell calibrate diabetes" in refused.output
    held_out = tmp_path / "held_out.parquet"
    data.frame.iloc[300:].to_parquet(held_out)  # (the example trains on every row: mechanics only)
    done = runner.invoke(app, ["calibrate", "diabetes", *repo, "--data", str(held_out)])
    assert done.exit_code == 0, done.output
    uncertainty = read_spec(examples_copy / "diabetes" / "1").insight.uncertainty
    assert uncertainty is not None and uncertainty.rows == len(data.frame) - 300
    result = runner.invoke(
        app, ["predict", "diabetes", *repo, "-i", str(rows), "--explain", "--confidence", "0.8"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    for line in lines:
        low, high = line["uncertainty"]["interval"]
        assert low < line["value"] < high and line["uncertainty"]["confidence"] == 0.8
        total = line["explanation"]["base_value"] + sum(
            line["explanation"]["attributions"].values()
        )
        assert total == pytest.approx(line["value"], abs=1e-6)
