"""The Dask engine for batch jobs: the local engine's chunks, scored and written on a cluster.

The client reads the source in the same deterministic chunks as the local engine, skips the
chunks the job store already has, and submits one task per chunk. A task runs on a worker: it
loads the model from its version folder (once per worker process), runs the pipeline, and
writes the results and the rejected rows to the destinations itself. Those writes are atomic
per chunk and idempotent on (job, row key), so a task retried after its worker died never
duplicates a row; the client records a chunk in the job store only after the task that wrote
both parts has finished. At most two tasks per worker thread are in flight, so memory stays
bounded whatever the input's size.

Without a scheduler address the engine starts a local cluster (two single-threaded worker
processes on 127.0.0.1) for the job and stops it afterwards; with one, it only connects.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from foretell.destinations import Destination, open_destination
from foretell.errors import ForetellError, MissingExtraError, UserError
from foretell.jobs.batch import BatchJob, Chunk, chunks_of, score_chunk
from foretell.jobs.store import Job
from foretell.pipeline import Model
from foretell.repository.spec import ModelSpec

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

#: Tasks in flight per worker thread: one running and one waiting, so no worker idles.
IN_FLIGHT_PER_THREAD = 2
#: Further attempts of a task that raised; a task whose worker died is rescheduled anyway.
RETRIES = 3
#: Worker processes and threads of the cluster started when no scheduler is given. One math
#: thread per process: on 2 cores, 2 threads per worker ran 2.5-3.8x slower.
LOCAL_WORKERS = 2
#: How long a job waits for a scheduler given by address to have a worker.
WORKER_WAIT_S = 60.0
#: Models (and destinations) a worker process keeps loaded between tasks.
CACHED = 4


@dataclass(frozen=True)
class Stored:
    """What a task did with one chunk: its counts, or, with ``--on-error fail``, the first
    rejected row (row key, error), in which case it wrote nothing."""

    number: int
    rows: int
    scored: int
    rejected: int
    seconds: float
    invalid: tuple[str, str] | None = None


def run_on_dask(runner: BatchJob, scheduler: str | None) -> Job:
    """Runs ``runner``'s job on a Dask cluster: a local one, or the one at ``scheduler``."""
    try:
        import distributed
    except ImportError:
        raise MissingExtraError("dask[distributed]", "dask", "the dask engine") from None
    job, store = runner.job, runner.store
    started = time.perf_counter()
    done = store.done_chunks(job.job_id)
    runner.reporter.start(runner.source.count(), store.get(job.job_id).rows_in)
    cluster: LocalCluster | None = None
    client: Client | None = None
    environ = _spawn_environ()
    try:
        if scheduler is None:
            cluster = _local_cluster()
            client = distributed.Client(cluster)  # type: ignore[no-untyped-call]
        else:
            client = _connect(scheduler)
        _score_on(client, runner, done)
        runner.destination.finish(job.job_id)
        runner.errors.finish(job.job_id)
    except BaseException as exc:
        message = exc.message if isinstance(exc, ForetellError) else repr(exc)
        store.finish(job.job_id, "failed", time.perf_counter() - started, message)
        raise
    finally:
        runner.reporter.stop()
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]
        if cluster is not None:
            cluster.close()
        if scheduler is None:
            _restore(environ)
    return store.finish(job.job_id, "done", time.perf_counter() - started)


def _local_cluster() -> LocalCluster:
    """Two single-threaded worker processes on 127.0.0.1, no dashboard."""
    from distributed import LocalCluster

    # The nanny copies these variables into the environment of this process before it spawns
    # a worker (OMP_NUM_THREADS must be set before numpy loads); ``_restore`` undoes that.
    os.environ["OMP_NUM_THREADS"] = "1"
    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=LOCAL_WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        # No dashboard; the scheduler's small HTTP server (health checks) takes a free port
        # on 127.0.0.1: with ``None`` it would still start, on 8787, warning if that is taken.
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        env={"OMP_NUM_THREADS": "1"},
    )


def _connect(scheduler: str) -> Client:
    from distributed import Client

    try:
        client = Client(scheduler)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:  # unreachable, or not an address
        raise UserError(f"cannot connect to the Dask scheduler '{scheduler}': {exc}") from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        client.close()  # type: ignore[no-untyped-call]
        raise UserError(
            f"the Dask scheduler '{scheduler}' has no workers after {WORKER_WAIT_S:.0f} s; "
            f"start some with: dask worker {scheduler}"
        ) from None
    return client


