"""The Dask engine: the local engine's output, exactly once when a worker is killed, the CLI."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from distributed import Client, LocalCluster
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner

from foretell import Repository
from foretell.cli import app
from foretell.destinations import open_destination
from foretell.examples import datasets
from foretell.jobs.batch import run_batch
from foretell.jobs.store import Job, JobStore

runner = CliRunner()

#: Columns that differ between two runs of the same rows: who ran it, ids, and when.
RUN_COLUMNS = ["job_id", "prediction_id", "scored_at"]


@pytest.fixture(scope="module")
def cancer_rows() -> pd.DataFrame:
    frame = pd.concat([load_breast_cancer(as_frame=True).data] * 3, ignore_index=True)
    frame.insert(0, "id", [f"c{i:05d}" for i in range(len(frame))])
    frame.loc[7, "mean radius"] = -1.0  # one invalid row, for the errors destination
    return frame


def _by_key(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows without their run-specific columns, in row-key order."""
    kept = frame.drop(columns=[c for c in RUN_COLUMNS if c in frame.columns])
    return kept.sort_values("row_key").reset_index(drop=True)


@pytest.mark.parametrize("destination_name", ["out.parquet", "o.db"])
def test_dask_output_equals_the_local_engines_row_for_row(
    repository: Repository, cancer_rows: pd.DataFrame, tmp_path: Path, destination_name: str
) -> None:
    source = tmp_path / "rows.parquet"
    cancer_rows.to_parquet(source, index=False)
    store = JobStore(tmp_path / "jobs.db")
    jobs: dict[str, Job] = {}
    destinations: dict[str, str] = {}
    for engine in ("local", "dask"):
        # One SQLite table for both jobs (rows keyed by job); a folder each for Parquet, as
        # their default errors destination is one JSONL file, rewritten by each job's finish.
        destinations[engine] = (
            f"sqlite:///{tmp_path / destination_name}?table=scores"
            if destination_name.endswith(".db")
            else str(tmp_path / f"{engine}-{destination_name}")
        )
        jobs[engine] = run_batch(
            repository,
            store,
            model="breast-cancer",
            source=str(source),
            destination=destinations[engine],
            key="id",
            chunk_rows=250,  # 7 chunks: more than the 4 the engine keeps in flight
            job_id=f"{engine}-job",
            engine=engine,  # type: ignore[arg-type]
        )
    local, dask = jobs["local"], jobs["dask"]
    assert dask.engine == "dask"
    counts = ("done", len(cancer_rows), len(cancer_rows) - 1, 1)
    assert (local.status, local.rows_in, local.rows_scored, local.rows_rejected) == counts
    assert (dask.status, dask.rows_in, dask.rows_scored, dask.rows_rejected) == counts
    results = {e: open_destination(destinations[e]).read(j.job_id) for e, j in jobs.items()}
    assert len(results["dask"]) == len(cancer_rows) - 1
    assert results["dask"]["row_key"].is_unique
    assert set(results["dask"]["job_id"]) == {"dask-job"}
    pd.testing.assert_frame_equal(_by_key(results["dask"]), _by_key(results["local"]))
    errors = {e: open_destination(j.errors).read(j.job_id) for e, j in jobs.items()}
    assert list(errors["dask"]["row_key"]) == ["c00007"]
    pd.testing.assert_frame_equal(_by_key(errors["dask"]), _by_key(errors["local"]))


@pytest.fixture
def environ_kept() -> Iterator[None]:
    """Restores this process's environment: a nanny copies its pre-spawn variables into it
    (PYTHONHASHSEED, MALLOC_TRIM_THRESHOLD_, ...), and later tests' subprocesses would
    inherit them. The engine restores them itself for the clusters it starts."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _kill_a_busy_worker(client: Client) -> int:
    """SIGKILLs a worker process that is running or holding a task; returns its pid."""
    pids: dict[str, int] = client.run(os.getpid)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        busy = [address for address, keys in client.processing().items() if keys]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return pids[busy[0]]
        time.sleep(0.01)
    raise AssertionError("no worker had a task to lose")


@pytest.mark.usefixtures("environ_kept")
def test_a_killed_worker_loses_no_row_and_duplicates_none(
    repository: Repository, tmp_path: Path
) -> None:
    frame = datasets.card_transactions(rows=60_000, seed=9).drop(columns=["is_fraud"])
    frame.insert(0, "tx", [f"t{i}" for i in range(len(frame))])
    source = tmp_path / "tx.parquet"
    frame.to_parquet(source, index=False)
    destination = str(tmp_path / "scored.parquet")
    store = JobStore(tmp_path / "jobs.db")
    chunks = len(frame) // 2000
    outcome: dict[str, Any] = {}
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
        ) as cluster,
        Client(cluster) as client,
    ):

        def job() -> None:
            try:
                outcome["job"] = run_batch(
                    repository,
                    store,
                    model="card-fraud",
                    source=str(source),
                    destination=destination,
                    key="tx",
                    chunk_rows=2000,
                    job_id="killed",
                    engine="dask",
                    scheduler=cluster.scheduler_address,
                )
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=job, name="dask-job", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while len(store.done_chunks("killed")) < 3 and time.monotonic() < deadline:
            assert thread.is_alive(), f"the job ended before the kill: {outcome}"
            time.sleep(0.02)
        killed = _kill_a_busy_worker(client)
        done_at_kill = len(store.done_chunks("killed"))
        assert thread.is_alive() and 3 <= done_at_kill < chunks, "the kill did not land mid-job"
        thread.join(timeout=120)
        assert not thread.is_alive(), "the job did not finish within 120 s of the kill"
        assert killed not in client.run(os.getpid).values()
    assert "error" not in outcome, outcome.get("error")
    job: Job = outcome["job"]
    assert (job.status, job.rows_in, job.rows_scored) == ("done", len(frame), len(frame))
    stored = open_destination(destination).read("killed")
    assert len(stored) == len(frame)
    assert stored["row_key"].is_unique
    assert set(stored["row_key"]) == set(frame["tx"])
    assert store.done_chunks("killed") == set(range(chunks))


def test_cli_runs_a_job_on_dask(
    examples_root: Path, tmp_path: Path, cancer_rows: pd.DataFrame
) -> None:
    source = tmp_path / "rows.parquet"
    cancer_rows.iloc[:600].to_parquet(source, index=False)
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
            "--key",
            "id",
            "--chunk-rows",
            "200",
            "--engine",
            "dask",
            "--store",
            str(tmp_path / "jobs.db"),
            "--job-id",
            "cli-dask",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "job cli-dask done: 600 rows, 599 scored, 1 rejected" in result.stderr
    assert JobStore(tmp_path / "jobs.db").get("cli-dask").engine == "dask"
    stored = open_destination(str(tmp_path / "out.parquet")).read("cli-dask")
    assert sorted(stored["row_key"]) == sorted(cancer_rows["id"][:600].drop(index=7))
