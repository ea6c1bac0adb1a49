"""ONNX models, run by onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foretell.errors import ModelLoadError
from foretell.runtimes.base import Runtime

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(string)": np.object_,
}


class OnnxRuntime(Runtime):
    """An ONNX graph with one input tensor; option ``output`` names the output to use.

    Without ``output``, classifiers use the output called ``probabilities`` (skl2onnx's name,
    with ``zipmap`` off) or else the first 2-D float output, and other tasks the first output.
    """

    format = "onnx"

    def _load(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.options.get("threads", 1))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(
                f"{self.spec.name}: the ONNX graph must take one input tensor; it takes "
                f"{[i.name for i in inputs]}"
            )
        self.input_name = inputs[0].name
        self.input_dtype = _NUMPY_TYPES.get(inputs[0].type, np.float32)
        self.text_input_2d = len(inputs[0].shape or []) == 2
        self.output_name = self._choose_output()

    def _choose_output(self) -> str:
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        wanted: Any = self.options.get("output")
        if wanted is not None:
            if wanted not in names:
                raise ModelLoadError(
                    f"{self.spec.name}: runtime option 'output' is '{wanted}', "
                    f"but the graph's outputs are {names}"
                )
            return str(wanted)
        if self.spec.task in ("classification", "text_classification"):
            if "probabilities" in names:
                return "probabilities"
            for o in outputs:
                if o.type in ("tensor(float)", "tensor(double)") and len(o.shape or []) == 2:
                    return str(o.name)
        return str(names[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype is np.object_:
            feed = x.astype(object).reshape(-1, 1) if self.text_input_2d else x.astype(object)
        else:
            feed = np.ascontiguousarray(x, dtype=self.input_dtype)
        (result,) = self.session.run([self.output_name], {self.input_name: feed})
        return np.asarray(result)
