"""The prediction log: every scored row (or a sample) written off the hot path.

Serving threads hand scored batches (or, with a sample rate, their sampled rows) to a bounded
queue. A thread ships what gathered within ``LINGER_S`` to a writer process (each run of one
model's batches merged into one), which turns the batches into rows (JSON of inputs and
outputs) and stores them in one transaction: that work holds no lock the serving process
needs. A full queue makes serving wait rather than drop a prediction; a failed write is
retried, counted and logged, never raised into serving; a writer process that dies is
restarted. ``close()`` flushes what is queued, so a graceful shutdown loses nothing that was
answered.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from foretell.monitoring.store import MonitoringStore

if TYPE_CHECKING:
    from prometheus_client import Counter

    from foretell.pipeline.model import Batch
    from foretell.repository.spec import ModelSpec

log = logging.getLogger("foretell.predlog")
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
#: A model as the writer process knows it: (name, version, id of the loaded model).
_Key = tuple[str, str, int]


class PredictionLog:
    """Logs scored batches to a :class:`MonitoringStore` from a writer process."""

    #: The most queued batches written in one transaction.
    GROUP = 256
    #: How long batches gather before they are shipped and written, in seconds.
    LINGER_S = 0.05
    #: The most rows of batches merged into one for the writer: larger merges cost it more
    #: per row (its strings and lists outgrow the caches; bench/predlog.py, 2,048 against 256).
    MERGE_ROWS = 256
    #: The least time between two warnings that serving waited for the writer, in seconds.
    WARN_EVERY_S = 60.0

    def __init__(
        self,
        store: MonitoringStore,
        sample_rate: float = 1.0,
        capacity: int = 1024,
        failures: Counter | None = None,
        waits: Counter | None = None,
    ) -> None:
        self.store, self.sample_rate = store, sample_rate
        #: Counters of the predictions the log could not store, and of the seconds serving
        #: waited for room in a full queue.
        self.failures, self.waits = failures, waits
        self._warned = -self.WARN_EVERY_S  # when serving's last wait was logged (perf_counter)
        self._random = np.random.default_rng()
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=capacity)
        #: Predictions stored so far (as the writer process reports them).
        self.written = 0
        self._process: Any = None
        self._pipe: Connection | None = None
        self._known: set[_Key] = set()  # the models whose spec the writer process has
        self.shipper = threading.Thread(target=self._run, name="foretell-predlog", daemon=True)
        self.shipper.start()

    def observe(self, batch: Batch) -> None:
        """Queues a scored batch (waits if the writer is far behind); below a sample rate of
        1, only its sampled rows: chosen here, the rows left out cost neither the shipping
        nor the writer anything."""
        if self.sample_rate < 1.0:
            kept = np.flatnonzero(self._random.random(len(batch.usable)) < self.sample_rate)
            if not len(kept):  # most small batches at a low rate: nothing to build or queue
                return
            if len(kept) < len(batch.usable):
                batch = sampled(batch, kept)
        if len(batch.usable):
            try:
                self.queue.put_nowait(batch)
            except queue.Full:
                self._wait_for_room(batch)

    def _wait_for_room(self, batch: Batch) -> None:
        """Queues ``batch`` once the writer has made room: counts the wait, and says so in
        the log at most every :data:`WARN_EVERY_S` seconds, with what to do about it."""
        started = time.perf_counter()
        self.queue.put(batch)
        now = time.perf_counter()
        waited = now - started
        if self.waits is not None:
            self.waits.inc(waited)
        if now - self._warned >= self.WARN_EVERY_S:
            self._warned = now
            log.warning(
                "the prediction log's writer cannot keep up: a request waited %.0f ms for it "
                "(foretell_prediction_log_wait_seconds_total counts every wait); log a sample "
                "with --log-sample-rate, or nothing with --no-monitoring",
                waited * 1000,
            )

    def behind(self) -> bool:
        """Whether the writer is far behind: the queue is over half full, and the next
        batches may wait in :meth:`observe` for room."""
        return self.queue.qsize() > self.queue.maxsize // 2

    def _run(self) -> None:
        stopping = False
        while not stopping:
            # one transaction for everything queued, after a short wait for more: a commit per
            # 1-row request would cap serving at the store's commits per second
            batches = [self.queue.get()]
            if batches[0] is not None and self.queue.qsize() < self.GROUP:
                time.sleep(self.LINGER_S)
            while len(batches) < self.GROUP and not self.queue.empty():
                batches.append(self.queue.get_nowait())
            stopping = any(batch is None for batch in batches)
            scored = [batch for batch in batches if batch is not None]
            if scored:
                self._ship(scored)
        self._stop()

    def _ship(self, batches: list[Batch]) -> None:
        """Sends batches to the writer process, starting it (again) when needed."""
        for _ in range(2):
            try:
                pipe = self._pipe or self._start()
                pipe.send(self._items(batches))
                self._collect(block=False)
                return
            except (OSError, EOFError) as exc:  # the writer died: start another, once
                log.error("the prediction log's writer process stopped (%s); restarting", exc)
                self._pipe = None
        self._count(0, sum(len(batch.usable) for batch in batches))

    def _items(self, batches: list[Batch]) -> list[tuple[_Key, ModelSpec | None, _Wire]]:
        """What the writer process gets of ``batches``: one wire for each run of one model's
        batches that merge (see :meth:`_Wire.merged`), with the model's spec the first time."""
        runs: list[tuple[_Key, ModelSpec | None, list[_Wire]]] = []
        run_rows = 0  # rows in the last run
        for batch in batches:
            model, wire = batch.model, _Wire.of(batch)
            key = (model.name, model.version, id(model))
            last = runs[-1] if runs else None
            if (
                last is not None
                and last[0] == key
                and last[2][-1].merges_with(wire)
                and run_rows + wire.length <= self.MERGE_ROWS
            ):
                last[2].append(wire)
            else:
                runs.append((key, None if key in self._known else model.spec, [wire]))
                self._known.add(key)
                run_rows = 0
            run_rows += wire.length
        return [(key, spec, _Wire.merged(wires)) for key, spec, wires in runs]

    def _start(self) -> Connection:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=_write_forever,
            args=(theirs, self.store.connect_uri),
            name="foretell-predlog-writer",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        self._pipe, self._known = ours, set()
        return ours

    def _collect(self, block: bool) -> None:
        """Counts what the writer reports: (stored, dropped) per transaction; with ``block``,
        until it ends."""
        pipe = self._pipe
        while pipe is not None and (block or pipe.poll()):
            try:
                stored, dropped = pipe.recv()
            except EOFError:
                return
            self._count(stored, dropped)

    def _count(self, stored: int, dropped: int) -> None:
        self.written += stored
        if dropped:
            if self.failures is not None:
                self.failures.inc(dropped)
            log.error("dropped %d predictions after 5 failed writes", dropped)

    def _stop(self) -> None:
        if self._pipe is None:
            return
        try:
            self._pipe.send(None)
            self._collect(block=True)
        except OSError:
            pass
        self._process.join(10)

    def close(self, timeout: float = 30.0) -> None:
        """Writes everything queued, then stops the writer."""
        self.queue.put(None)
        self.shipper.join(timeout)


