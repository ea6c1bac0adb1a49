"""The inference pipeline: validation, the input forms, reject or flag, and batch = single."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_breast_cancer

import foretell
from foretell import Repository, ValidationError
from foretell.pipeline.model import new_ids

FRAUD_ROW: dict[str, Any] = {
    "amount": 25.0,
    "hour": 13,
    "merchant_category": "grocery",
    "foreign": False,
    "card_age_days": 800,
    "transactions_last_24h": 2,
    "distance_from_home_km": 3.0,
}


def _comparable(result: foretell.Prediction) -> dict[str, Any]:
    data = result.to_dict()
    for key in ("prediction_id", "timings_ms"):
        del data[key]
    return data


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).data


def test_result_carries_id_model_version_outputs_decision_and_timings(
    repository: Repository, cancer: pd.DataFrame
) -> None:
    [result] = repository.load("breast-cancer").predict(cancer.iloc[:1])
    assert uuid.UUID(result.prediction_id).version == 7
    assert (result.model, result.version) == ("breast-cancer", "2")
    assert set(result.outputs) == {"label", "probabilities"}
    assert result.decision in {"refer", "review", "routine"}
    assert set(result.timings_ms) == {"validate", "preprocess", "forward", "postprocess", "decide"}


def test_prediction_ids_are_unique_version_7_uuids_in_time_order() -> None:
    before = time.time_ns() // 1_000_000
    first = new_ids(1000)
    time.sleep(0.002)
    later = new_ids(3)
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in first + later]
    assert [str(u) for u in parsed] == first + later  # canonical lower-case text
    assert {(u.version, u.variant) for u in parsed} == {(7, uuid.RFC_4122)}
    assert len(set(first + later)) == len(first) + len(later)
    stamps = [u.int >> 80 for u in parsed]  # the first 48 bits: Unix time in milliseconds
    assert before <= min(stamps) and max(stamps) <= after
    assert max(first) < min(later)  # a later batch sorts after an earlier one


def test_every_input_form_gives_the_same_results(
    repository: Repository, cancer: pd.DataFrame
) -> None:
    model = repository.load("breast-cancer")
    rows = cancer.iloc[:20]
    forms: list[Any] = [rows, rows.to_dict("records"), rows.to_numpy(), rows.to_numpy().tolist()]
    results = [[_comparable(r) for r in model.predict(form)] for form in forms]
    assert all(r == results[0] for r in results[1:])


def test_a_batch_and_single_rows_give_identical_results(
    repository: Repository, cancer: pd.DataFrame
) -> None:
    model = repository.load("breast-cancer")
    records = cancer.to_dict("records")
    rows = [records[i % len(records)] for i in range(100_000)]
    batch = model.predict(rows)
    assert len(batch) == 100_000
    # each distinct row scored alone once: the batch repeats them, and its every row is checked
    singles = [_comparable(model.predict([record])[0]) for record in records]
    for i, from_batch in enumerate(batch):
        assert _comparable(from_batch) == singles[i % len(records)]


@pytest.mark.parametrize(
    ("model", "rows"),
    [
        (
            "diabetes",
            [
                {
                    "age": 50,
                    "sex": 1,
                    "bmi": 30.1,
                    "bp": 100,
                    "s1": 180,
                    "s2": 100,
                    "s3": 40,
                    "s4": 4,
                    "s5": 4.8,
                    "s6": 90,
                }
            ],
        ),
        ("card-fraud", [FRAUD_ROW, {**FRAUD_ROW, "amount": 4000.0, "hour": 3}]),
        ("sentiment", [{"text": "Broke in a week."}, {"text": "Lovely staff, great room."}]),
        ("item-recommender", [{"user": "user-001"}, {"items": ["tent", "kettle"]}]),
        (
            "iris-segments",
            [
                {
                    "sepal length (cm)": 5.0,
                    "sepal width (cm)": 3.0,
                    "petal length (cm)": 1.5,
                    "petal width (cm)": 0.2,
                }
            ],
        ),
    ],
)
def test_batch_equals_single_for_every_example(
    repository: Repository, model: str, rows: list[dict[str, Any]]
) -> None:
    loaded = repository.load(model)
    batch = loaded.predict(rows * 500)
    singles = [_comparable(loaded.predict([r])[0]) for r in rows]  # each distinct row alone
    assert [_comparable(r) for r in batch] == singles * 500


def test_violations_name_the_field_the_rule_and_what_was_received(repository: Repository) -> None:
    model = repository.load("card-fraud")
    rows = [
        {**FRAUD_ROW, "amount": "abc"},
        {**FRAUD_ROW, "hour": 25, "merchant_category": "casino"},
        {key: value for key, value in FRAUD_ROW.items() if key != "foreign"},
        {**FRAUD_ROW, "card_age_days": 1.5, "distance_from_home_km": float("inf")},
        FRAUD_ROW,
    ]
    with pytest.raises(ValidationError) as caught:
        model.predict(rows)
    found = {(v.row, v.field, v.rule) for v in caught.value.violations}
    assert found == {
        (0, "amount", "type"),
        (1, "hour", "range"),
        (1, "merchant_category", "category"),
        (2, "foreign", "required"),
        (3, "card_age_days", "type"),
        (3, "distance_from_home_km", "finite"),
    }
    message = caught.value.message
    assert "feature 'amount' must be a number in [0, 1e+06]; got \"abc\"" in message
    assert "feature 'hour' must be an integer in [0, 23]; got 25" in message
    assert "feature 'merchant_category' must be one of" in message
    assert "feature 'foreign' is required" in message


def test_text_and_list_rules(repository: Repository) -> None:
    with pytest.raises(ValidationError, match="feature 'text' must be text; got 42"):
        repository.load("sentiment").predict([{"text": 42}])
    with pytest.raises(ValidationError, match="at most 5000 characters; got 5001"):
        repository.load("sentiment").predict([{"text": "x" * 5001}])
    results = repository.load("item-recommender").predict([{"items": "tent"}])
    assert "must be a list of item ids" in (results[0].error or "")


def test_flagging_model_predicts_soft_violations_and_reports_hard_ones(
    examples_copy: Path,
) -> None:
    folder = examples_copy / "card-fraud" / "1"
    data = yaml.safe_load((folder / "model.yaml").read_text())
    data["on_invalid"] = "flag"
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    model = foretell.load(folder)
    results = model.predict([FRAUD_ROW, {**FRAUD_ROW, "hour": 30}, {**FRAUD_ROW, "amount": None}])
    ok, soft, hard = results
    assert ok.flags == [] and ok.error is None and ok.decision is not None
    assert [v.rule for v in soft.flags] == ["range"] and soft.decision is not None
    assert "score" in soft.outputs
    assert hard.outputs == {} and hard.decision is None
    assert hard.error == "feature 'amount' is required"


def test_nullable_feature_is_imputed(examples_copy: Path) -> None:
    folder = examples_copy / "card-fraud" / "1"
    data = yaml.safe_load((folder / "model.yaml").read_text())
    data["inputs"][3].update({"nullable": True, "impute": 0})
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    model = foretell.load(folder)
    imputed, explicit = model.predict([{**FRAUD_ROW, "foreign": None}, FRAUD_ROW])
    assert imputed.outputs == explicit.outputs


def test_malformed_rows_are_input_format_errors(repository: Repository) -> None:
    model = repository.load("diabetes")
    for rows, needle in [
        ("not rows", "rows must be a list"),
        ([[1, 2]], "row 0 must have 10 values"),
        ([{"age": 1}, [1] * 10], "rows mix records and lists"),
        (np.zeros((2, 3)), "shape (rows, 10)"),
        ([None], "row 0 must be a record"),
    ]:
        with pytest.raises(foretell.InputFormatError, match=re.escape(needle)):
            model.predict(rows)  # type: ignore[arg-type]


def test_decisions_follow_the_rules_in_order(repository: Repository, cancer: pd.DataFrame) -> None:
    results = repository.load("breast-cancer").predict(cancer)
    for r in results:
        p = r.outputs["probabilities"]["malignant"]
        expected = "refer" if p >= 0.9 else "review" if p >= 0.3 else "routine"
        assert r.decision == expected
    assert {r.decision for r in results} >= {"refer", "routine"}


def test_postprocessing_per_task(repository: Repository) -> None:
    [fraud_ok, fraud_bad] = repository.load("card-fraud").predict(
        [
            FRAUD_ROW,
            {
                **FRAUD_ROW,
                "amount": 9000.0,
                "hour": 2,
                "foreign": True,
                "merchant_category": "jewellery",
                "card_age_days": 2,
                "transactions_last_24h": 15,
                "distance_from_home_km": 3000.0,
            },
        ]
    )
    assert fraud_ok.decision == "approve" and fraud_ok.outputs["is_anomaly"] is False
    assert fraud_bad.decision == "block" and fraud_bad.outputs["is_anomaly"] is True
    assert fraud_bad.outputs["score"] > fraud_ok.outputs["score"]

    [segment] = repository.load("iris-segments").predict([[5.0, 3.4, 1.5, 0.2]])
    assert segment.outputs["cluster_name"] == "setosa-like"
    assert segment.outputs["distance"] >= 0

    recommender = repository.load("item-recommender")
    [basket] = recommender.predict([{"items": ["tent", "sleeping-bag"]}])
    recommended = [i["item"] for i in basket.outputs["items"]]
    assert len(recommended) == 5 and not {"tent", "sleeping-bag"} & set(recommended)
    assert recommended[0] in {"hiking-boots", "headlamp", "trekking-poles", "camp-stove"}
    history = foretell.load(Path(recommender.folder)).preprocessor.histories["history.json"][
        "user-001"
    ]
    [user] = recommender.predict([{"user": "user-001"}])
    assert not set(history) & {i["item"] for i in user.outputs["items"]}

    [negative, positive] = repository.load("sentiment").predict(
        [
            {"text": "Terrible, it broke and support never answered."},
            {"text": "Wonderful, I love it, great quality."},
        ]
    )
    assert (negative.outputs["label"], positive.outputs["label"]) == ("negative", "positive")


def test_empty_batch(repository: Repository) -> None:
    assert repository.load("breast-cancer").predict([]) == []
