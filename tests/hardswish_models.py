"""A PP-LCNet-style float net built with onnx.helper: convolutions with HardSwish, and a squeeze-excitation block.

``x (1,3,32,32) -> conv1 3x3 -> HardSwish -> dw 3x3 (depthwise) -> HardSwish -> SE -> pw 1x1 -> HardSwish
-> GlobalAveragePool -> Flatten -> fc (Gemm) -> y``, the SE block being ``GlobalAveragePool -> se1 1x1 -> Relu
-> se2 1x1 -> HardSigmoid -> Mul`` with the dw output. HardSwish is the opset-14 op, which ONNX Runtime's
pre-processing inlines as ``x * HardSigmoid(x)``: four HardSigmoid gates in all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import IR_VERSION

CONVS = ("conv1", "dw", "se1", "se2", "pw")
GATES = 4  # three HardSwish and the SE block's HardSigmoid


def _w(seed: int, *shape: int, scale: float = 0.4) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def build_hardswish_se(path) -> Path:
    make = helper.make_node
    nodes = [
        make("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        make("HardSwish", ["c1"], ["h1"], name="hardswish1"),
        make("Conv", ["h1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=16),
        make("HardSwish", ["c2"], ["h2"], name="hardswish2"),
        make("GlobalAveragePool", ["h2"], ["g"], name="se_pool"),
        make("Conv", ["g", "ws1", "bs1"], ["s1"], name="se1"),
        make("Relu", ["s1"], ["r1"], name="se_relu"),
        make("Conv", ["r1", "ws2", "bs2"], ["s2"], name="se2"),
        make("HardSigmoid", ["s2"], ["gate"], name="se_gate", alpha=1.0 / 6.0, beta=0.5),
        make("Mul", ["h2", "gate"], ["e"], name="se_scale"),
        make("Conv", ["e", "w3", "b3"], ["c3"], name="pw"),
        make("HardSwish", ["c3"], ["h3"], name="hardswish3"),
        make("GlobalAveragePool", ["h3"], ["p"], name="pool"),
        make("Flatten", ["p"], ["f"], name="flatten"),
        make("Gemm", ["f", "wf", "bf"], ["y"], name="fc"),
    ]
    inits = {"w1": _w(1, 16, 3, 3, 3), "b1": _w(2, 16, scale=0.5), "w2": _w(3, 16, 1, 3, 3), "b2": _w(4, 16, scale=0.5),
             "ws1": _w(5, 4, 16, 1, 1), "bs1": _w(6, 4, scale=0.1), "ws2": _w(7, 16, 4, 1, 1), "bs2": _w(8, 16),
             "w3": _w(9, 24, 16, 1, 1, scale=0.3), "b3": _w(10, 24, scale=0.5), "wf": _w(11, 24, 10), "bf": _w(12, 10)}
    graph = helper.make_graph(nodes, "hardswish_se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=IR_VERSION,
                              producer_name="qbench-tests")
    onnx.save(model, str(path))
    return Path(path)


def calibration(count: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": (np.random.default_rng(seed).standard_normal((count, 1, 3, 32, 32)) * 2).astype(np.float32)}
