"""Runtimes on real, tiny models: conformance per format, safety of loading, missing extras.

Every model here is trained inside the test, written to a version folder with a model.yaml,
loaded through ``foretell.load`` and compared with the training library's own predictions on
the same rows.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression, Ridge

import foretell
from foretell import (
    MissingExtraError,
    ModelLoadError,
    UnsafeModelError,
    ValidationError,
)
from foretell.pipeline import Model
from foretell.repository.spec import Feature, Format, ModelSpec, write_spec
from foretell.runtimes import RUNTIMES, runtime_class
from foretell.runtimes.base import file_sha256

FEATURES = ["x0", "x1", "x2", "x3"]
BINARY = ["no", "yes"]
THREE = ["low", "mid", "high"]

#: ONNX runs in float32, so it matches scikit-learn's float64 to this absolute tolerance.
ONNX_ATOL = 1e-5
#: Native runtimes run the library's own code on the same rows: equal up to rounding noise.
NATIVE_ATOL = 1e-9
#: Agreement of float32 results computed by different kernels (a few units of float32's
#: 1.2e-7 epsilon on values near 1).
FLOAT32_ATOL = 1e-6

# torch 2.13 deprecates TorchScript (torch.jit.script and torch.jit.load warn with a
# DeprecationWarning on every call). Building a TorchScript archive needs torch.jit.script and
# the runtime reads it with torch.jit.load, so those two warnings cannot be avoided by using
# torch correctly; ignore exactly them on the tests that touch TorchScript.
IGNORE_JIT_SCRIPT = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)
IGNORE_JIT_LOAD = pytest.mark.filterwarnings(
    "ignore:`torch.jit.load` is deprecated:DeprecationWarning"
)


# --------------------------------------------------------------------------- data and specs


def training_data(task: str, classes: int = 2, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A small, learnable float64 dataset: 4 features, a binary / 3-class label or a value."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(90, len(FEATURES)))
    score = x[:, 0] + 0.5 * x[:, 1] - 0.75 * x[:, 2] + 0.1 * rng.normal(size=len(x))
    if task == "regression":
        return x, 3.0 * x[:, 0] - 2.0 * x[:, 3] + np.sin(x[:, 1]) + 0.1 * rng.normal(size=len(x))
    if classes == 2:
        return x, (score > 0).astype(np.int64)
    return x, np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype(np.int64)


def scoring_rows(n: int = 13) -> np.ndarray:
    """Rows foretell and the library both score; distinct, so order mistakes show."""
    return np.random.default_rng(99).normal(size=(n, len(FEATURES)))


def records(x: np.ndarray) -> list[dict[str, Any]]:
    """``x`` as the records a caller sends: one dict of plain floats per row."""
    return [dict(zip(FEATURES, map(float, row), strict=True)) for row in x]


def make_spec(
    fmt: str,
    artifact: str,
    task: str = "classification",
    labels: list[str] | None = None,
    **extra: Any,
) -> ModelSpec:
    return ModelSpec(
        name=f"{fmt}-model",
        version="3",
        task=task,  # type: ignore[arg-type]
        format=fmt,  # type: ignore[arg-type]
        artifact=artifact,
        inputs=[Feature(name=n, dtype="float") for n in FEATURES],
        labels=labels,
        **extra,
    )


def save(folder: Path, spec: ModelSpec) -> Path:
    write_spec(spec, folder)
    return folder


@dataclass
class Built:
    """A trained model saved in ``folder``, and the library's own answers on ``x``."""

    spec: ModelSpec
    x: np.ndarray
    expected: np.ndarray  # (rows, classes) probabilities, or (rows,) values
    atol: float
    #: How far one row scored alone may be from the same row in a batch: float32 kernels
    #: (PyTorch's) take other code paths for other batch sizes and differ in the last bits.
    alone_atol: float | None = None


# --------------------------------------------------------------------------- builders


