"""Model repository: specs, versions and the reference statistics of training data."""

from foretell.repository.spec import Feature, ModelSpec, read_spec, write_spec
from foretell.repository.store import ModelVersion, Repository

__all__ = ["Feature", "ModelSpec", "ModelVersion", "Repository", "read_spec", "write_spec"]
