"""The command line, run in-process and once as a real process: output, files, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from typer.testing import CliRunner

from foretell.cli import app

runner = CliRunner()


def _rows(tmp_path: Path) -> pd.DataFrame:
    return load_diabetes(as_frame=True, scaled=False).data.iloc[:25]


def test_examples_build_then_models_lists_them(tmp_path: Path) -> None:
    result = runner.invoke(app, ["examples", "build", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(app, ["models", "--repository", str(tmp_path / "x")])
    assert listing.exit_code == 0
    for name in (
        "breast-cancer",
        "diabetes",
        "iris-segments",
        "card-fraud",
        "item-recommender",
        "sentiment",
        "loan-approval",
    ):
        assert name in listing.output
    assert "classification" in listing.output and "onnx" in listing.output


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_predict_reads_every_input_format(examples_root: Path, tmp_path: Path, suffix: str) -> None:
    rows = _rows(tmp_path)
    source = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        rows.to_csv(source, index=False)
    elif suffix == ".json":
        source.write_text(json.dumps(rows.to_dict("records")))
    elif suffix == ".jsonl":
        rows.to_json(source, orient="records", lines=True)
    else:
        rows.to_parquet(source)
    result = runner.invoke(
        app, ["predict", "diabetes", "-r", str(examples_root), "--input", str(source)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 25
    assert all(line["model"] == "diabetes" and "value" in line for line in lines)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_predict_writes_every_output_format(
    examples_root: Path, tmp_path: Path, suffix: str
) -> None:
    source = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["Broke in a week.", "Lovely staff."]}).to_csv(source, index=False)
    target = tmp_path / f"out{suffix}"
    result = runner.invoke(
        app,
        ["predict", "sentiment", "-r", str(examples_root), "-i", str(source), "-o", str(target)],
    )
    assert result.exit_code == 0, result.output
    if suffix == ".jsonl":
        written = pd.read_json(target, lines=True)
    elif suffix == ".csv":
        written = pd.read_csv(target)
    else:
        written = pd.read_parquet(target)
    assert len(written) == 2
    assert list(written["label"]) == ["negative", "positive"]
    if suffix != ".jsonl":
        assert "probabilities.positive" in written.columns


def test_predict_from_stdin(examples_root: Path) -> None:
    result = runner.invoke(
        app,
        ["predict", "sentiment", "-r", str(examples_root), "-i", "-"],
        input='[{"text": "great kettle, love it"}]',
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "sentiment"


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["predict", "nope", "-i", "x.csv"], "model 'nope' is not in the repository", 3),
        (["predict", "diabetes", "-i", "missing.csv"], "input file 'missing.csv' does not", 3),
        (["predict", "diabetes", "-i", "bad.json"], "is not valid JSON", 2),
        (["predict", "diabetes", "-i", "bad.parquet"], "is not a readable PARQUET", 2),
        (["predict", "diabetes", "-i", "rows.json", "-o", "out.xlsx"], "must end in", 2),
        (["predict", "diabetes", "-i", "wrong.json"], "feature 'age' must be a number", 2),
        (["predict", "diabetes", "-i", "rows.json", "--version", "9"], "no version '9'", 3),
    ],
)
def test_user_errors_are_one_line_and_exit_non_zero(
    examples_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    needle: str,
    code: int,
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text("[{not json")
    Path("bad.parquet").write_bytes(b"PAR1 garbage")
    Path("rows.json").write_text(json.dumps(_rows(tmp_path).to_dict("records")[:2]))
    Path("wrong.json").write_text(json.dumps([{**_rows(tmp_path).iloc[0].to_dict(), "age": "x"}]))
    result = runner.invoke(app, [*args, "-r", str(examples_root)])
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("Error: ")
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert not Path("out.xlsx").exists()


def test_validate_repository(examples_copy: Path) -> None:
    ok = runner.invoke(app, ["validate-repository", str(examples_copy)])
    assert ok.exit_code == 0 and "ok: 8 models, 9 versions" in ok.stderr
    spec = examples_copy / "iris-segments" / "1" / "model.yaml"
    spec.write_text(spec.read_text().replace("task: clustering", "task: segmentation"))
    broken = runner.invoke(app, ["validate-repository", str(examples_copy)])
    assert broken.exit_code == 1
    assert f"{spec}: field 'task'" in " ".join(broken.stderr.split())
    assert "Error: 1 problem(s)" in broken.stderr


def test_help_has_examples() -> None:
    for command in (
        ["predict"],
        ["models"],
        ["serve"],
        ["examples", "build"],
        ["validate-repository"],
    ):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output


def test_a_real_process_exits_non_zero_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "foretell", "models", "--repository", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert done.stderr.strip() == f"Error: model repository '{tmp_path / 'none'}' is not a folder"


@pytest.mark.parametrize("numpy_first", [True, False], ids=["numpy-loaded", "numpy-later"])
@pytest.mark.parametrize(("given", "expected"), [(None, 1), ("2", 2)])
def test_commands_run_one_math_thread_unless_the_user_says_otherwise(
    given: str | None, expected: int, numpy_first: bool
) -> None:
    # numpy may have loaded its BLAS, with a thread per core, before the command runs
    script = (
        f"import os{'; import numpy' if numpy_first else ''}; "
        "from foretell.cli import _one_math_thread; _one_math_thread(); import numpy; "
        "from threadpoolctl import threadpool_info; "
        "print(os.environ['OMP_NUM_THREADS'], {i['num_threads'] for i in threadpool_info()})"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if given is not None:
        env["OMP_NUM_THREADS"] = given
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split(maxsplit=1) == [str(expected), f"{{{expected}}}\n"]


def test_serve_imports_scipy_special_first_only_for_skops_files(tmp_path: Path) -> None:
    (tmp_path / "onnx" / "m" / "1").mkdir(parents=True)
    (tmp_path / "onnx" / "m" / "1" / "model.onnx").touch()
    (tmp_path / "skops" / "m" / "1").mkdir(parents=True)
    (tmp_path / "skops" / "m" / "1" / "model.skops").touch()
    for folder, expected in (("onnx", "False"), ("skops", "True"), ("not-built", "True")):
        script = (
            "import sys; from pathlib import Path; from foretell.cli import _scipy_special_first; "
            f"_scipy_special_first(Path({str(tmp_path / folder)!r})); "
            "print('scipy.special' in sys.modules)"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == expected, folder