def build_onnx_classifier(folder: Path) -> Built:
    from skl2onnx import to_onnx

    x, y = training_data("classification", classes=3)
    est = LogisticRegression(max_iter=500).fit(x, y)
    onx = to_onnx(est, x[:1].astype(np.float32), options={id(est): {"zipmap": False}})
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    test = scoring_rows()
    spec = make_spec("onnx", "model.onnx", labels=THREE)
    return Built(spec, test, est.predict_proba(test), ONNX_ATOL)


def build_onnx_regressor(folder: Path) -> Built:
    from skl2onnx import to_onnx

    x, y = training_data("regression")
    est = Ridge(alpha=0.5).fit(x, y)
    onx = to_onnx(est, x[:1].astype(np.float32))
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    test = scoring_rows()
    spec = make_spec("onnx", "model.onnx", task="regression")
    return Built(spec, test, est.predict(test), ONNX_ATOL)


def build_sklearn_classifier(folder: Path) -> Built:
    x, y = training_data("classification", classes=3)
    est = LogisticRegression(max_iter=500).fit(x, y)
    sio.dump(est, folder / "model.skops")
    test = scoring_rows()
    spec = make_spec("sklearn", "model.skops", labels=THREE)
    return Built(spec, test, est.predict_proba(test), NATIVE_ATOL)


def build_sklearn_regressor(folder: Path) -> Built:
    x, y = training_data("regression")
    est = Ridge(alpha=0.5).fit(x, y)
    sio.dump(est, folder / "model.skops")
    test = scoring_rows()
    spec = make_spec("sklearn", "model.skops", task="regression")
    return Built(spec, test, est.predict(test), NATIVE_ATOL)


def _xgboost_classifier(folder: Path, artifact: str, classes: int) -> Built:
    import xgboost

    x, y = training_data("classification", classes=classes)
    est = xgboost.XGBClassifier(n_estimators=8, max_depth=2, n_jobs=1, random_state=0)
    est.fit(x, y)
    est.save_model(folder / artifact)
    test = scoring_rows()
    spec = make_spec("xgboost", artifact, labels=BINARY if classes == 2 else THREE)
    return Built(spec, test, est.predict_proba(test), NATIVE_ATOL)


def build_xgboost_binary_json(folder: Path) -> Built:
    return _xgboost_classifier(folder, "model.json", classes=2)


def build_xgboost_multiclass_ubj(folder: Path) -> Built:
    return _xgboost_classifier(folder, "model.ubj", classes=3)


def build_xgboost_regressor(folder: Path) -> Built:
    import xgboost

    x, y = training_data("regression")
    est = xgboost.XGBRegressor(n_estimators=8, max_depth=2, n_jobs=1, random_state=0)
    est.fit(x, y)
    est.save_model(folder / "model.json")
    test = scoring_rows()
    spec = make_spec("xgboost", "model.json", task="regression")
    return Built(spec, test, est.predict(test), NATIVE_ATOL)


_LGBM = {"n_estimators": 8, "num_leaves": 4, "min_child_samples": 5, "n_jobs": 1, "verbose": -1}


def _lightgbm_classifier(folder: Path, classes: int) -> Built:
    import lightgbm

    x, y = training_data("classification", classes=classes)
    est = lightgbm.LGBMClassifier(**_LGBM).fit(x, y)
    est.booster_.save_model(str(folder / "model.txt"))
    test = scoring_rows()
    spec = make_spec("lightgbm", "model.txt", labels=BINARY if classes == 2 else THREE)
    return Built(spec, test, est.predict_proba(test), NATIVE_ATOL)


def build_lightgbm_binary(folder: Path) -> Built:
    return _lightgbm_classifier(folder, classes=2)


def build_lightgbm_multiclass(folder: Path) -> Built:
    return _lightgbm_classifier(folder, classes=3)


def build_lightgbm_regressor(folder: Path) -> Built:
    import lightgbm

    x, y = training_data("regression")
    est = lightgbm.LGBMRegressor(**_LGBM).fit(x, y)
    est.booster_.save_model(str(folder / "model.txt"))
    test = scoring_rows()
    spec = make_spec("lightgbm", "model.txt", task="regression")
    return Built(spec, test, est.predict(test), NATIVE_ATOL)


