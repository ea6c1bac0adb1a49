"""The Python client against a real server: typed results equal to the in-process pipeline."""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from foretell import (
    ForetellError,
    InputFormatError,
    ModelLoadError,
    NotFoundError,
    Prediction,
    Repository,
    ValidationError,
)
from foretell.client import AsyncClient, Client, ModelInfo, PredictionResult
from foretell.examples.build import loan_applications
from foretell.examples.datasets import card_transactions, merchant_outcomes
from tests.conftest import Server, free_port

TASKS = {
    "breast-cancer": "classification",
    "card-fraud": "anomaly_detection",
    "diabetes": "regression",
    "iris-segments": "clustering",
    "item-recommender": "recommendation",
    "sentiment": "text_classification",
    "loan-approval": "classification",
    "fraud-rates": "classification",
}


def _frames() -> dict[str, pd.DataFrame]:
    """A few rows for each example model; the recommender's last user is unknown (flagged)."""
    return {
        "breast-cancer": load_breast_cancer(as_frame=True).data.iloc[:25],
        "card-fraud": card_transactions(rows=25).drop(columns="is_fraud"),
        "diabetes": load_diabetes(as_frame=True, scaled=False).data.iloc[:25],
        "iris-segments": load_iris(as_frame=True).data.iloc[::10],
        "item-recommender": pd.DataFrame(
            {
                "user": ["user-001", None, "user-002", "nobody"],
                "items": [None, ["tent", "kettle"], ["novel"], None],
            }
        ),
        "sentiment": pd.DataFrame(
            {"text": ["great, love it", "broken and awful", "fine I guess", "a waste of money"]}
        ),
        "loan-approval": loan_applications(rows=25).drop(columns="outcome"),
        "fraud-rates": merchant_outcomes(rows=25).drop(columns="outcome"),
    }


FRAMES = _frames()


def _same(got: Any, expected: Any) -> bool:
    """Equal, floats within 1e-9: concurrent requests merge into one forward pass (adaptive
    batching), and a model's last bits may differ with the batch's size."""
    if isinstance(got, float) and isinstance(expected, float):
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_same, got, expected))
    return bool(got == expected)


def _expected(prediction: Prediction) -> dict[str, Any]:
    data = prediction.to_dict()
    data["flags"] = data.get("flags", [])
    data["error"] = data.get("error")
    return {k: v for k, v in data.items() if k not in ("prediction_id", "timings_ms")}


def _got(result: PredictionResult) -> dict[str, Any]:
    return {
        "model": result.model,
        "version": result.version,
        **result.outputs,
        "decision": result.decision,
        "flags": result.flags,
        "error": result.error,
    }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def _shapes(frame: pd.DataFrame) -> dict[str, Any]:
    """The three ways to send rows: records, lists in schema order, and the DataFrame."""
    records = _records(frame)
    return {"dicts": records, "lists": [list(r.values()) for r in records], "frame": frame}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Client]:
    with Client(server.url) as opened:
        yield opened


def test_health(client: Client) -> None:
    assert client.live() is True
    assert client.ready() is True


def test_models_lists_the_examples_with_their_tasks(client: Client) -> None:
    models = client.models()
    assert {m.name: m.task for m in models} == TASKS
    assert all(isinstance(m, ModelInfo) and m.ready for m in models)
    cancer = next(m for m in models if m.name == "breast-cancer")
    assert (cancer.version, cancer.versions, cancer.format) == ("2", ["1", "2"], "onnx")
    assert (cancer.description, cancer.inputs, cancer.labels) == (None, [], None)


def test_model_has_the_input_schema(client: Client) -> None:
    cancer = client.model("breast-cancer")
    assert (cancer.name, cancer.version, cancer.task, cancer.ready) == (
        "breast-cancer",
        "2",
        "classification",
        True,
    )
    assert len(cancer.inputs) == 30 and cancer.inputs[0]["name"] == "mean radius"
    assert cancer.labels == ["malignant", "benign"]
    assert cancer.description and "breast mass" in cancer.description


@pytest.mark.parametrize("name", sorted(TASKS))
def test_predictions_equal_the_in_process_pipeline(
    client: Client, repository: Repository, name: str
) -> None:
    frame = FRAMES[name]
    expected = [_expected(p) for p in repository.load(name).predict(_records(frame))]
    for shape, rows in _shapes(frame).items():
        results = client.predict(name, rows)
        assert [_got(r) for r in results] == expected, shape
        assert len({r.prediction_id for r in results}) == len(frame)
        assert all(set(r.timings_ms) >= {"validate", "forward"} for r in results)


