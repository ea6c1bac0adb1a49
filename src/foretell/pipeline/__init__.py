"""The inference pipeline: validate → preprocess → forward pass → postprocess → decide."""

from foretell.pipeline.model import Model, Prediction
from foretell.pipeline.rows import Rows

__all__ = ["Model", "Prediction", "Rows"]
