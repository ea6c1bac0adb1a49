"""foretell: serve trained models, score tables and streams, and close the feedback loop."""

from __future__ import annotations

import importlib as _importlib
import typing as _typing
from pathlib import Path

from foretell.errors import (
    ForetellError,
    InputFormatError,
    MissingExtraError,
    ModelLoadError,
    NotFoundError,
    SpecError,
    UnsafeModelError,
    UserError,
    ValidationError,
    Violation,
)

if _typing.TYPE_CHECKING:
    from foretell.client import AsyncClient, Client
    from foretell.pipeline import Model, Prediction
    from foretell.repository import ModelSpec, Repository

__version__ = "0.1.0"


def load(path: str | Path, version: str | None = None) -> Model:
    """Loads a model from a version folder (holding model.yaml) or a model folder.

    Given a model folder (``REPO/<name>``), the version its policy serves is loaded, or
    ``version`` when given.
    """
    from foretell.pipeline import Model
    from foretell.repository import Repository

    folder = Path(path).resolve()
    if (folder / "model.yaml").is_file():
        model = Model.from_folder(folder)
        if version is not None and version != model.version:
            raise NotFoundError(f"'{folder}' holds version '{model.version}', not '{version}'")
        return model
    if not folder.is_dir():
        raise NotFoundError(f"'{folder}' is not a folder; expected a model or version folder")
    return Repository(folder.parent).load(folder.name, version)


#: The names imported on first use, and their modules: the clients' HTTP library costs a
#: server 17 MiB, and the pipeline's numerical libraries cost every command a second before
#: it starts, in an order the command cannot choose (see ``foretell serve``).
_ON_USE = {
    "AsyncClient": "foretell.client",
    "Client": "foretell.client",
    "Model": "foretell.pipeline",
    "ModelSpec": "foretell.repository",
    "Prediction": "foretell.pipeline",
    "Repository": "foretell.repository",
}


def __getattr__(name: str) -> object:
    """The names of :data:`_ON_USE`, imported on first use."""
    module = _ON_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'foretell' has no attribute '{name}'")
    return getattr(_importlib.import_module(module), name)


__all__ = [
    "AsyncClient",
    "Client",
    "ForetellError",
    "InputFormatError",
    "MissingExtraError",
    "Model",
    "ModelLoadError",
    "ModelSpec",
    "NotFoundError",
    "Prediction",
    "Repository",
    "SpecError",
    "UnsafeModelError",
    "UserError",
    "ValidationError",
    "Violation",
    "__version__",
    "load",
]