USER_MODEL = textwrap.dedent(
    """
    from pathlib import Path

    import numpy as np


    class MyModel:
        def __init__(self, folder):
            self.weights = np.load(Path(folder) / "weights.npy")

        def predict(self, x):
            z = x @ self.weights
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
    """
)


def build_python_classifier(folder: Path) -> Built:
    x, y = training_data("classification", classes=3)
    weights = LogisticRegression(max_iter=500).fit(x, y).coef_.T.copy()  # (features, classes)
    np.save(folder / "weights.npy", weights)
    (folder / "model.py").write_text(USER_MODEL, encoding="utf-8")
    test = scoring_rows()
    z = test @ weights
    e = np.exp(z - z.max(axis=1, keepdims=True))
    spec = make_spec("python", "model.py", labels=THREE, trusted=True, runtime={"class": "MyModel"})
    return Built(spec, test, e / e.sum(axis=1, keepdims=True), NATIVE_ATOL)


def _torch_net() -> Any:
    """A tiny 3-class MLP, trained for a few steps on the 3-class data."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = training_data("classification", classes=3)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(30):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        optimiser.step()
    return net.eval()


def _torch_expected(module: Any, test: np.ndarray, softmax: bool) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = module(torch.from_numpy(test.astype(np.float32)))
        if softmax:
            out = torch.softmax(out, dim=1)
    return np.asarray(out.numpy(), dtype=np.float64)


def build_torchscript_logits(folder: Path) -> Built:
    import torch

    net = _torch_net()
    torch.jit.script(net).save(str(folder / "model.pt"))
    test = scoring_rows()
    spec = make_spec("torchscript", "model.pt", labels=THREE, runtime={"outputs": "logits"})
    return Built(spec, test, _torch_expected(net, test, softmax=True), NATIVE_ATOL, FLOAT32_ATOL)


def build_torchscript_probabilities(folder: Path) -> Built:
    import torch

    net = torch.nn.Sequential(_torch_net(), torch.nn.Softmax(dim=1)).eval()
    torch.jit.script(net).save(str(folder / "model.pt"))
    test = scoring_rows()
    spec = make_spec("torchscript", "model.pt", labels=THREE)
    return Built(spec, test, _torch_expected(net, test, softmax=False), NATIVE_ATOL, FLOAT32_ATOL)


def build_uplift_effect(folder: Path) -> Built:
    """Bags of paired ridge regressions (treated, control); ``task: regression`` serves the
    mean difference, the individual effect, as the value."""
    x, y = training_data("regression")
    treated = np.arange(len(x)) % 2 == 1
    y = y + treated * (1.0 + x[:, 0])
    rng = np.random.default_rng(3)
    bags: dict[str, list[Any]] = {"treated": [], "control": []}
    arms = {"treated": np.flatnonzero(treated), "control": np.flatnonzero(~treated)}
    for _ in range(3):
        for arm, rows in arms.items():
            drawn = rng.choice(rows, size=len(rows))
            bags[arm].append(Ridge(alpha=0.5).fit(x[drawn], y[drawn]))
    sio.dump(bags, folder / "model.skops")
    test = scoring_rows()
    pairs = zip(bags["treated"], bags["control"], strict=True)
    effect = np.mean([t.predict(test) - c.predict(test) for t, c in pairs], axis=0)
    spec = make_spec("uplift", "model.skops", task="regression")
    return Built(spec, test, effect, NATIVE_ATOL)


def build_conjugate_normal(folder: Path) -> Built:
    """Bayesian linear regression with known noise: under a N(0, tau^2) prior on every
    coefficient its posterior mean is ridge regression with alpha = noise^2 / tau^2 (the
    intercept a coefficient like the others)."""
    x, y = training_data("regression")
    noise, tau = 0.5, 2.0
    design = np.column_stack([np.ones(len(x)), x])
    artifact = {
        "family": "normal",
        "coefficients": ["intercept", *FEATURES],
        "noise_std": noise,
        "prior": {"mean": [0.0] * design.shape[1], "std": tau},
        "evidence": {
            "rows": len(x),
            "xtx": (design.T @ design).tolist(),
            "xty": (design.T @ y).tolist(),
        },
    }
    (folder / "model.json").write_text(json.dumps(artifact), encoding="utf-8")
    ridge = Ridge(alpha=noise**2 / tau**2, fit_intercept=False).fit(design, y)
    test = scoring_rows()
    expected = ridge.predict(np.column_stack([np.ones(len(test)), test]))
    return Built(
        make_spec("conjugate", "model.json", task="regression"), test, expected, NATIVE_ATOL
    )


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Built]
    marks: tuple[pytest.MarkDecorator, ...] = ()


_TORCH_MARKS = (IGNORE_JIT_SCRIPT, IGNORE_JIT_LOAD)

#: format -> the models the conformance test builds for it. A format in RUNTIMES missing here
#: fails the conformance test: a new runtime must come with a builder.
CASES: dict[str, list[Case]] = {
    "onnx": [
        Case("classifier", build_onnx_classifier),
        Case("regressor", build_onnx_regressor),
    ],
    "sklearn": [
        Case("skops-classifier", build_sklearn_classifier),
        Case("skops-regressor", build_sklearn_regressor),
    ],
    "xgboost": [
        Case("json-binary", build_xgboost_binary_json),
        Case("ubj-3class", build_xgboost_multiclass_ubj),
        Case("json-regressor", build_xgboost_regressor),
    ],
    "lightgbm": [
        Case("binary", build_lightgbm_binary),
        Case("3class", build_lightgbm_multiclass),
        Case("regressor", build_lightgbm_regressor),
    ],
    "python": [Case("classifier", build_python_classifier)],
    "torchscript": [
        Case("logits", build_torchscript_logits, _TORCH_MARKS),
        Case("probabilities", build_torchscript_probabilities, _TORCH_MARKS),
    ],
    "uplift": [Case("effect-as-regression", build_uplift_effect)],
    "conjugate": [Case("normal-regressor", build_conjugate_normal)],
}


def _conformance_params() -> list[Any]:
    params = []
    for fmt in RUNTIMES:
        cases = CASES.get(fmt)
        if not cases:
            params.append(pytest.param(fmt, None, id=f"{fmt}-no-builder"))
            continue
        params.extend(pytest.param(fmt, c, id=f"{fmt}-{c.name}", marks=c.marks) for c in cases)
    return params


def build_into(tmp_path: Path, case: Case) -> tuple[Path, Built]:
    folder = tmp_path / "repo" / "model" / "3"
    folder.mkdir(parents=True)
    built = case.build(folder)
    save(folder, built.spec)
    return folder, built


def outputs_as_array(model: Model, predictions: list[foretell.Prediction]) -> np.ndarray:
    if model.spec.task == "regression":
        return np.array([p.outputs["value"] for p in predictions], dtype=np.float64)
    labels = model.spec.labels or []
    return np.array(
        [[p.outputs["probabilities"][label] for label in labels] for p in predictions],
        dtype=np.float64,
    )


# --------------------------------------------------------------------------- conformance


def test_every_spec_format_has_a_runtime() -> None:
    assert set(typing.get_args(Format)) == set(RUNTIMES)


@pytest.mark.parametrize(("fmt", "case"), _conformance_params())
def test_runtime_conformance(fmt: str, case: Case | None, tmp_path: Path) -> None:
    if case is None:
        pytest.fail(f"format '{fmt}' is in RUNTIMES but tests/test_runtimes.py has no builder")
    folder, built = build_into(tmp_path, case)
    model = foretell.load(folder)
    assert isinstance(model.runtime, runtime_class(fmt))
    assert model.runtime.format == fmt

    # (a) the same answers as the training library, row for row
    rows = records(built.x)
    results = model.predict(rows)
    got = outputs_as_array(model, results)
    assert got.shape == built.expected.shape
    np.testing.assert_allclose(got, built.expected, rtol=0, atol=built.atol)
    if model.spec.task == "classification":
        labels = model.spec.labels or []
        assert [p.outputs["label"] for p in results] == [
            labels[i] for i in built.expected.argmax(axis=1)
        ]
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)

    # (b) an empty batch is an empty answer
    assert model.predict([]) == []

    # (c) a bad row is refused, naming the row, the field and the rule
    bad = [rows[0], {**rows[1], "x2": "not a number"}]
    with pytest.raises(ValidationError) as caught:
        model.predict(bad)
    message = str(caught.value)
    assert "row 1" in message
    assert "'x2'" in message
    assert "must be a number" in message
    assert [(v.row, v.field, v.rule) for v in caught.value.violations] == [(1, "x2", "type")]

    # (d) results in row order, each with a fresh UUID, the model's name and version
    ids = [p.prediction_id for p in results]
    assert len(set(ids)) == len(ids) == len(rows)
    for pid in ids:
        assert str(uuid.UUID(pid)) == pid
    assert {(p.model, p.version) for p in results} == {(fmt + "-model", "3")}
    assert all(p.error is None for p in results)
    reversed_got = outputs_as_array(model, model.predict(rows[::-1]))
    np.testing.assert_allclose(reversed_got, got[::-1], rtol=0, atol=built.atol)
    single = outputs_as_array(model, model.predict([rows[5]]))
    np.testing.assert_allclose(single[0], got[5], rtol=0, atol=built.alone_atol or built.atol)


# --------------------------------------------------------------------------- safety


class TouchOnUnpickle:
    """Unpickling this creates ``marker``: a stand-in for a malicious pickle's payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def _dump_pickle(obj: Any, path: Path) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle)