class _Writer:
    """Turns scored batches into rows and stores them: the writer process's work."""

    def __init__(self, store: MonitoringStore) -> None:
        self.store = store
        self.models: dict[_Key, _Logged] = {}

    def write(self, items: list[tuple[_Key, ModelSpec | None, _Wire]]) -> tuple[int, int]:
        """Stores the rows of ``items``: (rows stored, rows dropped after failed writes)."""
        rows = []
        for key, spec, wire in items:
            if spec is not None:
                self.models[key] = _Logged(spec)
            logged = self.models[key]
            matrix = wire.inputs if isinstance(wire.inputs, np.ndarray) else None
            rows += self._rows(wire.batch(logged), matrix, logged.heads, wire.latency_ms)
        if not rows:
            return 0, 0
        for attempt in range(5):
            try:
                self.store.log_values(rows)
                return len(rows), 0
            except Exception as exc:  # the store is down: retry, then count and go on
                log.warning(
                    "writing %d predictions failed (%s); attempt %d",
                    len(rows),
                    exc,
                    attempt + 1,
                )
                time.sleep(min(0.2 * 2**attempt, 3.0))
        return 0, len(rows)

    def _rows(
        self, batch: Batch, matrix: np.ndarray | None, heads: list[str], latencies: list[float]
    ) -> list[tuple[Any, ...]]:
        """The logged rows of ``batch`` (the store's ``LOGGED`` columns, in order); ``matrix``:
        its inputs as one (rows, inputs) array in schema order, when they came so; ``heads``:
        its model's :func:`object_heads`; ``latencies``: each usable row's batch's time in
        milliseconds."""
        model = batch.model
        records = batch.records()  # with the explanation and uncertainty when asked for
        names = model.spec.feature_names
        now = time.time()
        positions = batch.usable
        # whole rows or columns at a time: a Python call per value costs more than the row
        whole = len(positions) == batch.length
        dumps, name, version = orjson.dumps, model.name, model.version
        inputs: list[str]
        if matrix is not None:
            inputs = json_objects(matrix if whole else matrix[positions], heads)
        else:
            columns = [_values(batch.inputs[n], positions, whole) for n in names]
            inputs = [
                dumps(dict(zip(names, values, strict=True)), option=_OPTIONS).decode()
                for values in zip(*columns, strict=True)
            ]
        ids, decisions = batch.prediction_ids, batch.decisions.tolist()
        return [
            (
                ids[row],
                name,
                version,
                now,
                text,
                dumps(records[j], option=_OPTIONS).decode(),  # orjson writes NaN as null
                str(decisions[j]),
                latencies[j],
            )
            for j, (row, text) in enumerate(zip(positions.tolist(), inputs, strict=True))
        ]


