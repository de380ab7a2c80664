"""Plain onnxruntime sessions: the independent computation tests check qbench's figures against."""

from __future__ import annotations

import onnx
import onnxruntime as ort
from onnx import helper


def session(path, extra_outputs=()) -> ort.InferenceSession:
    """A session of the model at ``path`` with ``extra_outputs`` exposed, written with onnx.helper (not qbench)."""
    model = onnx.load(str(path))
    for name in extra_outputs:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
