"""The data plane: the models a server holds and their state, shared by every transport."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from foretell.errors import ForetellError, ModelLoadError, NotFoundError, TooLargeError
from foretell.monitoring.metrics import ServingMetrics
from foretell.monitoring.monitor import Monitor
from foretell.pipeline import Model, Prediction
from foretell.pipeline.rows import Rows
from foretell.repository import Repository
from foretell.serving.batching import Batcher
from foretell.serving.workers import Siblings, all_ready

log = logging.getLogger("foretell.serving")


@dataclass
class ModelState:
    """One model's serving version and whether it loaded, with the reason when it did not."""

    name: str
    version: str | None
    model: Model | None = None
    reason: str = ""
    load_seconds: float = 0.0
    #: Unloaded on request: not served, and not counted against readiness.
    unloaded: bool = False
    in_flight: int = 0

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def state(self) -> str:
        """The model repository extension's state name."""
        return "READY" if self.ready else "UNAVAILABLE"


class DataPlane:
    """Loads every model of a repository and answers predictions; knows nothing of the wire."""

    #: How long an unload waits for in-flight requests of the model to finish.
    DRAIN_SECONDS = 30.0
    #: The most rows one request may carry (``foretell serve --max-rows``).
    max_rows = 100_000

    def check_rows(self, rows: int) -> None:
        """Refuses a request of more than :attr:`max_rows` rows."""
        if rows > self.max_rows:
            raise TooLargeError(
                f"the request has {rows:,} rows; this server takes at most {self.max_rows:,} "
                "per request (send several requests, or use foretell batch)"
            )

    def __init__(
        self,
        repository: Repository,
        metrics: ServingMetrics | None = None,
        monitor: Monitor | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics or ServingMetrics()
        self.monitor = monitor
        self.states: dict[str, ModelState] = {}
        self._changed = threading.Condition()
        #: Merges concurrent requests per model (``batching`` in model.yaml, or the CLI's).
        self.batcher = Batcher()
        #: The other workers of ``foretell serve --workers N``, told of loads and unloads.
        self.siblings: Siblings | None = None

    def load_all(self) -> None:
        """Loads the serving version of every model; a failure marks that model not ready."""
        for name in self.repository.names():
            self.states[name] = self._load(name)

    def load(self, name: str) -> ModelState:
        """(Re)loads ``name``'s serving version; requests in flight finish on the old one."""
        if name not in self.repository.names():
            raise NotFoundError(
                f"model '{name}' is not in the repository; models: "
                f"{', '.join(self.repository.names()) or 'none'}"
            )
        state = self._load(name)
        with self._changed:  # requests in flight keep the old state and its model
            self.states[name] = state
        return state

    def unload(self, name: str) -> None:
        """Stops serving ``name`` after its in-flight requests finish (bounded wait)."""
        with self._changed:
            state = self.states.get(name)
            if state is None:
                raise NotFoundError(f"model '{name}' is not served here")
            state.unloaded = True
            state.reason = "unloaded"
            self._changed.wait_for(lambda: state.in_flight == 0, timeout=self.DRAIN_SECONDS)
            state.model = None
        self.metrics.model_state(name, state.version, False, state.load_seconds)

    def change(self, action: str, name: str) -> None:
        """Applies a change shared by another worker: ``load`` or ``unload`` model ``name``."""
        if action == "load":
            self.load(name)
        elif action == "unload":
            self.unload(name)
        else:
            raise ValueError(f"unknown change {action!r}")

    async def load_everywhere(self, name: str) -> ModelState:
        """:meth:`load` (in a thread), then the same on every other worker."""
        state = await asyncio.to_thread(self.load, name)
        await self.share("load", name)
        return state

    async def unload_everywhere(self, name: str) -> None:
        """:meth:`unload` (in a thread), then the same on every other worker."""
        await asyncio.to_thread(self.unload, name)
        await self.share("unload", name)

    async def share(self, action: str, name: str) -> None:
        """Tells the other workers (if any) of a :meth:`change` made here; returns once they
        have made it too."""
        if self.siblings is not None:
            lagging = await self.siblings.tell(action, name)
            if lagging:
                log.warning(
                    "workers %s had not applied %s of model %s after %.0f s",
                    lagging,
                    action,
                    name,
                    self.siblings.WAIT_SECONDS,
                )

    def using(self, name: str, version: str | None = None) -> InFlight:
        """The model ``name`` (``with plane.using(name) as model``), counted as in flight
        until the block ends."""
        return InFlight(self, name, version)

    def index(self) -> list[dict[str, Any]]:
        """Every model of the repository with its state and the reason when not ready."""
        entries = []
        for name in self.repository.names():
            state = self.states.get(name)
            entry: dict[str, Any] = {"name": name}
            if state is None:
                entry.update(state="UNAVAILABLE", reason="not loaded")
            else:
                if state.version:
                    entry["version"] = state.version
                entry["state"] = state.state
                if state.reason:
                    entry["reason"] = state.reason
            entries.append(entry)
        return entries

    def _load(self, name: str) -> ModelState:
        started = time.perf_counter()
        state = ModelState(name, None)
        try:
            state.version = self.repository.serving_version(name)
            state.model = self.repository.load(name, state.version)
        except ForetellError as exc:
            state.reason = exc.message
            log.error("model %s failed to load: %s", name, exc.message)
        except Exception as exc:  # a broken artifact must not take the server down
            state.reason = f"{type(exc).__name__}: {exc}"
            log.exception("model %s failed to load", name)
        state.load_seconds = time.perf_counter() - started
        if state.model is not None:
            state.model.observers.append(self.metrics.observe_batch)
            if self.monitor is not None:
                self.monitor.attach(state.model)
        self.metrics.model_state(name, state.version, state.ready, state.load_seconds)
        return state

    def ready(self) -> bool:
        """True when at least one model is served, every model not unloaded is loaded and,
        with ``--workers``, every worker serves."""
        wanted = [s for s in self.states.values() if not s.unloaded]
        return bool(wanted) and all(s.ready for s in wanted) and all_ready()

    def model(self, name: str, version: str | None = None) -> Model:
        """The loaded model ``name``; ``version`` must be the one served, when given."""
        state = self.states.get(name)
        if state is None:
            known = ", ".join(sorted(self.states)) or "none"
            raise NotFoundError(f"model '{name}' is not served here; models: {known}")
        if state.model is None:
            raise ModelLoadError(f"model '{name}' is not ready: {state.reason}")
        if version is not None and version != state.model.version:
            raise NotFoundError(
                f"model '{name}' serves version '{state.model.version}', not '{version}'"
            )
        return state.model

    def predict(
        self,
        name: str,
        rows: Rows,
        version: str | None = None,
        *,
        explain: bool = False,
        confidence: float | None = None,
    ) -> list[Prediction]:
        with self.using(name, version) as model:
            return model.predict(rows, explain=explain, confidence=confidence)

    async def predict_async(
        self, name: str, rows: Rows, version: str | None = None, **options: Any
    ) -> list[Prediction]:
        """:meth:`predict` for the transports: through :attr:`batcher`, which may merge the
        rows with concurrent requests' into one forward pass."""
        with self.using(name, version) as model:
            return await self.batcher.predict(model, rows, **options)

    def describe(self, name: str) -> dict[str, Any]:
        """A model's spec summary and input schema."""
        spec = self.model(name).spec
        return {
            "name": spec.name,
            "version": spec.version,
            "versions": self.repository.versions(name),
            "task": spec.task,
            "format": spec.format,
            "description": spec.description,
            "on_invalid": spec.on_invalid,
            "inputs": [f.model_dump(exclude_defaults=True) for f in spec.inputs],
            "labels": spec.labels,
            "decision": spec.decision.model_dump(),
        }

    def catalogue(self) -> list[dict[str, Any]]:
        """Every model: name, versions, serving version, task, format and readiness."""
        entries = []
        for name, state in sorted(self.states.items()):
            spec = state.model.spec if state.model else None
            entries.append(
                {
                    "name": name,
                    "version": state.version,
                    "versions": self.repository.versions(name),
                    "task": spec.task if spec else None,
                    "format": spec.format if spec else None,
                    "ready": state.ready,
                    **({"reason": state.reason} if state.reason else {}),
                }
            )
        return entries


class InFlight:
    """The context of :meth:`DataPlane.using`: a class rather than a generator, since every
    request passes through it."""

    def __init__(self, plane: DataPlane, name: str, version: str | None) -> None:
        self.plane, self.name, self.version = plane, name, version

    def __enter__(self) -> Model:
        plane = self.plane
        with plane._changed:
            model = plane.model(self.name, self.version)
            self.state = plane.states[self.name]
            self.state.in_flight += 1
        self.gauge = plane.metrics.child(plane.metrics.in_flight, self.name)
        self.gauge.inc()
        return model

    def __exit__(self, *exc: object) -> None:
        self.gauge.dec()
        changed = self.plane._changed
        with changed:
            self.state.in_flight -= 1
            if self.state.unloaded:  # an unload waits for the last request in flight
                changed.notify_all()