def test_result_properties(client: Client) -> None:
    [cancer] = client.predict("breast-cancer", FRAMES["breast-cancer"].iloc[:1])
    assert cancer.label in ("malignant", "benign") and cancer.value is None
    assert cancer.probabilities is not None
    assert set(cancer.probabilities) == {"malignant", "benign"}
    [diabetes] = client.predict("diabetes", FRAMES["diabetes"].iloc[:1])
    assert isinstance(diabetes.value, float)
    assert (diabetes.label, diabetes.probabilities) == (None, None)
    flagged = client.predict("item-recommender", [{"user": "nobody"}])[0]
    assert [(f["field"], f["rule"]) for f in flagged.flags] == [("user", "category")]
    assert flagged.outputs["items"] and flagged.error is None


def test_the_async_client_answers_the_same(server: Server, repository: Repository) -> None:
    async def run() -> tuple[bool, bool, list[ModelInfo], ModelInfo, list[list[Any]]]:
        async with AsyncClient(server.url) as client:
            calls = [client.predict(n, rows) for n in TASKS for rows in _shapes(FRAMES[n]).values()]
            return (
                await client.live(),
                await client.ready(),
                await client.models(),
                await client.model("breast-cancer"),
                list(await asyncio.gather(*calls)),
            )

    live, ready, models, cancer, answers = asyncio.run(run())
    assert live and ready
    assert {m.name: m.task for m in models} == TASKS
    assert len(cancer.inputs) == 30
    for i, name in enumerate(TASKS):
        rows = _records(FRAMES[name])
        expected = [_expected(p) for p in repository.load(name).predict(rows)]
        for results in answers[3 * i : 3 * i + 3]:
            assert _same([_got(r) for r in results], expected), name


def test_async_errors_are_mapped_too(server: Server) -> None:
    async def run() -> None:
        async with AsyncClient(server.url) as client:
            with pytest.raises(NotFoundError, match="model 'nope'"):
                await client.model("nope")
            with pytest.raises(ValidationError) as caught:
                await client.predict("sentiment", [{"text": 7}])
            assert [v.field for v in caught.value.violations] == ["text"]

    asyncio.run(run())


def test_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError, match="model 'nope' is not served") as caught:
        client.predict("nope", [{"text": "x"}])
    assert caught.value.status == 404
    with pytest.raises(NotFoundError, match="model 'nope'"):
        client.model("nope")


def test_invalid_rows_raise_validation_errors_with_the_violations(client: Client) -> None:
    rows: list[dict[str, Any]] = [{"text": "fine"}, {"text": None}, {"text": 7}]
    with pytest.raises(ValidationError, match="feature 'text' is required") as caught:
        client.predict("sentiment", rows)
    assert [(v.row, v.field, v.rule) for v in caught.value.violations] == [
        (1, "text", "required"),
        (2, "text", "type"),
    ]
    assert "feature 'text' must be text; got 7" in caught.value.violations[1].message


def test_malformed_rows_raise_input_format_errors(client: Client) -> None:
    with pytest.raises(InputFormatError, match="row 0 must have 10 values") as caught:
        client.predict("diabetes", [[1, 2]])
    assert not isinstance(caught.value, ValidationError)
    unsendable: list[dict[str, Any]] = [{"text": object()}]
    with pytest.raises(InputFormatError, match="cannot be sent as JSON"):
        client.predict("sentiment", unsendable)


def test_an_unreachable_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=5.0) as client, pytest.raises(ForetellError) as caught:
        client.models()
    assert url in str(caught.value) and "unreachable" in str(caught.value)

    async def run() -> None:
        async with AsyncClient(url, timeout=5.0) as client:
            await client.live()

    with pytest.raises(ForetellError, match="unreachable") as caught:
        asyncio.run(run())
    assert url in str(caught.value)


def test_a_model_that_failed_to_load_is_a_model_load_error(
    examples_root: Path, tmp_path: Path
) -> None:
    for name in ("diabetes", "sentiment"):
        shutil.copytree(examples_root / name, tmp_path / "models" / name)
    (tmp_path / "models" / "diabetes" / "1" / "model.onnx").write_bytes(b"tampered")
    broken = Server(["--repository", str(tmp_path / "models")], cwd=tmp_path)
    try:
        with Client(broken.url) as client:
            assert client.live() is True and client.ready() is False
            diabetes = next(m for m in client.models() if m.name == "diabetes")
            assert (diabetes.ready, diabetes.task) == (False, None)
            with pytest.raises(ModelLoadError, match="not ready") as caught:
                client.predict("diabetes", [[1] * 10])
            assert caught.value.status == 503
            assert client.predict("sentiment", [{"text": "ok"}])[0].label is not None
    finally:
        broken.stop()
