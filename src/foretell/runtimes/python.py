"""A user's own Python class, imported from a file in the version folder (needs trust)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from foretell.errors import ModelLoadError
from foretell.runtimes.base import Runtime


class PythonRuntime(Runtime):
    """Imports class ``runtime.class`` from the artifact (a ``.py`` file) and instantiates it.

    The class is built with the version folder as its only argument and must have
    ``predict(x)`` returning the task's raw outputs. Importing a file runs it, so the spec
    must say ``trusted: true``.
    """

    format = "python"

    @property
    def runs_code(self) -> bool:
        return True

    def _load(self, path: Path) -> None:
        class_name = self.options.get("class")
        if not isinstance(class_name, str):
            raise ModelLoadError(
                f"{self.spec.name}: a 'python' model needs runtime option 'class', the name "
                f"of the class in {path.name}"
            )
        raw = f"foretell_user_model_{self.spec.name}_{self.spec.version}"
        module_name = re.sub(r"\W", "_", raw)
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ModelLoadError(f"{self.spec.name}: {path.name} is not an importable file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up here
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        cls = getattr(module, class_name, None)
        if cls is None:
            raise ModelLoadError(f"{self.spec.name}: {path.name} has no class '{class_name}'")
        self.model: Any = cls(self.folder)
        if not callable(getattr(self.model, "predict", None)):
            raise ModelLoadError(f"{self.spec.name}: class '{class_name}' has no predict(x)")

    def predict(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        result = self.model.predict(x)
        if isinstance(result, dict):
            return {str(k): np.asarray(v) for k, v in result.items()}
        return np.asarray(result)
