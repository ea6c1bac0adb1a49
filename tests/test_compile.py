"""``compile: onnx``: scikit-learn models converted at load, checked, or served as they are."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LinearRegression

from foretell.pipeline import Model
from foretell.repository.spec import Feature, ModelSpec, read_spec, write_spec
from foretell.runtimes.sklearn import SklearnRuntime
from tests.conftest import Server

CANCER = load_breast_cancer().data


def compiled_copy(examples_root: Path, tmp_path: Path, name: str, version: str) -> Model:
    """The example model version, loaded with ``compile: onnx`` added to its spec."""
    folder = tmp_path / name / version
    shutil.copytree(examples_root / name / version, folder)
    spec = read_spec(folder).model_copy(update={"compile": "onnx"})
    write_spec(spec, folder)
    return Model.from_folder(folder)


def test_a_classifier_converts_and_predicts_as_before(
    examples_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="foretell.runtimes"):
        model = compiled_copy(examples_root, tmp_path, "breast-cancer", "1")
    assert isinstance(model.runtime, SklearnRuntime)
    assert model.runtime.compiled is not None
    assert "compiled to ONNX" in caplog.text
    plain = Model.from_folder(examples_root / "breast-cancer" / "1")
    ours, theirs = model.predict(CANCER[:50]), plain.predict(CANCER[:50])
    for a, b in zip(ours, theirs, strict=True):
        assert a.outputs["label"] == b.outputs["label"]
        assert a.outputs["probabilities"] == pytest.approx(b.outputs["probabilities"], abs=1e-4)


def test_a_task_onnx_does_not_cover_falls_back_with_the_reason(
    examples_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="foretell.runtimes"):
        model = compiled_copy(examples_root, tmp_path, "card-fraud", "1")
    assert isinstance(model.runtime, SklearnRuntime)
    assert model.runtime.compiled is None
    assert "covers classification and regression, not anomaly_detection" in caplog.text
    assert len(model.predict(card_rows(2))) == 2


def card_rows(n: int) -> list[dict[str, object]]:
    from foretell.examples import datasets

    frame = datasets.card_transactions(rows=n, seed=3).drop(columns=["is_fraud"])
    return frame.to_dict("records")  # type: ignore[return-value]


def served_as_estimator(
    tmp_path: Path, estimator: Any, inputs: list[Feature], caplog: pytest.LogCaptureFixture
) -> Model:
    """A regressor saved as a model version with ``compile: onnx``, loaded: it must fall back
    to the estimator (the log then says why)."""
    folder = tmp_path / "regressor" / "1"
    folder.mkdir(parents=True)
    sio.dump(estimator, folder / "model.skops")
    spec = ModelSpec(
        name="regressor",
        version="1",
        task="regression",
        format="sklearn",
        artifact="model.skops",
        inputs=inputs,
        compile="onnx",
    )
    write_spec(spec, folder)
    with caplog.at_level(logging.WARNING, logger="foretell.runtimes"):
        model = Model.from_folder(folder)
    assert isinstance(model.runtime, SklearnRuntime)
    assert model.runtime.compiled is None
    return model


def test_a_model_that_disagrees_in_onnx_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # inputs near 1e7 lose their fraction in ONNX's float32: the answers move by hundreds
    rng = np.random.default_rng(0)
    x = 1e7 + rng.uniform(0, 1, (200, 1))
    estimator = LinearRegression().fit(x, 1000.0 * (x[:, 0] - 1e7))
    feature = Feature(name="x", min=1e7, max=1e7 + 1)
    model = served_as_estimator(tmp_path, estimator, [feature], caplog)
    assert "disagrees with the estimator" in caplog.text
    [result] = model.predict([[1e7 + 0.5]])
    assert result.outputs["value"] == pytest.approx(500.0, abs=1e-3)


def test_an_estimator_skl2onnx_cannot_convert_falls_back_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x = np.random.default_rng(0).uniform(0, 1, (100, 2))
    estimator = KernelRidge(alpha=0.1).fit(x, x.sum(axis=1))  # skl2onnx has no converter
    inputs = [Feature(name=n, min=0, max=1) for n in ("a", "b")]
    model = served_as_estimator(tmp_path, estimator, inputs, caplog)
    assert "compile: onnx failed, serving the scikit-learn estimator" in caplog.text
    assert "KernelRidge" in caplog.text
    [result] = model.predict([[0.25, 0.5]])
    assert result.outputs["value"] == pytest.approx(float(estimator.predict([[0.25, 0.5]])[0]))


def test_a_server_serves_compiled_models_and_logs_each_fallback(
    examples_root: Path, examples_copy: Path, tmp_path: Path
) -> None:
    for name in ("breast-cancer", "card-fraud"):
        folder = examples_copy / name / "1"
        write_spec(read_spec(folder).model_copy(update={"compile": "onnx"}), folder)
    (examples_copy / "breast-cancer" / "policy.yaml").write_text('serve: "1"\n')  # scikit-learn
    server = Server(["--repository", str(examples_copy)], cwd=tmp_path)
    try:  # the server loads every model before it listens
        body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [20, 30]}]}
        body["inputs"][0]["data"] = CANCER[:20].ravel().tolist()
        url = f"{server.url}/v2/models/breast-cancer/infer"
        response = httpx.post(url, json=body, timeout=30)
        fraud = httpx.post(
            f"{server.url}/v1/models/card-fraud:predict",
            json={"instances": card_rows(3)},
            timeout=30,
        )
    finally:
        server.stop()
    log = server.log.read_text()
    assert "breast-cancer/1: compiled to ONNX" in log
    assert "card-fraud/1: compile: onnx failed" in log and "anomaly_detection" in log
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    plain = Model.from_folder(examples_root / "breast-cancer" / "1").predict(CANCER[:20])
    assert outputs["label"] == [p.outputs["label"] for p in plain]
    expected = [list(p.outputs["probabilities"].values()) for p in plain]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"], (20, 2)), expected, atol=1e-4)
    assert fraud.status_code == 200, fraud.text
    assert len(fraud.json()["predictions"]) == 3
