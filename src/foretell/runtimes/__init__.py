"""Runtimes: one small module per model format, each importing its library only when used."""

from __future__ import annotations

import importlib
from pathlib import Path

from foretell.repository.spec import ModelSpec
from foretell.runtimes.base import Runtime, canonical

#: format -> "module:Class"; modules import their optional dependency only when loaded.
RUNTIMES: dict[str, str] = {
    "onnx": "foretell.runtimes.onnx:OnnxRuntime",
    "sklearn": "foretell.runtimes.sklearn:SklearnRuntime",
    "xgboost": "foretell.runtimes.xgboost:XGBoostRuntime",
    "lightgbm": "foretell.runtimes.lightgbm:LightGBMRuntime",
    "python": "foretell.runtimes.python:PythonRuntime",
    "torchscript": "foretell.runtimes.torchscript:TorchScriptRuntime",
    "uplift": "foretell.runtimes.uplift:UpliftRuntime",
    "conjugate": "foretell.runtimes.conjugate:ConjugateRuntime",
}


def runtime_class(fmt: str) -> type[Runtime]:
    """The Runtime class for a model format."""
    module, _, name = RUNTIMES[fmt].partition(":")
    cls: type[Runtime] = getattr(importlib.import_module(module), name)
    return cls


def create_runtime(spec: ModelSpec, folder: Path) -> Runtime:
    """A loaded runtime for the model version in ``folder``."""
    runtime = runtime_class(spec.format)(spec, folder)
    runtime.load()
    return runtime


__all__ = ["RUNTIMES", "Runtime", "canonical", "create_runtime", "runtime_class"]
