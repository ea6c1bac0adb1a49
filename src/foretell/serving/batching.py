"""Adaptive batching: concurrent requests to one model merge into one forward pass.

Each model (and each set of prediction options, such as ``explain``) has a queue on the
server's event loop. A queue sends its waiting requests to the model as one batch when they
hold ``max_batch_size`` rows, or when the model is idle and the oldest has waited
``max_wait_ms``; while a batch runs, the next one forms. A merged or large batch runs in a
worker thread (a small batch of a fast model runs on the event loop: the hop to a thread, and
the wait for the interpreter lock on the way back, would cost more than its forward pass;
see :data:`INLINE_SECONDS`; not while the prediction log is far behind, whose back-pressure
must never stop the loop), and its rows are
split back by offset: every caller gets its own rows, prediction ids and errors, and a caller
whose rows break a rejecting model's schema gets its ValidationError without failing the
others. With ``max_batch_size`` 1 every request runs alone, at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from foretell.errors import ValidationError
from foretell.pipeline import Model, Prediction
from foretell.pipeline.model import Batch
from foretell.pipeline.rows import Columns, Rows, to_columns
from foretell.pipeline.validate import in_row_order
from foretell.repository.spec import Batching

#: A batch of at most this many rows runs on the event loop itself,
INLINE_ROWS = 64
#: while such batches took less than this (measured on each), so a slow model never stalls
#: the loop for long: its first batch, and any after a slow one, run in a thread.
INLINE_SECONDS = 0.002
#: Formats whose forward pass is the library's own bounded code (never a user's class).
INLINE_FORMATS = frozenset({"onnx", "xgboost", "lightgbm", "sklearn", "conjugate"})


@dataclass(frozen=True)
class BatchPolicy:
    """How a model's requests are merged (``batching`` in model.yaml, or ``foretell serve``)."""

    #: The most rows one merged forward pass takes; 1 runs every request alone.
    max_batch_size: int = 1
    #: The longest a request waits for others to join its batch, in milliseconds.
    max_wait_ms: float = 0.0

    @property
    def merges(self) -> bool:
        return self.max_batch_size > 1


@dataclass
class _Request:
    #: Columns, or a (rows, features) array, split into columns once the batch is merged.
    columns: Columns | np.ndarray
    future: asyncio.Future[Batch]
    arrived: float


class Batcher:
    """Answers predictions through one queue per model and option set.

    ``policy_of`` gives a model's :class:`BatchPolicy`: the spec's ``batching``, where
    ``max_batch_size`` or ``max_wait_ms`` given here (``foretell serve``'s flags) override the
    field they name for every model.
    """

    def __init__(self, max_batch_size: int | None = None, max_wait_ms: float | None = None) -> None:
        self.max_batch_size, self.max_wait_ms = max_batch_size, max_wait_ms
        self._queues: dict[tuple[Any, ...], _Queue] = {}

    def policy_of(self, model: Model) -> BatchPolicy:
        """The spec's policy (by default batches of up to 64 rows that form while the model is
        busy, without waiting when it is idle: measured in docs/benchmarks.md, it helps under
        load and costs nothing alone), with this batcher's overrides."""
        spec = model.spec.batching or Batching()
        return BatchPolicy(
            spec.max_batch_size if self.max_batch_size is None else self.max_batch_size,
            spec.max_wait_ms if self.max_wait_ms is None else self.max_wait_ms,
        )

    async def predict(self, model: Model, rows: Rows, **options: Any) -> list[Prediction]:
        """One result per row of ``rows``, scored alone or merged with concurrent requests."""
        return (await self.run(model, rows, **options)).predictions()

    async def run(self, model: Model, rows: Rows, **options: Any) -> Batch:
        """The scored batch of ``rows`` (their own rows, numbered from 0; without inputs when
        merged, see :func:`rows_of`), scored alone or merged with concurrent requests; raises
        ValidationError when a rejecting model's schema is broken."""
        columns = _split_later(rows, model.feature_names)
        key = (model.name, *sorted(options.items()))
        queue = self._queues.get(key)
        if queue is None or queue.model is not model:  # new, or the model was reloaded
            queue = self._queues[key] = _Queue(model, options, self.policy_of(model))
        loop = asyncio.get_running_loop()
        request = _Request(columns, loop.create_future(), loop.time())
        queue.add(request)
        return await request.future


