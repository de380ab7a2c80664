"""ONNX models, built with onnx.helper, with the patterns that keep convolutions float in int8.

* :func:`build_paddle_style`: input ``x`` [1,3,32,32]. Paddle's export patterns: a Conv without bias
  followed by a separate bias Add, Conv + BatchNormalization, HardSwish (opset 14, which ONNX
  Runtime inlines as ``x * HardSigmoid(x)``), ``x * Clip(x + 3, 0, 6) / 6`` and a residual Add:
  every conv output is read by two nodes. Conv/GlobalAveragePool/Flatten/MatMul/Softmax to
  ``probs`` [1,10]. :data:`PADDLE_MACS` holds its convolutions' and matmul's MACs, counted by hand.
* :func:`build_shape_inference_gap`: input ``x`` [1,3,8,8]; Conv/Relu/Flatten and a
  ``com.microsoft`` FusedMatMul, which ONNX Runtime runs but its symbolic shape inference cannot
  infer (it then writes ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` file into the current
  directory). Output ``y`` [1,5].
* :func:`build_upsampling_head`: input ``x`` [1,4,16,16]; Conv/Relu, an upsampling ConvTranspose
  (kernel 2, stride 2, bias: PaddleOCR's DB head), Relu/Conv to ``y`` [1,2,32,32].
* :func:`build_nothing_to_quantize`: ``y = Exp(x)``, x [1,8]: ONNX Runtime's quantizer quantizes none of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8

#: MACs per run: conv1 8x32x32 outputs x 3x3x3, conv2 (depthwise) 8x32x32 x 1x3x3, conv3 8x32x32 x 8x1x1,
#: conv4 16x16x16 x 8x3x3, matmul 1x10 outputs x 16
PADDLE_MACS = {"conv1": 8 * 32 * 32 * 27, "conv2": 8 * 32 * 32 * 9, "conv3": 8 * 32 * 32 * 8,
               "conv4": 16 * 16 * 16 * 72, "fc": 10 * 16}


def _w(seed: int, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _save(nodes, inits, inputs, outputs, path, opsets) -> Path:
    graph = helper.make_graph(nodes, Path(path).stem, inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              ir_version=IR_VERSION, producer_name="qbench-tests")
    onnx.save(model, str(path))
    return Path(path)


def build_paddle_style(path) -> Path:
    """Conv+bias Add, Conv+BN, HardSwish, x*Clip(x+3,0,6)/6 and a residual Add (see the module doc)."""
    make = helper.make_node
    nodes = [
        make("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        make("Add", ["c1", "b1"], ["a1"], name="bias1"),  # Paddle's separate bias
        make("HardSwish", ["a1"], ["h1"], name="hardswish1"),
        make("Conv", ["h1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], group=8),
        make("BatchNormalization", ["c2", "bn_s", "bn_b", "bn_m", "bn_v"], ["n2"], name="bn2"),
        make("Add", ["n2", "three"], ["p2"], name="plus3"),
        make("Clip", ["p2", "zero", "six"], ["k2"], name="clip"),
        make("Mul", ["n2", "k2"], ["m2"], name="times"),
        make("Div", ["m2", "six"], ["h2"], name="div6"),
        make("Conv", ["h2", "w3", "b3"], ["c3"], name="conv3"),
        make("Relu", ["c3"], ["r3"], name="relu3"),
        make("Add", ["r3", "h1"], ["res"], name="residual"),
        make("Conv", ["res", "w4", "b4"], ["c4"], name="conv4", pads=[1, 1, 1, 1], strides=[2, 2]),
        make("Relu", ["c4"], ["r4"], name="relu4"),
        make("GlobalAveragePool", ["r4"], ["g"], name="gap"),
        make("Flatten", ["g"], ["f"], name="flatten"),
        make("MatMul", ["f", "w5"], ["fc"], name="fc"),
        make("Softmax", ["fc"], ["probs"], name="softmax", axis=1),
    ]
    inits = {"w1": _w(1, 8, 3, 3, 3), "b1": _w(2, 1, 8, 1, 1, scale=0.1), "w2": _w(3, 8, 1, 3, 3),
             "bn_s": 1 + _w(4, 8, scale=0.1), "bn_b": _w(5, 8, scale=0.1), "bn_m": _w(6, 8, scale=0.1),
             "bn_v": 1 + np.abs(_w(7, 8, scale=0.1)), "three": np.float32(3), "zero": np.float32(0),
             "six": np.float32(6), "w3": _w(8, 8, 8, 1, 1), "b3": _w(9, 8, scale=0.1),
             "w4": _w(10, 16, 8, 3, 3, scale=0.2), "b4": _w(11, 16, scale=0.1), "w5": _w(12, 16, 10)}
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])], path, {"": 14})


def build_shape_inference_gap(path) -> Path:
    """A model ONNX Runtime runs whose symbolic shape inference stays incomplete (see the module doc)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("FusedMatMul", ["f", "m"], ["y"], name="fused_matmul", domain="com.microsoft", alpha=1.0)]
    return _save(nodes, {"w": _w(1, 4, 3, 3, 3), "m": _w(2, 256, 5)},
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], path, {"": 13, "com.microsoft": 1})


def build_upsampling_head(path) -> Path:
    """Conv, then an upsampling ConvTranspose (kernel = stride = 2) as detection heads have them."""
    make = helper.make_node
    nodes = [make("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             make("Relu", ["c1"], ["r1"], name="relu1"),
             make("ConvTranspose", ["r1", "wt", "bt"], ["up"], name="up", kernel_shape=[2, 2], strides=[2, 2]),
             make("Relu", ["up"], ["r2"], name="relu2"),
             make("Conv", ["r2", "w2", "b2"], ["y"], name="conv2")]
    inits = {"w1": _w(1, 8, 4, 3, 3), "b1": _w(2, 8, scale=0.1), "wt": _w(3, 8, 6, 2, 2), "bt": _w(4, 6, scale=0.1),
             "w2": _w(5, 2, 6, 1, 1), "b2": _w(6, 2, scale=0.1)}
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 32, 32])], path, {"": 13})


def build_nothing_to_quantize(path) -> Path:
    """``y = Exp(x)``: nothing ONNX Runtime's quantizer quantizes."""
    return _save([helper.make_node("Exp", ["x"], ["y"], name="exp")], {},
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], path, {"": 13})
