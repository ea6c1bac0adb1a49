"""The Runtime interface every model format implements, and the shape of what it returns."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from foretell.errors import ForetellError, ModelLoadError, UnsafeModelError
from foretell.repository.spec import ModelSpec

#: What ``Runtime.predict`` returns, by task: the canonical raw outputs the pipeline expects.
RAW_OUTPUTS: dict[str, str] = {
    "classification": "probabilities: (rows, classes) float",
    "text_classification": "probabilities: (rows, classes) float",
    "regression": "value: (rows,) float",
    "clustering": "cluster: (rows,) int, and distances: (rows, clusters) float when known",
    "anomaly_detection": "score: (rows,) float, higher is more anomalous",
    "recommendation": "scores: (rows, items) float",
    "uplift": "outcome_treated, outcome_control, effect, effect_low, effect_high: (rows,) float "
    "each (a dict, or the five as columns of a (rows, 5) array)",
}
#: An uplift model's raw outputs, in the column order of a (rows, 5) array.
UPLIFT_OUTPUTS = ("outcome_treated", "outcome_control", "effect", "effect_low", "effect_high")


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Runtime(ABC):
    """One model format: ``load()`` reads the artifact, ``predict(x)`` runs the forward pass.

    ``x`` is a 2-D float64 array of features in the order the pipeline encodes them, or, for
    text models, a 1-D object array of strings. A runtime knows nothing of HTTP, files or
    streams; it returns one array (or a dict of named arrays) that :func:`canonical` maps to
    the raw outputs listed in :data:`RAW_OUTPUTS`.
    """

    format: ClassVar[str]

    def __init__(self, spec: ModelSpec, folder: Path) -> None:
        self.spec = spec
        self.folder = folder
        self.options: dict[str, Any] = dict(spec.runtime)

    @property
    def artifact(self) -> Path:
        return self.folder / self.spec.artifact

    @property
    def runs_code(self) -> bool:
        """Whether reading this artifact can run arbitrary code (then it must be trusted)."""
        return False

    def check_artifact(self) -> Path:
        """Refuses artifacts that are missing, outside the folder, tampered or untrusted code."""
        path = self.artifact
        where = f"{self.spec.name}/{self.spec.version}"
        resolved, root = path.resolve(), self.folder.resolve()
        if not resolved.is_relative_to(root):
            raise ModelLoadError(f"{where}: artifact '{self.spec.artifact}' leaves the folder")
        if not path.is_file():
            raise ModelLoadError(f"{where}: artifact '{self.spec.artifact}' does not exist")
        if self.runs_code and not self.spec.trusted:
            raise UnsafeModelError(
                f"{where}: refusing to load '{self.spec.artifact}': loading this {self.format} "
                "artifact runs code from the file; if you trust its author, set 'trusted: true' "
                "in model.yaml"
            )
        if self.spec.sha256 and file_sha256(path) != self.spec.sha256:
            raise ModelLoadError(
                f"{where}: artifact '{self.spec.artifact}' does not match the sha256 in "
                "model.yaml; the file changed since the spec was written"
            )
        return path

    def load(self) -> None:
        """Checks the artifact, then reads it with the format's library."""
        path = self.check_artifact()
        try:
            self._load(path)
        except ForetellError:
            raise
        except Exception as exc:  # every library has its own errors for a broken file
            raise ModelLoadError(
                f"{self.spec.name}/{self.spec.version}: cannot read {self.format} artifact "
                f"'{self.spec.artifact}': {type(exc).__name__}: {exc}"
            ) from exc

    @abstractmethod
    def _load(self, path: Path) -> None:
        """Reads the checked artifact at ``path``."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """Runs the forward pass on a batch."""


def canonical(task: str, raw: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a runtime's answer to the task's raw outputs (see :data:`RAW_OUTPUTS`)."""
    if isinstance(raw, dict):
        return {k: np.asarray(v) for k, v in raw.items()}
    out = np.asarray(raw)
    if task in ("classification", "text_classification"):
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim == 1:  # a binary model's probability of the positive class
            out = np.column_stack([1.0 - out, out])
        return {"probabilities": out.astype(np.float64, copy=False)}
    if task == "regression":
        return {"value": out.reshape(len(out), -1)[:, 0].astype(np.float64, copy=False)}
    if task == "anomaly_detection":
        return {"score": out.reshape(len(out), -1)[:, 0].astype(np.float64, copy=False)}
    if task == "clustering":
        if out.ndim == 2:
            return {"cluster": out.argmin(axis=1), "distances": out.astype(np.float64)}
        return {"cluster": out.astype(np.int64)}
    if task == "uplift":
        columns = out.reshape(len(out), -1).astype(np.float64, copy=False)
        return {name: columns[:, j] for j, name in enumerate(UPLIFT_OUTPUTS[: columns.shape[1]])}
    return {"scores": out.astype(np.float64, copy=False)}