class _Queue:
    """The waiting requests of one model and option set, and the batch in flight."""

    def __init__(self, model: Model, options: dict[str, Any], policy: BatchPolicy) -> None:
        self.model, self.options, self.policy = model, options, policy
        #: Whether a small batch may run on the event loop: fast formats, no explanations,
        #: and the last small batch was quick (unknown at first).
        self.inline_allowed = model.spec.format in INLINE_FORMATS and not options.get("explain")
        self.small_seconds = float("inf")
        self.waiting: deque[_Request] = deque()
        self.rows = 0
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None

    def add(self, request: _Request) -> None:
        if not self.policy.merges:
            self._start([request])
            return
        self.waiting.append(request)
        self.rows += len(request.columns)
        self._send()

    def _send(self) -> None:
        """Starts a batch if one is due; else makes sure a timer will look again."""
        if self.busy or not self.waiting:
            return
        loop = asyncio.get_running_loop()
        due = self.waiting[0].arrived + self.policy.max_wait_ms / 1000.0
        if self.rows < self.policy.max_batch_size and loop.time() < due:
            if self.timer is None:
                self.timer = loop.call_at(due, self._on_timer)
            return
        taken = [self.waiting.popleft()]
        size = len(taken[0].columns)
        while self.waiting and size + len(self.waiting[0].columns) <= self.policy.max_batch_size:
            taken.append(self.waiting.popleft())
            size += len(taken[-1].columns)
        self.rows -= size
        self.busy = True
        self._start(taken)

    def _on_timer(self) -> None:
        self.timer = None
        self._send()

    def _start(self, taken: list[_Request]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(taken))
        task.add_done_callback(_keep_quiet)

    async def _run(self, taken: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        small = sum(len(r.columns) for r in taken) <= INLINE_ROWS
        try:
            if (
                small
                and self.inline_allowed
                and self.small_seconds < INLINE_SECONDS
                and not any(behind() for behind in self.model.observers_behind)
            ):
                # the hop to a thread would cost more than the work; but where an observer
                # may make the batch wait (a prediction log far behind), that wait blocks a
                # worker thread and the caller, never the event loop and every other request
                answers = self._timed(taken, small, time.perf_counter)
            else:
                answers = await loop.run_in_executor(
                    None, self._timed, taken, small, time.thread_time
                )
        except BaseException as exc:  # every waiting caller hears of it
            answers = [exc] * len(taken)
        finally:
            if self.policy.merges:
                self.busy = False
                self._send()
        for request, answer in zip(taken, answers, strict=True):
            if request.future.done():  # the caller went away
                continue
            if isinstance(answer, BaseException):
                request.future.set_exception(answer)
            else:
                request.future.set_result(answer)

    def _timed(
        self, taken: list[_Request], small: bool, clock: Callable[[], float]
    ) -> list[Batch | BaseException]:
        """:meth:`_answer`, remembering by ``clock`` how long a small batch took. In a worker
        thread that is the thread's CPU time: the wall time counts waits for the interpreter
        lock while the event loop holds it, and would keep a fast model off the loop for good.
        On the loop the wall clock serves, and costs no system call."""
        started = clock()
        answers = self._answer(taken)
        if small:
            self.small_seconds = clock() - started
        return answers

    def _answer(self, taken: list[_Request]) -> list[Batch | BaseException]:
        """Scores the requests as one batch (in a worker thread) and splits the results."""
        try:
            return self._split(taken, self._score([r.columns for r in taken]))
        except Exception as exc:
            if len(taken) == 1:
                return [exc]
        # the merged forward pass failed: run each request alone, so that a row that breaks
        # the model's own library fails only the request that sent it
        answers: list[Batch | BaseException] = []
        for request in taken:
            try:
                answers += self._split([request], self._score([request.columns]))
            except Exception as exc:
                answers.append(exc)
        return answers

    def _score(self, parts: Sequence[Columns | np.ndarray]) -> Batch:
        rejecting = self.model.spec.on_invalid == "reject"
        if len(parts) == 1:
            return self.model.run(parts[0], all_or_nothing=rejecting, **self.options)
        sizes = [len(p) for p in parts]
        groups = np.repeat(np.arange(len(parts)), sizes)
        return self.model.run(
            concatenate(parts), all_or_nothing=rejecting, groups=groups, **self.options
        )

    def _split(self, taken: list[_Request], batch: Batch) -> list[Batch | BaseException]:
        rejecting = self.model.spec.on_invalid == "reject"
        answers: list[Batch | BaseException] = []
        start = 0
        for request in taken:
            stop = start + len(request.columns)
            part = rows_of(batch, start, stop) if len(taken) > 1 else batch
            if rejecting and part.violations:
                answers.append(ValidationError(in_row_order(part.violations)))
            else:
                answers.append(part)
            start = stop
        return answers


def concatenate(parts: Sequence[Columns | np.ndarray]) -> Columns | np.ndarray:
    """One batch of the rows of ``parts``, in order (arrays stay arrays when all are)."""
    arrays = [p for p in parts if isinstance(p, np.ndarray)]
    if len(arrays) == len(parts):
        return np.concatenate(arrays)
    names = next(list(p.values) for p in parts if isinstance(p, Columns))
    split = [p if isinstance(p, Columns) else to_columns(p, names) for p in parts]
    merged: dict[str, Any] = {}
    for name in names:
        columns = [p.values[name] for p in split]
        if all(isinstance(c, np.ndarray) for c in columns):
            merged[name] = np.concatenate(columns)
        else:
            merged[name] = list(
                itertools.chain.from_iterable(
                    c.tolist() if isinstance(c, np.ndarray) else c for c in columns
                )
            )
    return Columns(merged, sum(len(p) for p in parts))


def _split_later(rows: Rows, names: list[str]) -> Columns | np.ndarray:
    """``rows`` as columns, or as they are when they are a numeric (rows, features) array
    (concatenating those is cheaper than concatenating columns)."""
    if (
        isinstance(rows, np.ndarray)
        and rows.ndim == 2
        and rows.shape[1] == len(names)
        and rows.dtype.kind in "fiu"  # bools stay columns: a float feature refuses them
    ):
        return rows
    return to_columns(rows, names)  # a malformed body fails its own request alone


#: Row numbers 0, 1, 2...: a split request whose rows were all scored shares a read-only view
#: of them as its ``usable`` rather than a new array.
_NUMBERS = np.arange(1024)
_NUMBERS.flags.writeable = False


def rows_of(batch: Batch, start: int, stop: int) -> Batch:
    """The rows ``start:stop`` of a scored batch, numbered from 0 as their request sent them,
    without their inputs: the callers read outputs, and the batch's observers (the prediction
    log among them) saw the whole batch with its inputs."""
    if len(batch.usable) == batch.length and stop - start <= len(_NUMBERS):
        lo, hi = start, stop  # every row scored: row i is output i
        usable = _NUMBERS[: stop - start]
    else:
        lo, hi = (int(i) for i in np.searchsorted(batch.usable, [start, stop]))
        usable = batch.usable[lo:hi] - start
    violations = {
        row - start: [dataclasses.replace(v, row=row - start) for v in found]
        for row, found in batch.violations.items()
        if start <= row < stop
    }
    return Batch(
        batch.model,
        stop - start,
        usable,
        {name: values[lo:hi] for name, values in batch.outputs.items()},
        batch.decisions[lo:hi],
        violations,
        batch.prediction_ids[start:stop],
        batch.timings_ms,
        {},
        batch.insight,
        part_of=(batch, start),
    )


def _keep_quiet(task: asyncio.Task[None]) -> None:
    """Marks a batch task's exception as seen: its callers already received it."""
    if not task.cancelled():
        task.exception()
