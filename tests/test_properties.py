"""Property tests: spec parsing, input validation and body decoding never fail but as foretell
errors that say what was wrong, whatever they are given."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from foretell.errors import ForetellError, SpecError, UserError
from foretell.pipeline.rows import to_columns
from foretell.pipeline.validate import Validator
from foretell.repository import Repository
from foretell.repository.spec import Feature, ModelSpec, parse_spec, read_spec, write_spec
from foretell.serving.dataplane import DataPlane
from foretell.serving.rest_v2 import parse_infer

#: Enough cases to find the usual mistakes, few enough that the file runs in seconds.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
)
#: Any JSON value: what a caller can put in a body.
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
#: Printable text: PyYAML writes a NEL (U+0085) that it then reads back as a line break.
PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs"))
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@st.composite
def features(draw: st.DrawFn) -> Feature:
    name = draw(NAMES)
    dtype = draw(st.sampled_from(["float", "int", "bool", "category"]))
    nullable = draw(st.booleans())
    if dtype == "category":
        words = st.text(PRINTABLE, min_size=1, max_size=6)
        categories = draw(st.lists(words, min_size=1, max_size=4, unique=True))
        return Feature(name=name, dtype=dtype, categories=categories, nullable=nullable)
    bounds = sorted(draw(st.lists(FINITE, min_size=2, max_size=2)))
    low, high = (math.floor(bounds[0]), math.ceil(bounds[1])) if dtype == "int" else bounds
    use_low, use_high = draw(st.booleans()), draw(st.booleans())
    if dtype == "bool":
        use_low = use_high = False
    return Feature(
        name=name,
        dtype=dtype,
        min=low if use_low else None,
        max=high if use_high else None,
        nullable=nullable,
    )


@st.composite
def specs(draw: st.DrawFn) -> ModelSpec:
    inputs = draw(st.lists(features(), min_size=1, max_size=5, unique_by=lambda f: f.name))
    task = draw(st.sampled_from(["classification", "regression"]))
    labels = (
        draw(st.lists(NAMES, min_size=2, max_size=4, unique=True)) if task != "regression" else None
    )
    return ModelSpec(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True)),
        version=draw(st.from_regex(r"[0-9]{1,3}", fullmatch=True)),
        task=task,
        format="onnx",
        artifact="model.onnx",
        inputs=inputs,
        labels=labels,
        description=draw(st.text(PRINTABLE, max_size=20)),
    )


def _as_data(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "version": spec.version,
        **spec.model_dump(mode="json", exclude_defaults=True),
    }


# --------------------------------------------------------------------------- specs


@FAST
@given(data=JSON_VALUES)
def test_any_value_parses_as_a_spec_or_raises_a_spec_error(data: Any) -> None:
    try:
        parse_spec(data, "model.yaml")
    except SpecError as exc:
        assert exc.message.startswith("model.yaml: ")


@FAST
@given(
    spec=specs(),
    key=st.sampled_from(
        [
            "name",
            "version",
            "task",
            "format",
            "artifact",
            "inputs",
            "labels",
            "decision",
            "sha256",
            "trusted",
            "postprocessing",
        ]
    ),
    value=JSON_VALUES,
)
def test_a_spec_with_one_field_spoilt_parses_or_names_what_is_wrong(
    spec: ModelSpec, key: str, value: Any
) -> None:
    data = _as_data(spec)
    data[key] = value
    try:
        parse_spec(data, "model.yaml")
    except SpecError as exc:
        assert "field '" in exc.message or "must be a mapping" in exc.message


@FAST
@given(spec=specs())
def test_valid_specs_survive_a_round_trip_through_model_yaml(spec: ModelSpec) -> None:
    assert parse_spec(_as_data(spec), "model.yaml") == spec
    with tempfile.TemporaryDirectory() as folder:
        write_spec(spec, Path(folder))
        assert read_spec(Path(folder)) == spec


# --------------------------------------------------------------------------- validation


@st.composite
def spec_and_rows(draw: st.DrawFn) -> tuple[ModelSpec, list[Any]]:
    spec = draw(specs())
    names = spec.feature_names
    keys = st.sampled_from([*names, "other"])
    record = st.dictionaries(keys, JSON_VALUES, max_size=len(names) + 1)
    listed = st.lists(JSON_VALUES, min_size=len(names), max_size=len(names))
    rows = draw(
        st.lists(record, max_size=5)
        | st.lists(listed, max_size=5)
        | st.lists(JSON_VALUES, max_size=3)
    )
    return spec, rows


@FAST
@given(case=spec_and_rows())
def test_validation_raises_only_foretell_errors_and_names_real_features(
    case: tuple[ModelSpec, list[Any]],
) -> None:
    spec, rows = case
    try:
        checked = Validator(spec).check(to_columns(rows, spec.feature_names))
    except UserError:
        return
    for row, found in checked.violations.items():
        assert 0 <= row < len(rows)
        for violation in found:
            assert violation.row == row
            assert violation.field in spec.feature_names
            assert violation.field in violation.message


def _valid_value(draw: st.DrawFn, f: Feature) -> Any:
    if f.nullable and draw(st.booleans()):
        return None
    if f.dtype == "category":
        return draw(st.sampled_from(f.categories or []))
    if f.dtype == "bool":
        return draw(st.booleans())
    low = -1e6 if f.min is None else f.min
    high = 1e6 if f.max is None else f.max
    if f.dtype == "int":
        return draw(st.integers(min_value=math.ceil(low), max_value=math.floor(high)))
    return draw(st.floats(min_value=low, max_value=high, allow_nan=False))


@st.composite
def spec_and_valid_rows(draw: st.DrawFn) -> tuple[ModelSpec, list[dict[str, Any]]]:
    spec = draw(specs())
    count = draw(st.integers(min_value=1, max_value=5))
    rows = [{f.name: _valid_value(draw, f) for f in spec.inputs} for _ in range(count)]
    return spec, rows


@FAST
@given(case=spec_and_valid_rows())
def test_rows_within_the_schema_pass(case: tuple[ModelSpec, list[dict[str, Any]]]) -> None:
    spec, rows = case
    checked = Validator(spec).check(to_columns(rows, spec.feature_names))
    assert checked.violations == {}


# --------------------------------------------------------------------------- request bodies


@pytest.fixture(scope="module")
def plane(repository: Repository) -> DataPlane:
    served = DataPlane(repository)
    served.load_all()
    return served


@FAST
@given(body=JSON_VALUES)
def test_any_v2_json_body_is_a_request_or_a_4xx(body: Any) -> None:
    try:
        raw = orjson.dumps(body)
    except orjson.JSONEncodeError:
        assume(False)
    try:
        parse_infer(raw, None, "breast-cancer", None)
    except ForetellError as exc:
        assert 400 <= exc.status < 500


@FAST
@given(
    body=st.binary(max_size=200),
    header=st.none() | st.integers(-1, 300).map(str) | st.text(max_size=4),
)
def test_any_v2_bytes_are_a_request_or_a_4xx(body: bytes, header: str | None) -> None:
    try:
        parse_infer(body, header, "breast-cancer", None)
    except ForetellError as exc:
        assert 400 <= exc.status < 500


@settings(
    FAST,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    model=st.sampled_from(
        [
            "breast-cancer",
            "diabetes",
            "sentiment",
            "loan-approval",
            "item-recommender",
            "iris-segments",
            "card-fraud",
        ]
    ),
    instances=st.lists(JSON_VALUES, max_size=4)
    | st.lists(
        st.dictionaries(
            st.sampled_from(["text", "age", "bmi", "income", "amount", "user", "history", "x"]),
            JSON_VALUES,
            max_size=4,
        ),
        max_size=4,
    ),
)
def test_any_v1_instances_are_predicted_or_a_4xx(
    plane: DataPlane, model: str, instances: list[Any]
) -> None:
    try:
        plane.predict(model, instances)
    except ForetellError as exc:
        assert 400 <= exc.status < 500, exc.message
