"""Batch jobs: score a source into a destination in chunks, exactly once, resumable.

Reading, scoring and writing overlap: a reader thread fills a bounded queue of chunks, a pool
of scoring threads runs the pipeline on them (onnxruntime and most libraries release the GIL in
the forward pass), and a writer thread stores results in chunk order. Bounded queues keep peak
memory independent of the input's size.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd

from foretell.destinations import open_destination
from foretell.errors import ForetellError, UserError
from foretell.insight.conformal import resolve_confidence
from foretell.insight.explain import check_explainable
from foretell.jobs.progress import Reporter, Silent
from foretell.jobs.store import Job, JobStore
from foretell.monitoring.predlog import PredictionLog
from foretell.pipeline import Model
from foretell.repository import Repository
from foretell.sources import Source, open_source


@dataclass(frozen=True)
class Chunk:
    """Chunk ``number`` of a source: its rows start at ``offset`` in the whole input."""

    number: int
    offset: int
    frame: pd.DataFrame


@dataclass(frozen=True)
class Scored:
    number: int
    rows: int
    results: pd.DataFrame
    errors: pd.DataFrame


def score_chunk(
    model: Model,
    job_id: str,
    chunk: Chunk,
    key: str | None,
    truth: str | None = None,
    explain: bool = False,
    confidence: float | None = None,
) -> Scored:
    """Runs the pipeline on one chunk: its result rows and its rejected rows, keyed.

    With ``truth`` (a column holding known outcomes), results carry it as ``ground_truth``;
    ``explain`` and ``confidence`` add the explanation and uncertainty columns.
    """
    frame = chunk.frame
    keys = (
        frame[key].astype(str).to_numpy(dtype=object)
        if key is not None
        else np.arange(chunk.offset, chunk.offset + len(frame)).astype(str).astype(object)
    )
    batch = model.run(frame, explain=explain, confidence=confidence)
    table = batch.table()
    rows = table.pop("row")
    results = pd.DataFrame(
        {
            "job_id": job_id,
            "row_key": keys[rows],
            "prediction_id": table.pop("prediction_id"),
            "model": model.name,
            "model_version": model.version,
            **table,
            **({"ground_truth": frame[truth].to_numpy()[rows]} if truth else {}),
            "scored_at": datetime.now(UTC),
        }
    )
    rejected = batch.errors()
    errors = pd.DataFrame(
        {
            "job_id": job_id,
            "row_key": [keys[r] for r in rejected],
            "error": list(rejected.values()),
            "input": [_as_json(frame.iloc[r].to_dict()) for r in rejected],
        },
        columns=["job_id", "row_key", "error", "input"],
    )
    return Scored(chunk.number, len(frame), results, errors)


def _as_json(record: dict[Any, Any]) -> str:
    """A rejected row as JSON text, whatever it holds (numpy values, huge integers)."""
    try:
        return orjson.dumps(record, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:  # integers beyond 64 bits, which orjson refuses
        return json.dumps(record, default=str)


def chunks_of(source: Source, rows: int) -> Iterator[Chunk]:
    offset = 0
    for number, frame in enumerate(source.chunks(rows)):
        yield Chunk(number, offset, frame.reset_index(drop=True))
        offset += len(frame)


class BatchJob:
    """One job: a model, a source, a destination for results and one for rejected rows."""

    def __init__(
        self,
        model: Model,
        job: Job,
        store: JobStore,
        on_error: Literal["store", "fail"] = "store",
        workers: int = 2,
        reporter: Reporter | None = None,
        truth: str | None = None,
        explain: bool = False,
        confidence: float | None = None,
    ) -> None:
        self.model, self.job, self.store, self.truth = model, job, store, truth
        self.explain, self.confidence = explain, confidence
        self.on_error, self.workers = on_error, max(1, workers)
        self.reporter: Reporter = reporter or Silent()
        self.source = open_source(job.source, order_by=job.key)
        self.destination = open_destination(job.destination)
        self.errors = open_destination(job.errors)

    def check(self) -> None:
        """Opens the source and both destinations; bad input fails here, before any write."""
        self.source.columns()
        self.source.check_key(self.job.key)
        if self.truth is not None and self.truth not in self.source.columns():
            raise UserError(
                f"source '{self.job.source}' has no ground-truth column '{self.truth}'; its "
                f"columns are {', '.join(self.source.columns())}"
            )
        missing = [f for f in self.model.spec.feature_names if f not in self.source.columns()]
        if missing:
            raise UserError(
                f"source '{self.job.source}' lacks the model's inputs {missing}; its columns "
                f"are {', '.join(self.source.columns())}"
            )
        self.destination.check()
        self.errors.check()

    def run(self) -> Job:
        """Scores every chunk not stored yet; returns the finished job record."""
        started = time.perf_counter()
        done = self.store.done_chunks(self.job.job_id)
        self.reporter.start(self.source.count(), self.store.get(self.job.job_id).rows_in)
        try:
            self._pipeline(done)
            self.destination.finish(self.job.job_id)
            self.errors.finish(self.job.job_id)
        except BaseException as exc:
            message = exc.message if isinstance(exc, ForetellError) else repr(exc)
            self.store.finish(self.job.job_id, "failed", time.perf_counter() - started, message)
            raise
        finally:
            self.reporter.stop()
        return self.store.finish(self.job.job_id, "done", time.perf_counter() - started)

    def _pipeline(self, done: set[int]) -> None:
        chunks: queue.Queue[Chunk | None] = queue.Queue(maxsize=self.workers)
        scored: queue.Queue[Scored | None] = queue.Queue(maxsize=self.workers)
        failure: list[BaseException] = []
        stop = threading.Event()

        def read() -> None:
            try:
                for chunk in chunks_of(self.source, self.job.chunk_rows):
                    if stop.is_set():
                        return
                    if chunk.number not in done:
                        _put(chunks, chunk, stop)
            except BaseException as exc:
                failure.append(exc)
            finally:
                _put(chunks, None, stop)

        def write() -> None:
            try:
                while (item := scored.get()) is not None:
                    self._store(item)
            except BaseException as exc:
                failure.append(exc)
                stop.set()
                while scored.get() is not None:  # let the scorer finish putting
                    pass

        reader = threading.Thread(target=read, name="foretell-read", daemon=True)
        writer = threading.Thread(target=write, name="foretell-write", daemon=True)
        reader.start()
        writer.start()
        pending: deque[Future[Scored]] = deque()
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="foretell-score") as pool:
                while not stop.is_set() and (chunk := chunks.get()) is not None:
                    pending.append(
                        pool.submit(
                            score_chunk,
                            self.model,
                            self.job.job_id,
                            chunk,
                            self.job.key,
                            self.truth,
                            self.explain,
                            self.confidence,
                        )
                    )
                    if len(pending) >= self.workers:
                        _put(scored, pending.popleft().result(), stop)
                while pending:
                    _put(scored, pending.popleft().result(), stop)
        except BaseException as exc:
            failure.append(exc)
            stop.set()
        finally:
            stop_reading(chunks, stop)
            scored.put(None)
            writer.join()
            reader.join(timeout=60)
        if failure:
            raise failure[0]

    def _store(self, item: Scored) -> None:
        started = time.perf_counter()
        if len(item.errors) and self.on_error == "fail":
            first = item.errors.iloc[0]
            raise UserError(
                f"row {first['row_key']} is invalid: {first['error']} "
                "(with --on-error store, invalid rows go to the errors destination instead)"
            )
        if len(item.results):
            self.destination.write(self.job.job_id, item.number, item.results)
        if len(item.errors):
            self.errors.write(self.job.job_id, item.number, item.errors)
        self.store.record_chunk(
            self.job.job_id,
            item.number,
            item.rows,
            len(item.results),
            len(item.errors),
            time.perf_counter() - started,
        )
        self.reporter.advance(item.rows, len(item.errors))


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    """Puts ``item`` unless the job is stopping (then a full queue is not waited on)."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set() and item is not None:
                return