@dataclasses.dataclass
class _Wire:
    """What the writer process needs of a scored batch, in few pickled objects: pickling
    costs microseconds of fixed overhead per numpy array, and a batch has a column per input,
    so numeric inputs travel as one (rows, inputs) matrix, numeric outputs as their arrays,
    and text as plain lists."""

    length: int
    usable: np.ndarray
    outputs: dict[str, Any]
    decisions: list[Any]
    prediction_ids: list[str]
    #: Each usable row's batch's time in milliseconds (rows of merged batches keep their own).
    latency_ms: list[float]
    #: The inputs in schema order: one float matrix when all are numbers, else lists by name.
    inputs: np.ndarray | dict[str, list[Any]]
    insight: list[str]

    @classmethod
    def of(cls, batch: Batch) -> _Wire:
        return cls(
            batch.length,
            batch.usable,
            {name: _packed(values) for name, values in batch.outputs.items()},
            batch.decisions.tolist(),
            batch.prediction_ids,
            [float(sum(batch.timings_ms.values()))] * len(batch.usable),
            _inputs(batch),
            batch.insight,
        )

    @classmethod
    def merged(cls, wires: Sequence[_Wire]) -> _Wire:
        """One wire of the rows of ``wires``, in order (each :meth:`merges_with` the one before
        it): pickling, unpickling and the writer's work per batch (rebuilding it, its records,
        its inputs' JSON) then come once for them all, which is most of the cost of a batch of
        one row."""
        if len(wires) == 1:
            return wires[0]
        offsets = np.cumsum([0] + [w.length for w in wires[:-1]])
        first = wires[0]
        return cls(
            sum(w.length for w in wires),
            np.concatenate([w.usable + offset for w, offset in zip(wires, offsets, strict=True)]),
            {name: _joined([w.outputs[name] for w in wires]) for name in first.outputs},
            [d for w in wires for d in w.decisions],
            [i for w in wires for i in w.prediction_ids],
            [t for w in wires for t in w.latency_ms],
            np.concatenate([w.inputs for w in wires]),  # matrices: see merges_with
            first.insight,
        )

    def merges_with(self, other: _Wire) -> bool:
        """Whether ``other`` (of the same model) can join this wire's rows: numeric inputs,
        the same outputs and insight."""
        return (
            isinstance(self.inputs, np.ndarray)
            and isinstance(other.inputs, np.ndarray)
            and self.outputs.keys() == other.outputs.keys()
            and self.insight == other.insight
        )

    def batch(self, model: _Logged) -> Batch:
        """The batch again, its columns arrays (object arrays where they held text)."""
        from foretell.pipeline.model import Batch

        inputs = self.inputs
        if isinstance(inputs, np.ndarray):
            inputs = dict(zip(model.spec.feature_names, inputs.T, strict=True))
        return Batch(
            model,  # type: ignore[arg-type]
            self.length,
            self.usable,
            {name: _array(values) for name, values in self.outputs.items()},
            _array(self.decisions),
            {},
            self.prediction_ids,
            {},
            inputs,
            self.insight,
        )