def _spawn_environ() -> dict[str, str | None]:
    """This process's values of the variables a nanny sets in it before spawning a worker."""
    import dask

    keys = {"OMP_NUM_THREADS", "PYTHONHASHSEED"}
    keys.update(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    return {k: os.environ.get(k) for k in keys}


def _restore(environ: dict[str, str | None]) -> None:
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _score_on(client: Client, runner: BatchJob, done: set[int]) -> None:
    """Submits every chunk not in ``done``, a bounded number at a time; records each stored
    chunk as its task finishes."""
    from distributed import as_completed

    job = runner.job
    fixed = {
        "folder": str(runner.model.folder),
        "spec": runner.model.spec.model_dump(),
        "job_id": job.job_id,
        "key_column": job.key,  # not "key": that is submit's own argument
        "destination": job.destination,
        "errors": job.errors,
        "fail": runner.on_error == "fail",
        "truth": runner.truth,
    }
    limit = IN_FLIGHT_PER_THREAD * max(1, sum(client.nthreads().values()))  # type: ignore[no-untyped-call]
    chunks: Iterator[Chunk] = (
        c for c in chunks_of(runner.source, job.chunk_rows) if c.number not in done
    )
    outstanding: set[Future[Stored]] = set()

    def submit(chunk: Chunk) -> Future[Stored]:
        future: Future[Stored] = client.submit(
            score_and_store,
            number=chunk.number,
            offset=chunk.offset,
            frame=chunk.frame,
            retries=RETRIES,
            pure=False,
            **fixed,
        )
        outstanding.add(future)
        return future

    finished = as_completed([submit(c) for c in islice(chunks, limit)])  # type: ignore[no-untyped-call]
    try:
        for future in finished:
            outstanding.discard(future)
            stored: Stored = future.result()
            if stored.invalid is not None:  # --on-error fail, as BatchJob._store
                row_key, error = stored.invalid
                raise UserError(
                    f"row {row_key} is invalid: {error} "
                    "(with --on-error store, invalid rows go to the errors destination instead)"
                )
            runner.store.record_chunk(
                job.job_id,
                stored.number,
                stored.rows,
                stored.scored,
                stored.rejected,
                stored.seconds,
            )
            runner.reporter.advance(stored.rows, stored.rejected)
            following = next(chunks, None)
            if following is not None:
                finished.add(submit(following))  # type: ignore[no-untyped-call]
    except BaseException:
        client.cancel(list(outstanding))  # type: ignore[no-untyped-call]
        raise


# What follows runs on the workers.

_cache_lock = threading.Lock()
_models: OrderedDict[tuple[str, str], Model] = OrderedDict()
_destinations: OrderedDict[str, Destination] = OrderedDict()


def _cached(cache: OrderedDict[Any, Any], key: Any, load: Any) -> Any:
    with _cache_lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        cache[key] = value = load()
        while len(cache) > CACHED:
            cache.popitem(last=False)
        return value


def worker_model(folder: str, spec: dict[str, Any]) -> Model:
    """The model in ``folder``, loaded once per worker process (per folder and version)."""
    model: Model = _cached(
        _models,
        (folder, str(spec["version"])),
        lambda: Model.from_folder(Path(folder), ModelSpec.model_validate(spec)),
    )
    return model


def _destination(uri: str) -> Destination:
    destination: Destination = _cached(_destinations, uri, lambda: open_destination(uri))
    return destination


def score_and_store(
    *,
    folder: str,
    spec: dict[str, Any],
    job_id: str,
    key_column: str | None,
    destination: str,
    errors: str,
    fail: bool,
    number: int,
    offset: int,
    frame: pd.DataFrame,
    truth: str | None = None,
) -> Stored:
    """One task: scores chunk ``number`` and writes its results and its rejected rows."""
    started = time.perf_counter()
    scored = score_chunk(
        worker_model(folder, spec), job_id, Chunk(number, offset, frame), key_column, truth
    )
    if fail and len(scored.errors):
        first = scored.errors.iloc[0]
        invalid = (str(first["row_key"]), str(first["error"]))
        return Stored(number, scored.rows, 0, len(scored.errors), 0.0, invalid)
    if len(scored.results):
        _destination(destination).write(job_id, number, scored.results)
    if len(scored.errors):
        _destination(errors).write(job_id, number, scored.errors)
    seconds = time.perf_counter() - started
    return Stored(number, scored.rows, len(scored.results), len(scored.errors), seconds)
