"""``compile: onnx``: scikit-learn models converted at load, checked, or served as they are."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression

from foretell.pipeline import Model
from foretell.repository.spec import Feature, ModelSpec, read_spec, write_spec
from foretell.runtimes.sklearn import SklearnRuntime

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


def test_a_model_that_disagrees_in_onnx_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # inputs near 1e7 lose their fraction in ONNX's float32: the answers move by hundreds
    rng = np.random.default_rng(0)
    x = 1e7 + rng.uniform(0, 1, (200, 1))
    estimator = LinearRegression().fit(x, 1000.0 * (x[:, 0] - 1e7))
    folder = tmp_path / "big" / "1"
    folder.mkdir(parents=True)
    sio.dump(estimator, folder / "model.skops")
    feature = Feature(name="x", min=1e7, max=1e7 + 1)
    spec = ModelSpec(
        name="big",
        version="1",
        task="regression",
        format="sklearn",
        artifact="model.skops",
        inputs=[feature],
        compile="onnx",
    )
    write_spec(spec, folder)
    with caplog.at_level(logging.WARNING, logger="foretell.runtimes"):
        model = Model.from_folder(folder)
    assert isinstance(model.runtime, SklearnRuntime)
    assert model.runtime.compiled is None
    assert "disagrees with the estimator" in caplog.text
    [result] = model.predict([[1e7 + 0.5]])
    assert result.outputs["value"] == pytest.approx(500.0, abs=1e-3)
