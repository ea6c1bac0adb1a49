"""The example models: foretell's outputs equal the training library's own predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import skops.io as sio
from onnx import numpy_helper
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from foretell import Repository
from foretell.examples import EXAMPLES, datasets
from foretell.pipeline.preprocess import encode


def _skops(folder: Path) -> Any:
    path = folder / "model.skops"
    return sio.load(path, trusted=sio.get_untrusted_types(file=path))


def test_every_task_kind_has_an_example(repository: Repository) -> None:
    tasks = {repository.get(name).spec.task for name in repository.names()}
    assert tasks == {
        "classification",
        "regression",
        "clustering",
        "anomaly_detection",
        "recommendation",
        "text_classification",
    }
    assert sorted(EXAMPLES) == repository.names()
    formats = {
        repository.get(n, v).spec.format for n in repository.names() for v in repository.versions(n)
    }
    assert {"onnx", "sklearn"} <= formats


def test_examples_keep_the_data_sets_own_names(repository: Repository) -> None:
    cancer = load_breast_cancer()
    spec = repository.get("breast-cancer").spec
    assert spec.feature_names == list(cancer.feature_names)
    assert spec.labels == list(cancer.target_names)
    assert repository.get("iris-segments").spec.feature_names == list(load_iris().feature_names)


def test_breast_cancer_onnx_matches_scikit_learn(repository: Repository) -> None:
    rows = load_breast_cancer(as_frame=True).data
    estimator = _skops(repository.get("breast-cancer", "1").folder)
    expected = estimator.predict_proba(rows.to_numpy())
    for version, tolerance in (("1", 1e-12), ("2", 1e-5)):
        results = repository.load("breast-cancer", version).predict(rows)
        got = np.array([list(r.outputs["probabilities"].values()) for r in results])
        np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0)
        labels = [r.outputs["label"] for r in results]
        assert labels == [["malignant", "benign"][i] for i in estimator.predict(rows.to_numpy())]


def test_diabetes_onnx_matches_scikit_learn(repository: Repository) -> None:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_diabetes(as_frame=True, scaled=False)
    model = repository.load("diabetes")
    x = encode(model.spec, data.data)
    expected = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x, data.target).predict(x)
    got = np.array([r.outputs["value"] for r in model.predict(data.data)])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_iris_segments_match_kmeans(repository: Repository) -> None:
    rows = load_iris(as_frame=True).data
    version = repository.get("iris-segments")
    estimator = _skops(version.folder)
    results = version.load().predict(rows)
    assert [r.outputs["cluster"] for r in results] == estimator.predict(rows.to_numpy()).tolist()
    distances = estimator.transform(rows.to_numpy()).min(axis=1)
    np.testing.assert_allclose([r.outputs["distance"] for r in results], distances, atol=1e-12)


def test_card_fraud_scores_match_isolation_forest(repository: Repository) -> None:
    frame = datasets.card_transactions(rows=500, seed=99)
    rows = frame.drop(columns=["is_fraud"])
    version = repository.get("card-fraud")
    model = version.load()
    estimator = _skops(version.folder)
    expected = -estimator.score_samples(encode(model.spec, rows))
    results = model.predict(rows)
    np.testing.assert_allclose([r.outputs["score"] for r in results], expected, atol=1e-12)
    flagged = np.array([r.outputs["is_anomaly"] for r in results])
    assert (flagged == (estimator.predict(encode(model.spec, rows)) == -1)).all()
    caught = flagged[frame["is_fraud"].to_numpy()].mean()
    assert caught > 0.8, f"only {caught:.0%} of generated frauds were flagged"


def test_sentiment_matches_the_scikit_learn_pipeline(repository: Repository) -> None:
    corpus = datasets.sentiment_corpus()
    version = repository.get("sentiment")
    estimator = _skops(version.folder)
    results = version.load().predict(corpus[["text"]])
    got = np.array([list(r.outputs["probabilities"].values()) for r in results])
    np.testing.assert_allclose(got, estimator.predict_proba(corpus["text"]), atol=1e-12)


def test_recommender_onnx_matches_numpy(repository: Repository) -> None:
    version = repository.get("item-recommender")
    graph = onnx.load(str(version.folder / "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    model = version.load()
    items = datasets.item_names()
    [result] = model.predict([{"items": ["kettle", "chef-knife"]}])
    basket = np.array([[item in ("kettle", "chef-knife") for item in items]], np.float32)
    scores = (basket @ weights["weights"] + weights["bias"])[0]
    scores[basket[0] > 0] = -np.inf
    top = np.argsort(-scores, kind="stable")[:5]
    assert [r["item"] for r in result.outputs["items"]] == [items[i] for i in top]
    np.testing.assert_allclose([r["score"] for r in result.outputs["items"]], scores[top], 1e-6)


def test_specs_carry_reference_statistics_and_checksums(repository: Repository) -> None:
    for name in repository.names():
        spec = repository.get(name).spec
        assert spec.sha256 and spec.reference is not None
        assert set(spec.reference.features) == set(spec.feature_names)
    fraud = repository.get("card-fraud").spec.reference
    assert fraud is not None
    amount = fraud.features["amount"]
    assert amount.quantiles and amount.histogram and amount.quantiles["p50"] > 0
    assert fraud.features["merchant_category"].frequencies