def _dump_joblib(obj: Any, path: Path) -> None:
    joblib.dump(obj, path)


def _read_pickle(path: Path) -> Any:
    with path.open("rb") as handle:
        return pickle.load(handle)


PICKLE_KINDS = [
    pytest.param("model.pkl", _dump_pickle, _read_pickle, id="pkl"),
    pytest.param("model.pickle", _dump_pickle, _read_pickle, id="pickle"),
    pytest.param("model.joblib", _dump_joblib, joblib.load, id="joblib"),
]


@pytest.mark.parametrize(("artifact", "dump", "read"), PICKLE_KINDS)
def test_untrusted_pickle_is_refused_before_it_runs(
    artifact: str,
    dump: Callable[[Any, Path], None],
    read: Callable[[Path], Any],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil" / "1"
    folder.mkdir(parents=True)
    dump(TouchOnUnpickle(marker), folder / artifact)
    save(folder, make_spec("sklearn", artifact, labels=BINARY))

    with pytest.raises(UnsafeModelError) as caught:
        foretell.load(folder)
    assert "trusted: true" in str(caught.value)
    assert artifact in str(caught.value)
    assert not marker.exists()

    # The payload is real: reading the file the way the runtime would creates the marker.
    read(folder / artifact)
    assert marker.exists()


@pytest.mark.parametrize(("artifact", "dump", "read"), PICKLE_KINDS)
def test_trusted_pickle_loads_and_predicts(
    artifact: str,
    dump: Callable[[Any, Path], None],
    read: Callable[[Path], Any],
    tmp_path: Path,
) -> None:
    x, y = training_data("classification")
    est = LogisticRegression().fit(x, y)
    folder = tmp_path / "ok" / "1"
    folder.mkdir(parents=True)
    dump(est, folder / artifact)
    save(folder, make_spec("sklearn", artifact, labels=BINARY, trusted=True))

    model = foretell.load(folder)
    test = scoring_rows()
    got = outputs_as_array(model, model.predict(records(test)))
    np.testing.assert_allclose(got, est.predict_proba(test), rtol=0, atol=NATIVE_ATOL)


def test_untrusted_python_model_is_refused_without_importing_it(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    folder = tmp_path / "user" / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\n"
        + USER_MODEL.replace('"weights.npy"', '"w.npy"'),
        encoding="utf-8",
    )
    np.save(folder / "w.npy", np.eye(4, 2))
    spec = make_spec("python", "model.py", labels=BINARY, runtime={"class": "MyModel"})
    save(folder, spec)

    with pytest.raises(UnsafeModelError) as caught:
        foretell.load(folder)
    assert "trusted: true" in str(caught.value)
    assert not marker.exists()

    # The same file, trusted, is imported (so the marker above would have caught an import).
    save(folder, spec.model_copy(update={"trusted": True}))
    model = foretell.load(folder)
    assert marker.exists()
    assert len(model.predict(records(scoring_rows(2)))) == 2


def test_python_model_without_its_class_is_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "user" / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(USER_MODEL, encoding="utf-8")
    save(
        folder,
        make_spec("python", "model.py", labels=BINARY, trusted=True, runtime={"class": "Nope"}),
    )
    with pytest.raises(ModelLoadError, match="no class 'Nope'"):
        foretell.load(folder)


@pytest.fixture
def gbc_skops(tmp_path: Path) -> tuple[Path, GradientBoostingClassifier, list[str]]:
    """A skops file holding a type outside skops' trusted list (sklearn.tree._tree.Tree)."""
    x, y = training_data("classification")
    est = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(x, y)
    folder = tmp_path / "gbc" / "1"
    folder.mkdir(parents=True)
    sio.dump(est, folder / "model.skops")
    untrusted = sio.get_untrusted_types(file=folder / "model.skops")
    assert "sklearn.tree._tree.Tree" in untrusted
    return folder, est, untrusted


@pytest.mark.parametrize("listed", [None, [], ["numpy.float64"]], ids=["none", "empty", "other"])
def test_skops_untrusted_types_are_refused(
    gbc_skops: tuple[Path, GradientBoostingClassifier, list[str]], listed: list[str] | None
) -> None:
    folder, _, _ = gbc_skops
    runtime = {} if listed is None else {"trusted_types": listed}
    save(folder, make_spec("sklearn", "model.skops", labels=BINARY, runtime=runtime))
    with pytest.raises(UnsafeModelError) as caught:
        foretell.load(folder)
    message = str(caught.value)
    assert "sklearn.tree._tree.Tree" in message
    assert "trusted_types" in message
    assert "trusted: true" in message


@pytest.mark.parametrize("how", ["trusted_types", "trusted"])
def test_skops_untrusted_types_load_when_allowed(
    gbc_skops: tuple[Path, GradientBoostingClassifier, list[str]], how: str
) -> None:
    folder, est, untrusted = gbc_skops
    if how == "trusted_types":
        spec = make_spec(
            "sklearn", "model.skops", labels=BINARY, runtime={"trusted_types": untrusted}
        )
    else:
        spec = make_spec("sklearn", "model.skops", labels=BINARY, trusted=True)
    save(folder, spec)
    model = foretell.load(folder)
    test = scoring_rows()
    got = outputs_as_array(model, model.predict(records(test)))
    np.testing.assert_allclose(got, est.predict_proba(test), rtol=0, atol=NATIVE_ATOL)


def test_sha256_is_checked(tmp_path: Path) -> None:
    folder, built = build_into(tmp_path, Case("sk", build_sklearn_classifier))
    digest = file_sha256(folder / "model.skops")

    save(folder, built.spec.model_copy(update={"sha256": digest}))
    assert len(foretell.load(folder).predict(records(built.x))) == len(built.x)

    save(folder, built.spec.model_copy(update={"sha256": "0" * 64}))
    with pytest.raises(ModelLoadError) as caught:
        foretell.load(folder)
    assert not isinstance(caught.value, UnsafeModelError)
    assert "sha256" in str(caught.value)
    assert "model.skops" in str(caught.value)

    # A file replaced after the spec was written is refused too.
    save(folder, built.spec.model_copy(update={"sha256": digest}))
    sio.dump(Ridge().fit(built.x, built.x[:, 0]), folder / "model.skops")
    with pytest.raises(ModelLoadError, match="sha256"):
        Model.from_folder(folder)


def test_missing_artifact_is_a_load_error_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "gone" / "1"
    save(folder, make_spec("sklearn", "missing-model.skops", labels=BINARY))
    with pytest.raises(ModelLoadError) as caught:
        foretell.load(folder)
    assert not isinstance(caught.value, UnsafeModelError | MissingExtraError)
    assert "missing-model.skops" in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_artifact_linking_outside_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.skops"
    sio.dump(LogisticRegression().fit(*training_data("classification")), outside)
    folder = tmp_path / "link" / "1"
    folder.mkdir(parents=True)
    (folder / "model.skops").symlink_to(outside)
    save(folder, make_spec("sklearn", "model.skops", labels=BINARY))
    with pytest.raises(ModelLoadError, match="leaves the folder"):
        foretell.load(folder)


# --------------------------------------------------------------------------- missing extras


@pytest.mark.parametrize(
    ("module", "extra", "case"),
    [
        pytest.param("xgboost", "xgboost", Case("x", build_xgboost_binary_json), id="xgboost"),
        pytest.param("lightgbm", "lightgbm", Case("l", build_lightgbm_binary), id="lightgbm"),
        pytest.param(
            "torch",
            "torch",
            Case("t", build_torchscript_logits),
            id="torchscript",
            marks=IGNORE_JIT_SCRIPT,
        ),
    ],
)
def test_missing_extra_names_the_install_command(
    module: str, extra: str, case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = build_into(tmp_path, case)
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    with pytest.raises(MissingExtraError) as caught:
        foretell.load(folder)
    assert f"pip install 'foretell[{extra}]'" in str(caught.value)
    assert caught.value.extra == extra


@IGNORE_JIT_SCRIPT
@IGNORE_JIT_LOAD
def test_torchscript_single_logit_is_a_sigmoid(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(1)
    net = torch.nn.Linear(4, 1).eval()
    torch.jit.script(net).save(str(tmp_path / "model.pt"))
    save(
        tmp_path, make_spec("torchscript", "model.pt", labels=BINARY, runtime={"outputs": "logits"})
    )
    test = scoring_rows()
    with torch.inference_mode():
        positive = torch.sigmoid(net(torch.from_numpy(test.astype(np.float32)))).numpy()[:, 0]
    model = foretell.load(tmp_path)
    got = outputs_as_array(model, model.predict(records(test)))
    np.testing.assert_allclose(got[:, 1], positive, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize(
    ("fmt", "artifact"),
    [
        ("sklearn", "model.skops"),
        ("xgboost", "model.json"),
        ("lightgbm", "model.txt"),
        ("onnx", "model.onnx"),
        ("python", "model.py"),
    ],
)
@IGNORE_JIT_LOAD
def test_a_corrupt_artifact_is_a_load_error(fmt: str, artifact: str, tmp_path: Path) -> None:
    (tmp_path / artifact).write_text("this is not a model (\n")
    save(tmp_path, make_spec(fmt, artifact, labels=BINARY, trusted=True, runtime={"class": "M"}))
    with pytest.raises(ModelLoadError, match=f"cannot read {fmt} artifact '{artifact}'"):
        foretell.load(tmp_path)


def test_python_model_may_use_dataclasses(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(
        textwrap.dedent(
            """
            from __future__ import annotations
            from dataclasses import dataclass
            import numpy as np

            @dataclass
            class Half:
                folder: object

                def predict(self, x: np.ndarray) -> np.ndarray:
                    return np.full(len(x), 0.5)
            """
        )
    )
    spec = make_spec("python", "model.py", labels=BINARY, trusted=True, runtime={"class": "Half"})
    model = foretell.load(save(tmp_path, spec))
    [result] = model.predict(records(scoring_rows(1)))
    assert result.outputs["probabilities"] == {"no": 0.5, "yes": 0.5}


def test_a_server_of_onnx_models_starts_without_scipy_or_scikit_learn(examples_root: Path) -> None:
    """They cost an ONNX repository a second of start-up and 70 MiB; reports and skops models
    import them when they need them."""
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import foretell.cli, foretell.serving.server, foretell.serving.grpc
        from foretell.repository.store import Repository
        model = Repository({str(examples_root)!r}).load("breast-cancer", "2")
        row = {{f.name: (f.min + f.max) / 2 for f in model.spec.inputs}}  # a valid row
        assert model.predict([row])[0].outputs["label"]
        print(sorted(m for m in ("scipy", "sklearn", "skops.io") if m in sys.modules))
        """
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert found.stdout.strip() == "[]", found.stderr
