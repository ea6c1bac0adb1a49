"""The model repository: a folder of ``<model>/<version>/model.yaml`` and which version serves."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from foretell.errors import NotFoundError, SpecError
from foretell.repository.spec import SPEC_FILE, ModelSpec, read_spec

if TYPE_CHECKING:
    from foretell.pipeline.model import Model

POLICY_FILE = "policy.yaml"


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders versions naturally: ``2 < 10``, ``1.2 < 1.10``."""
    parts = re.split(r"(\d+)", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


@dataclass(frozen=True)
class ModelVersion:
    """One version folder and its checked spec."""

    folder: Path
    spec: ModelSpec

    def load(self) -> Model:
        """Loads the artifact and builds the inference pipeline around it."""
        from foretell.pipeline.model import Model

        return Model.from_folder(self.folder, self.spec)


class Repository:
    """A model repository folder: discovery of models and versions, and the serving policy.

    A model's serving policy lives in ``<model>/policy.yaml`` as ``serve: latest`` (the default)
    or ``serve: "<version>"`` to pin one; ``pins`` given here override it.
    """

    def __init__(self, root: str | Path, pins: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFoundError(f"model repository '{self.root}' is not a folder")
        self.pins = dict(pins or {})

    def names(self) -> list[str]:
        """Model names: sub-folders that hold at least one version with a spec."""
        return sorted(
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and any((v / SPEC_FILE).is_file() for v in d.iterdir() if v.is_dir())
        )

    def versions(self, name: str) -> list[str]:
        """Versions of ``name``, oldest first."""
        folder = self._model_folder(name)
        found = [v.name for v in folder.iterdir() if v.is_dir() and (v / SPEC_FILE).is_file()]
        return sorted(found, key=version_key)

    def serving_version(self, name: str) -> str:
        """The version the policy serves: pinned if pinned, else the latest."""
        versions = self.versions(name)
        pinned = self.pins.get(name) or self._policy(name)
        if pinned is None:
            return versions[-1]
        if pinned not in versions:
            raise NotFoundError(
                f"model '{name}' is pinned to version '{pinned}', which does not exist; "
                f"versions: {', '.join(versions)}"
            )
        return pinned

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The spec of ``name`` at ``version`` (default: the serving version)."""
        chosen = version or self.serving_version(name)
        folder = self._model_folder(name) / chosen
        if not (folder / SPEC_FILE).is_file():
            raise NotFoundError(
                f"model '{name}' has no version '{chosen}'; "
                f"versions: {', '.join(self.versions(name))}"
            )
        spec = read_spec(folder)
        if spec.name != name or spec.version != chosen:
            raise SpecError(
                f"{folder / SPEC_FILE}: field 'name'/'version' says "
                f"'{spec.name}' version '{spec.version}', but the folder is '{name}/{chosen}'"
            )
        return ModelVersion(folder, spec)

    def load(self, name: str, version: str | None = None) -> Model:
        """Loads ``name`` at ``version`` (default: the serving version)."""
        return self.get(name, version).load()

    def check(self) -> list[str]:
        """Reads every spec of every version; returns one problem per line, empty if none."""
        problems: list[str] = []
        if not self.names():
            problems.append(f"{self.root}: no models found (expected <model>/<version>/model.yaml)")
        for name in self.names():
            try:
                self.serving_version(name)
            except (NotFoundError, SpecError) as exc:
                problems.append(exc.message)
            for version in self.versions(name):
                try:
                    self.get(name, version).load()
                except Exception as exc:  # every failure is reported, not just ours
                    problems.append(getattr(exc, "message", f"{name}/{version}: {exc}"))
        return problems

    def _model_folder(self, name: str) -> Path:
        folder = self.root / name
        if "/" in name or name.startswith(".") or not folder.is_dir():
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(f"model '{name}' is not in the repository; models: {known}")
        return folder

    def _policy(self, name: str) -> str | None:
        path = self._model_folder(name) / POLICY_FILE
        if not path.is_file():
            return None
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
        serve = data.get("serve", "latest") if isinstance(data, dict) else None
        if not isinstance(serve, str | int):
            raise SpecError(f"{path}: field 'serve' must be 'latest' or a version; got {serve!r}")
        return None if serve == "latest" else str(serve)
