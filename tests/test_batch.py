"""Batch jobs: every row scored once into files and tables, resumable after kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from foretell import Repository
from foretell.cli import app
from foretell.destinations import open_destination
from foretell.examples import datasets
from foretell.jobs.batch import run_batch
from foretell.jobs.store import JobStore
from foretell.sources import open_source

runner = CliRunner()


@pytest.fixture(scope="module")
def cancer_rows() -> pd.DataFrame:
    frame = pd.concat([load_breast_cancer(as_frame=True).data] * 9, ignore_index=True)
    frame.insert(0, "id", [f"c{i:05d}" for i in range(len(frame))])
    frame.loc[7, "mean radius"] = -1.0  # one invalid row
    return frame


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize(
    ("source_suffix", "destination_name"),
    [
        (".parquet", "out.parquet"),
        (".csv", "out.csv"),
        (".jsonl", "out.jsonl"),
        (".parquet", "out.db"),
    ],
)
def test_every_row_is_scored_once_and_equals_the_pipeline(
    repository: Repository,
    cancer_rows: pd.DataFrame,
    tmp_path: Path,
    source_suffix: str,
    destination_name: str,
) -> None:
    source = _write(cancer_rows, tmp_path / f"rows{source_suffix}")
    destination = (
        f"sqlite:///{tmp_path / destination_name}?table=scores"
        if destination_name.endswith(".db")
        else str(tmp_path / destination_name)
    )
    store = JobStore(tmp_path / "jobs.db")
    job = run_batch(
        repository,
        store,
        model="breast-cancer",
        source=str(source),
        destination=destination,
        key="id",
        chunk_rows=1000,
    )
    assert (job.status, job.rows_in, job.rows_scored, job.rows_rejected) == (
        "done",
        len(cancer_rows),
        len(cancer_rows) - 1,
        1,
    )
    stored = open_destination(destination).read(job.job_id)
    assert len(stored) == len(cancer_rows) - 1
    assert stored["row_key"].is_unique
    expected = repository.load("breast-cancer").predict(cancer_rows.drop(index=7).iloc[:50])
    by_key = stored.set_index("row_key")
    for key, prediction in zip(cancer_rows.drop(index=7)["id"][:50], expected, strict=True):
        row = by_key.loc[key]
        assert row["label"] == prediction.outputs["label"]
        assert row["decision"] == prediction.decision
        assert row["probability_malignant"] == pytest.approx(
            prediction.outputs["probabilities"]["malignant"], abs=1e-12
        )
    errors = open_destination(job.errors).read(job.job_id)
    assert list(errors["row_key"]) == ["c00007"]
    assert "feature 'mean radius' must be a number" in errors["error"][0]
    assert json.loads(errors["input"][0])["mean radius"] == -1.0


def test_parquet_folder_source_and_exact_chunks(tmp_path: Path, cancer_rows: pd.DataFrame) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, start in enumerate(range(0, len(cancer_rows), 700)):
        cancer_rows.iloc[start : start + 700].to_parquet(folder / f"p{i:03d}.parquet")
    source = open_source(str(folder))
    assert source.count() == len(cancer_rows)
    sizes = [len(c) for c in source.chunks(1000)]
    assert sizes[:-1] == [1000] * (len(sizes) - 1) and sum(sizes) == len(cancer_rows)
    first = next(iter(source.chunks(1000)))
    assert first["id"].tolist() == cancer_rows["id"][:1000].tolist()


def test_writing_a_chunk_twice_stores_it_once(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "job_id": "j",
            "row_key": ["a", "b"],
            "prediction_id": ["1", "2"],
            "model": "m",
            "model_version": "1",
            "value": [1.0, 2.0],
            "decision": "none",
        }
    )
    for uri in (str(tmp_path / "o.parquet"), f"sqlite:///{tmp_path / 'o.db'}?table=t"):
        destination = open_destination(uri)
        destination.write("j", 0, frame)
        destination.write("j", 0, frame)
        destination.finish("j")
        assert sorted(destination.read("j")["row_key"]) == ["a", "b"]


def test_kind_of_every_example_goes_through_batch(repository: Repository, tmp_path: Path) -> None:
    frame = datasets.card_transactions(rows=3000, seed=4).drop(columns=["is_fraud"])
    source = _write(frame, tmp_path / "tx.parquet")
    job = run_batch(
        repository,
        JobStore(tmp_path / "j.db"),
        model="card-fraud",
        source=str(source),
        destination=str(tmp_path / "fraud.parquet"),
        chunk_rows=512,
        workers=2,
    )
    stored = open_destination(str(tmp_path / "fraud.parquet")).read(job.job_id)
    assert sorted(stored["row_key"].astype(int)) == list(range(3000))
    assert set(stored["decision"]) <= {"approve", "review", "block"}
    recommender = pd.DataFrame({"user": ["user-001", "user-002"], "items": [["tent"], []]})
    job = run_batch(
        repository,
        JobStore(tmp_path / "j.db"),
        model="item-recommender",
        source=str(_write(recommender, tmp_path / "u.parquet")),
        destination=str(tmp_path / "recs.parquet"),
    )
    recs = open_destination(str(tmp_path / "recs.parquet")).read(job.job_id)
    assert [len(items) for items in recs["items"]] == [5, 5]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--source", "missing.parquet"], "source 'missing.parquet' does not exist"),
        (["--source", "broken.parquet"], "is not a readable Parquet file"),
        (["--source", "rows.parquet", "--key", "nope"], "has no key column 'nope'"),
        (["--source", "ftp://host/rows.csv"], "unknown scheme 'ftp://'"),
        (["--source", "rows.txt"], "must be a .csv, .jsonl or .parquet"),
        (["--source", "narrow.csv"], "lacks the model's inputs"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    examples_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cancer_rows: pd.DataFrame,
    args: list[str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    cancer_rows.iloc[:10].to_parquet("rows.parquet")
    Path("broken.parquet").write_bytes(b"PAR1 not really")
    Path("rows.txt").write_text("x")
    pd.DataFrame({"a": [1]}).to_csv("narrow.csv", index=False)
    result = runner.invoke(
        app,
        [
            "batch",
            "breast-cancer",
            "-r",
            str(examples_root),
            *args,
            "--destination",
            "out.parquet",
            "--store",
            "jobs.db",
        ],
    )
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: ") and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not Path("out.parquet").exists()


def test_on_error_fail_stops_the_job(
    examples_root: Path, tmp_path: Path, cancer_rows: pd.DataFrame
) -> None:
    source = _write(cancer_rows, tmp_path / "rows.parquet")
    result = runner.invoke(
        app,
        [
            "batch",
            "breast-cancer",
            "-r",
            str(examples_root),
            "--source",
            str(source),
            "--destination",
            str(tmp_path / "out.parquet"),
            "--on-error",
            "fail",
            "--key",
            "id",
            "--store",
            str(tmp_path / "jobs.db"),
            "--job-id",
            "strict",
        ],
    )
    assert result.exit_code == 2
    assert "row c00007 is invalid" in result.stderr
    assert JobStore(tmp_path / "jobs.db").get("strict").status == "failed"


def test_progress_prints_plain_lines_when_not_a_terminal(
    examples_root: Path, tmp_path: Path, cancer_rows: pd.DataFrame
) -> None:
    source = _write(cancer_rows, tmp_path / "rows.csv")
    result = runner.invoke(
        app,
        [
            "batch",
            "breast-cancer",
            "-r",
            str(examples_root),
            "--source",
            str(source),
            "--destination",
            str(tmp_path / "out.jsonl"),
            "--store",
            str(tmp_path / "jobs.db"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.stderr and "done: 5,121 rows, 5,120 scored" in result.stderr


def _chunks_done(store: Path, job_id: str) -> int:
    if not store.exists():
        return 0
    with closing(sqlite3.connect(store)) as db:
        try:
            row = db.execute("SELECT COUNT(*) FROM job_chunks WHERE job_id = ?", (job_id,))
            return int(row.fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def kill_and_resume(examples_root: Path, tmp_path: Path, destination: str) -> None:
    """Starts a real job, kills it with SIGKILL mid-way, resumes it, checks exactly-once."""
    frame = datasets.card_transactions(rows=60_000, seed=9).drop(columns=["is_fraud"])
    frame.insert(0, "tx", [f"t{i}" for i in range(len(frame))])
    source = _write(frame, tmp_path / "tx.parquet")
    store = tmp_path / "jobs.db"
    command = [
        sys.executable,
        "-m",
        "foretell",
        "batch",
        "card-fraud",
        "-r",
        str(examples_root),
        "--source",
        str(source),
        "--destination",
        destination,
        "--key",
        "tx",
        "--chunk-rows",
        "2000",
        "--store",
        str(store),
        "--job-id",
        "crash",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while _chunks_done(store, "crash") < 3 and time.monotonic() < deadline:
        assert process.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = _chunks_done(store, "crash")
    assert 3 <= done_before < 30, "the kill did not land mid-job"
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "foretell",
            "batch",
            "--resume",
            "crash",
            "-r",
            str(examples_root),
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    stored = open_destination(destination).read("crash")
    assert len(stored) == len(frame)
    assert stored["row_key"].is_unique
    assert set(stored["row_key"]) == set(frame["tx"])
    job = JobStore(store).get("crash")
    assert (job.status, job.rows_in, job.rows_scored) == ("done", 60_000, 60_000)


def test_kill_9_then_resume_parquet(examples_root: Path, tmp_path: Path) -> None:
    kill_and_resume(examples_root, tmp_path, str(tmp_path / "scored.parquet"))


def test_kill_9_then_resume_postgresql(examples_root: Path, tmp_path: Path) -> None:
    table = f"crash_{os.getpid()}_{int(time.time())}"
    uri = f"postgresql://postgres@127.0.0.1:5432/test?table={table}"
    try:
        kill_and_resume(examples_root, tmp_path, uri)
    finally:
        import sqlalchemy

        engine = sqlalchemy.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
        with engine.begin() as db:
            db.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{table}"'))
            db.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{table}_errors"'))
        engine.dispose()


def test_feedback_column_and_logged_predictions_feed_monitoring(
    examples_root: Path, tmp_path: Path, cancer_rows: pd.DataFrame
) -> None:
    data = load_breast_cancer()
    frame = cancer_rows.drop(index=7).iloc[:400].copy()
    frame["diagnosis"] = [str(data.target_names[t]) for t in np.tile(data.target, 9)[:400]]
    source = _write(frame, tmp_path / "labelled.parquet")
    db = f"sqlite:///{tmp_path / 'monitoring.db'}"
    result = runner.invoke(
        app,
        [
            "batch",
            "breast-cancer",
            "-r",
            str(examples_root),
            "--source",
            str(source),
            "--destination",
            str(tmp_path / "scored.parquet"),
            "--key",
            "id",
            "--feedback-column",
            "diagnosis",
            "--log-predictions",
            "--monitoring-db",
            db,
            "--store",
            str(tmp_path / "jobs.db"),
            "--job-id",
            "labelled",
        ],
    )
    assert result.exit_code == 0, result.output
    stored = open_destination(str(tmp_path / "scored.parquet")).read("labelled")
    assert list(stored.sort_values("row_key")["ground_truth"]) == list(
        frame.sort_values("id")["diagnosis"]
    )
    feedback = stored[["prediction_id", "ground_truth"]]
    feedback.to_csv(tmp_path / "truth.csv", index=False)
    imported = runner.invoke(
        app,
        [
            "feedback",
            "import",
            "breast-cancer",
            str(tmp_path / "truth.csv"),
            "-r",
            str(examples_root),
            "--monitoring-db",
            db,
        ],
    )
    assert imported.exit_code == 0, imported.output
    report = runner.invoke(
        app, ["monitor", "breast-cancer", "-r", str(examples_root), "--monitoring-db", db]
    )
    assert report.exit_code == 0, report.output
    assert "400 predictions logged" in report.stdout and "400 with ground truth" in report.stdout


def test_missing_feedback_column_is_refused(
    examples_root: Path, tmp_path: Path, cancer_rows: pd.DataFrame
) -> None:
    source = _write(cancer_rows.iloc[:10], tmp_path / "rows.parquet")
    result = runner.invoke(
        app,
        [
            "batch",
            "breast-cancer",
            "-r",
            str(examples_root),
            "--source",
            str(source),
            "--destination",
            str(tmp_path / "o.parquet"),
            "--feedback-column",
            "nope",
            "--store",
            str(tmp_path / "jobs.db"),
        ],
    )
    assert result.exit_code == 2 and "no ground-truth column 'nope'" in result.stderr


def test_a_chunk_of_only_invalid_rows_goes_to_errors(
    repository: Repository, tmp_path: Path, cancer_rows: pd.DataFrame
) -> None:
    bad = cancer_rows.iloc[:30].copy()
    bad["mean radius"] = -5.0
    mixed = pd.concat([bad, cancer_rows.iloc[100:130]], ignore_index=True)
    job = run_batch(
        repository,
        JobStore(tmp_path / "j.db"),
        model="breast-cancer",
        source=str(_write(mixed, tmp_path / "m.jsonl")),
        destination=str(tmp_path / "o.parquet"),
        key="id",
        chunk_rows=30,
    )
    assert (job.rows_scored, job.rows_rejected) == (30, 30)
    errors = open_destination(job.errors).read(job.job_id)
    assert len(errors) == 30 and "must be a number" in errors["error"][0]


def test_rejected_rows_with_huge_integers_are_still_json() -> None:
    from foretell.jobs.batch import _as_json

    assert json.loads(_as_json({"a": 2**70, "b": np.float64(1.5)})) == {"a": 2**70, "b": 1.5}
