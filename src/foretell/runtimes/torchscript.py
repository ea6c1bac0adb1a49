"""PyTorch models saved as TorchScript archives (extra ``torch``, torch==2.13.0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foretell.errors import MissingExtraError
from foretell.runtimes.base import Runtime


class TorchScriptRuntime(Runtime):
    """A ``torch.jit`` archive run on the CPU without gradients.

    The module takes one float32 tensor of shape (rows, features). Classifiers may return
    logits: set runtime option ``outputs: logits`` and a softmax (a sigmoid for a single logit
    column) turns them to probabilities. ``torch.set_num_threads`` is process-wide, so option
    ``threads`` applies to every TorchScript model in the process.
    """

    format = "torchscript"

    def _load(self, path: Path) -> None:
        try:
            import torch
        except ImportError:
            raise MissingExtraError("torch", "torch", "a TorchScript model") from None
        self.torch: Any = torch
        torch.set_num_threads(int(self.options.get("threads", 1)))
        self.module = self.torch.jit.load(str(path), map_location="cpu")
        self.module.eval()
        self.logits = self.options.get("outputs") == "logits"

    def predict(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
            if self.logits:  # one logit column is a binary model's positive class
                single = out.ndim == 1 or out.shape[1] == 1
                out = torch.sigmoid(out) if single else torch.softmax(out, dim=1)
        return np.asarray(out.numpy(), dtype=np.float64)