def stop_reading(chunks: queue.Queue[Chunk | None], stop: threading.Event) -> None:
    """Drains the chunk queue so a reader blocked on it can see ``stop`` and end."""
    stop.set()
    while True:
        try:
            chunks.get_nowait()
        except queue.Empty:
            return


def start_job(
    repository: Repository,
    model: str,
    source: str,
    destination: str,
    *,
    version: str | None = None,
    key: str | None = None,
    chunk_rows: int = 10_000,
    errors: str | None = None,
    job_id: str | None = None,
    engine: str = "local",
) -> tuple[Model, Job]:
    """Loads the model, checks the source and destinations, and records a new job."""
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows must be at least 1; got {chunk_rows}")
    loaded = repository.load(model, version)
    errors = errors or open_destination(destination).errors_uri()
    job = Job(
        job_id=job_id or f"job-{uuid.uuid4().hex[:12]}",
        model=loaded.name,
        version=loaded.version,
        source=source,
        destination=destination,
        errors=errors,
        key=key,
        chunk_rows=chunk_rows,
        engine=engine,
    )
    return loaded, job


def resume_job(repository: Repository, store: JobStore, job_id: str) -> tuple[Model, Job]:
    """The model and record of an unfinished job, to run it again from where it stopped."""
    job = store.get(job_id)
    if job.status == "done":
        raise UserError(f"job '{job_id}' is already done ({job.rows_in:,} rows)")
    return repository.load(job.model, job.version), job


