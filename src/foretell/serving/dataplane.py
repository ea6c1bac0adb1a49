"""The data plane: the models a server holds and their state, shared by every transport."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from foretell.errors import ForetellError, ModelLoadError, NotFoundError
from foretell.pipeline import Model, Prediction
from foretell.pipeline.rows import Rows
from foretell.repository import Repository

log = logging.getLogger("foretell.serving")


@dataclass
class ModelState:
    """One model's serving version and whether it loaded, with the reason when it did not."""

    name: str
    version: str | None
    model: Model | None = None
    reason: str = ""
    load_seconds: float = 0.0

    @property
    def ready(self) -> bool:
        return self.model is not None


class DataPlane:
    """Loads every model of a repository and answers predictions; knows nothing of the wire."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.states: dict[str, ModelState] = {}

    def load_all(self) -> None:
        """Loads the serving version of every model; a failure marks that model not ready."""
        for name in self.repository.names():
            self.states[name] = self._load(name)

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
        return state

    def ready(self) -> bool:
        """True when there is at least one model and every one of them loaded."""
        return bool(self.states) and all(s.ready for s in self.states.values())

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

    def predict(self, name: str, rows: Rows, version: str | None = None) -> list[Prediction]:
        return self.model(name, version).predict(rows)

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
