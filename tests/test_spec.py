"""The model spec and the repository: checked specs, clear errors, discovery and versions."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

import foretell
from foretell import NotFoundError, Repository, SpecError
from foretell.repository.spec import parse_spec, read_spec, write_spec


def _spec_data(examples_root: Path) -> dict[str, object]:
    data = yaml.safe_load((examples_root / "diabetes" / "1" / "model.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _break(folder: Path, **changes: object) -> Path:
    path = folder / "model.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def test_written_spec_reads_back_equal(examples_root: Path, tmp_path: Path) -> None:
    spec = read_spec(examples_root / "card-fraud" / "1")
    write_spec(spec, tmp_path)
    assert read_spec(tmp_path) == spec


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"task": "forecasting"}, "task", "Input should be"),
        ({"format": "pmml"}, "format", "Input should be"),
        ({"artifact": "../../etc/passwd"}, "artifact", "inside the version folder"),
        ({"inputs": []}, "inputs", "at least 1 item"),
        ({"inputs": [{"name": "a", "dtype": "float", "min": 5, "max": 1}]}, "inputs.0", "min"),
        ({"inputs": [{"name": "c", "dtype": "category"}]}, "inputs.0", "categories"),
        ({"sha256": "abc"}, "sha256", "pattern"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
        (
            {"decision": {"rules": [{"when": "value >>= 3", "action": "x"}]}},
            "decision",
            "must read",
        ),
        (
            {"inputs": [{"name": "a", "nullable": True, "impute": "abc"}]},
            "inputs.0",
            "must be a number",
        ),
        ({"inputs": [{"name": "a", "impute": 1.0}]}, "inputs.0", "nullable: true"),
        ({"inputs": [{"name": "t", "dtype": "text"}]}, "(top level)", "'text_classification'"),
        (
            {
                "preprocessing": [{"step": "log1p", "features": ["sex"]}],
                "inputs": [{"name": "sex", "dtype": "category", "categories": ["f", "m"]}],
            },
            "(top level)",
            "applies to float or int features",
        ),
        ({"task": "anomaly_detection"}, "(top level)", "anomaly_threshold"),
    ],
)
def test_spec_errors_name_the_file_the_field_and_the_rule(
    examples_root: Path, changes: dict[str, object], field: str, rule: str
) -> None:
    data = {**_spec_data(examples_root), **changes}
    with pytest.raises(SpecError) as caught:
        parse_spec(data, "models/diabetes/1/model.yaml")
    message = caught.value.message
    assert message.startswith("models/diabetes/1/model.yaml: ")
    assert f"field '{field}" in message
    assert rule in message


def test_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no model spec here"):
        read_spec(tmp_path)
    (tmp_path / "model.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        read_spec(tmp_path)
    (tmp_path / "model.yaml").write_text("name: m\nlabels: [a, b\ntask: classification\n")
    with pytest.raises(SpecError) as caught:
        read_spec(tmp_path)
    assert "line 3, column 5:\n    task: classification\n        ^" in caught.value.message
    (tmp_path / "model.yaml").write_text("- a list")
    with pytest.raises(SpecError, match="must be a mapping"):
        read_spec(tmp_path)


def test_classifier_needs_labels(examples_root: Path) -> None:
    data = yaml.safe_load((examples_root / "breast-cancer" / "1" / "model.yaml").read_text())
    del data["labels"]
    with pytest.raises(SpecError, match="needs 'labels'"):
        parse_spec(data, "x.yaml")


def test_rule_on_an_output_the_model_lacks_is_refused(examples_copy: Path) -> None:
    folder = examples_copy / "diabetes" / "1"
    _break(folder, decision={"rules": [{"when": "probability[yes] > 0.5", "action": "x"}]})
    with pytest.raises(SpecError) as caught:
        foretell.load(folder)
    assert "decision.rules.0.when" in caught.value.message
    assert "probability[yes]" in caught.value.message


def test_discovery_lists_every_model_and_version(repository: Repository) -> None:
    assert repository.names() == [
        "breast-cancer",
        "card-fraud",
        "diabetes",
        "fraud-rates",
        "iris-segments",
        "item-recommender",
        "loan-approval",
        "sentiment",
    ]
    assert repository.versions("breast-cancer") == ["1", "2"]


def test_latest_version_serves_by_default_in_natural_order(examples_copy: Path) -> None:
    model = examples_copy / "diabetes"
    for version in ("2", "10"):
        shutil.copytree(model / "1", model / version)
        _break(model / version, version=version)
    repo = Repository(examples_copy)
    assert repo.versions("diabetes") == ["1", "2", "10"]
    assert repo.serving_version("diabetes") == "10"
    assert repo.load("diabetes").version == "10"


def test_pinned_version_serves(examples_copy: Path) -> None:
    (examples_copy / "breast-cancer" / "policy.yaml").write_text('serve: "1"\n')
    repo = Repository(examples_copy)
    assert repo.serving_version("breast-cancer") == "1"
    assert foretell.load(examples_copy / "breast-cancer").spec.format == "sklearn"
    assert (
        Repository(examples_copy, pins={"breast-cancer": "2"}).serving_version("breast-cancer")
        == "2"
    )


def test_pin_to_a_missing_version_is_an_error(examples_copy: Path) -> None:
    (examples_copy / "diabetes" / "policy.yaml").write_text('serve: "7"\n')
    with pytest.raises(NotFoundError, match="pinned to version '7'"):
        Repository(examples_copy).serving_version("diabetes")


def test_unknown_model_and_version(repository: Repository) -> None:
    with pytest.raises(NotFoundError, match="models: breast-cancer"):
        repository.get("nope")
    with pytest.raises(NotFoundError, match="no version '9'; versions: 1, 2"):
        repository.get("breast-cancer", "9")
    with pytest.raises(NotFoundError):
        repository.get("../breast-cancer")


def test_folder_and_spec_must_agree(examples_copy: Path) -> None:
    _break(examples_copy / "diabetes" / "1", version="3")
    with pytest.raises(SpecError, match="the folder is 'diabetes/1'"):
        Repository(examples_copy).get("diabetes", "1")


def test_check_reports_every_problem(examples_copy: Path) -> None:
    _break(examples_copy / "diabetes" / "1", task="forecasting")
    (examples_copy / "sentiment" / "1" / "model.skops").write_bytes(b"tampered")
    problems = Repository(examples_copy).check()
    assert len(problems) == 2
    assert "field 'task'" in problems[0]
    assert "sha256" in problems[1]


@pytest.mark.parametrize(
    ("model", "when", "needle"),
    [
        ("diabetes", "value >= high", "is a number; compare it with a number"),
        ("breast-cancer", "label >= 3", "is text; compare it with == or !="),
        ("card-fraud", 'is_anomaly == "True"', "is true or false"),
        ("iris-segments", 'cluster_name == "x"', "does not output"),
    ],
)
def test_rules_must_compare_like_with_like(
    examples_copy: Path, model: str, when: str, needle: str
) -> None:
    version = Repository(examples_copy).serving_version(model)
    folder = examples_copy / model / version
    data = yaml.safe_load((folder / "model.yaml").read_text())
    data["decision"] = {"rules": [{"when": when, "action": "x"}]}
    data.pop("labels", None) if model == "iris-segments" else None
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=re.escape(needle)):
        foretell.load(folder)


def test_a_failing_forward_pass_is_a_foretell_error(examples_copy: Path) -> None:
    folder = examples_copy / "iris-segments" / "1"
    data = yaml.safe_load((folder / "model.yaml").read_text())
    data["inputs"][0]["nullable"] = True  # k-means cannot take the NaN this lets through
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    model = foretell.load(folder)
    with pytest.raises(foretell.ForetellError, match="failed in its forward pass: ValueError"):
        model.predict([[None, 3.0, 1.4, 0.2]])


def test_load_resolves_relative_paths_and_checks_the_version(
    examples_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(examples_root / "diabetes" / "1")
    assert foretell.load(".").version == "1"
    with pytest.raises(NotFoundError, match="holds version '1', not '2'"):
        foretell.load(".", version="2")
