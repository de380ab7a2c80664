"""An Add or Mul with a constant next to a uint8 activation runs as QLinearAdd/QLinearMul.

The net, built here: ``x -> conv1 -> Relu -> Mul(scale) -> Add(bias) -> conv2 -> y``, the affine pair
after the Relu as PP-OCRv4's LearnableAffineBlocks (a Relu between keeps ONNX Runtime from folding
it into conv1). Known answer: the graph ONNX Runtime (CPU, default level) saves after optimizing.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from models import IR_VERSION
from plain_ort import session
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.quantize.prepare import prepare_float


def _build(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(8) * 0.3,
             "scale": np.array([1.3]), "bias": np.array([-0.4]), "w2": rng.standard_normal((8, 8, 1, 1)) * 0.4}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Mul", ["r1", "scale"], ["m"], name="affine_scale"),
             helper.make_node("Add", ["m", "bias"], ["a"], name="affine_bias"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION), str(path))
    return path


def test_constant_operands_are_stored_as_uint8_and_fuse(tmp_path):
    prepared = prepare_float(_build(tmp_path / "affine.onnx"), {}, tmp_path)
    x = np.random.default_rng(1).standard_normal((8, 1, 3, 16, 16)).astype(np.float32)
    int8 = quantize_onnx(prepared.path, tmp_path / "affine.int8.onnx", {"x": x})
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops["QLinearMul"] == 1 and ops["QLinearAdd"] == 1 and ops["QLinearConv"] == 2, ops
    assert "Mul" not in ops and "Add" not in ops, ops
    ref, got = session(prepared.path), session(int8)
    for sample in x[:3]:
        want = ref.run(None, {"x": sample})[0]
        psnr = 10 * np.log10(np.abs(want).max() ** 2 / np.mean((got.run(None, {"x": sample})[0] - want) ** 2))
        assert psnr > 30