def run_batch(
    repository: Repository,
    store: JobStore,
    *,
    model: str | None = None,
    source: str | None = None,
    destination: str | None = None,
    resume: str | None = None,
    version: str | None = None,
    key: str | None = None,
    chunk_rows: int = 10_000,
    errors: str | None = None,
    job_id: str | None = None,
    on_error: Literal["store", "fail"] = "store",
    engine: Literal["local", "dask"] = "local",
    scheduler: str | None = None,
    workers: int = 2,
    reporter: Reporter | None = None,
    truth: str | None = None,
    prediction_log: PredictionLog | None = None,
    explain: bool = False,
    confidence: float | None = None,
) -> Job:
    """Runs a new job (``model``, ``source`` and ``destination``) or resumes one (``resume``).

    ``truth`` names a source column of known outcomes, stored beside each result as
    ``ground_truth``; ``prediction_log`` also logs every prediction for monitoring.
    ``explain`` and ``confidence`` add explanation and uncertainty columns (local engine; give
    the same values again when resuming).
    """
    if resume is not None:
        loaded, job = resume_job(repository, store, resume)
    else:
        if model is None or source is None or destination is None:
            raise UserError("a new job needs a model, --source and --destination")
        loaded, job = start_job(
            repository,
            model,
            source,
            destination,
            version=version,
            key=key,
            chunk_rows=chunk_rows,
            errors=errors,
            job_id=job_id,
            engine=engine,
        )
    if engine == "dask" and (explain or confidence is not None):
        raise UserError("explanations and uncertainty in batch jobs need the local engine")
    resolve_confidence(loaded.spec, confidence)  # a bad level fails before anything is written
    if explain:
        check_explainable(loaded.spec)
    runner = BatchJob(
        loaded,
        job,
        store,
        on_error=on_error,
        workers=workers,
        reporter=reporter,
        truth=truth,
        explain=explain,
        confidence=confidence,
    )
    runner.check()
    if prediction_log is not None:
        loaded.observers.append(prediction_log.observe)
    if resume is None:
        store.create(job)
    if engine == "dask":
        from foretell.jobs.dask import run_on_dask

        return run_on_dask(runner, scheduler)
    return runner.run()