def sampled(batch: Batch, kept: np.ndarray) -> Batch:
    """The ``kept`` usable rows of ``batch`` (their indices among its usable rows) as a batch
    of those rows alone, numbered from 0, with their ids, inputs, outputs and decisions."""
    from foretell.pipeline.model import Batch

    rows = batch.usable[kept]  # their positions in the batch

    def take(values: Any, at: np.ndarray) -> Any:
        if isinstance(values, np.ndarray):
            return values[at]
        return [values[i] for i in at.tolist()]

    ids, matrix = batch.prediction_ids, batch.matrix
    return Batch(
        batch.model,
        len(kept),
        np.arange(len(kept)),
        {name: take(values, kept) for name, values in batch.outputs.items()},
        take(batch.decisions, kept),
        {},
        [ids[i] for i in rows.tolist()],
        batch.timings_ms,
        # the log reads the matrix when there is one (see _inputs), else the columns
        {} if matrix is not None else {n: take(c, rows) for n, c in batch.inputs.items()},
        batch.insight,
        None if matrix is None else matrix[rows],
    )


def _joined(parts: list[Any]) -> Any:
    """Output columns of several batches as one: arrays of one row shape stay one array,
    anything else becomes a list."""
    if all(isinstance(p, np.ndarray) and p.shape[1:] == parts[0].shape[1:] for p in parts):
        return np.concatenate(parts)
    return [value for part in parts for value in _listed(part)]


def _inputs(batch: Batch) -> np.ndarray | dict[str, list[Any]]:
    """A batch's inputs as one matrix in schema order when every one is a float64 array (as
    validation leaves clean numbers), else as lists by name."""
    if batch.matrix is not None:
        return batch.matrix
    columns = [batch.inputs[name] for name in batch.model.feature_names]
    if all(isinstance(c, np.ndarray) and c.dtype == np.float64 for c in columns):
        return np.column_stack(columns)
    return {name: _listed(values) for name, values in batch.inputs.items()}


def _packed(values: Any) -> Any:
    """An output column as it travels: numeric arrays as they are, anything else as a list."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values
    return _listed(values)


def _listed(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _array(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    try:
        array = np.asarray(values)
    except ValueError:  # lists of different lengths, such as prediction sets
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    return array.astype(object) if array.dtype.kind == "U" else array


class _Logged:
    """What the writer process needs of a model: its name, version, spec and postprocessor
    (``Batch.records`` reads them)."""

    def __init__(self, spec: ModelSpec) -> None:
        from foretell.pipeline.postprocess import Postprocessor

        self.spec, self.name, self.version = spec, spec.name, spec.version
        self.postprocessor = Postprocessor(spec)
        self.heads = object_heads(spec.feature_names)


def object_heads(names: Sequence[str]) -> list[str]:
    """What :func:`json_objects` writes before each value of a row: its key, and before the
    first key the previous row's end and a line break (which no JSON key or number holds)."""
    keys = [orjson.dumps(name).decode() + ":" for name in names]
    return ["}\n{" + keys[0], *("," + key for key in keys[1:])] if keys else []


def json_objects(matrix: np.ndarray, heads: list[str]) -> list[str]:
    """Each row of a float ``matrix`` as the JSON object of its values by name (``heads`` from
    :func:`object_heads`), the very text orjson writes for a dict of the row, from one orjson
    call and a few string operations on the whole matrix: 4.3 us a row instead of 6.0 with a
    dict per row, in the writer process, which shares the cores with serving."""
    rows, width = matrix.shape
    if not rows or not width:
        return ["{}"] * rows
    text = orjson.dumps(np.ascontiguousarray(matrix), option=_OPTIONS).decode()  # [[1.0,2.0],..]
    parts = [""] * (2 * rows * width)
    parts[0::2] = heads * rows
    parts[1::2] = text[2:-2].replace("],[", ",").split(",")
    return ("".join(parts) + "}")[2:].split("\n")


def _write_forever(pipe: Connection, uri: str) -> None:
    """The writer process: writes what arrives on ``pipe`` until None, or until the serving
    process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops it once it has drained
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    writer = _Writer(MonitoringStore(uri))
    while True:
        try:
            items = pipe.recv()
        except EOFError:
            return
        if items is None:
            pipe.close()
            return
        pipe.send(writer.write(items))


def _values(column: Any, rows: np.ndarray, whole: bool) -> list[Any]:
    """The values of ``column`` at ``rows`` as plain Python values; ``whole``: ``rows`` are all
    of its rows, in order, which spares indexing a copy."""
    if isinstance(column, np.ndarray):
        values: list[Any] = (column if whole else column[rows]).tolist()
        return values
    return list(column) if whole else [column[i] for i in rows.tolist()]
