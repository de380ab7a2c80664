"""The demo model: a small conv net with a squeeze-and-excite block and a softmax head.

Squeeze-and-excite and softmax are where the seed article saw PSNR drop, so the demo
shows a real layer-wise picture. Weights are seeded; the data are smooth random images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _conv(rng, name, cin, cout, k, group=1):
    w = rng.normal(0, np.sqrt(2.0 / (cin // group * k * k)), (cout, cin // group, k, k)).astype(np.float32)
    b = rng.normal(0, 0.05, cout).astype(np.float32)
    return [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]


def build_demo_model(path: str | Path) -> Path:
    rng = np.random.default_rng(2024)
    inits, nodes = [], []

    def conv(name, x, cin, cout, k, stride=1, group=1, act="Relu"):
        inits.extend(_conv(rng, name, cin, cout, k, group))
        pad = k // 2
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, strides=[stride] * 2,
                                      pads=[pad] * 4, group=group))
        if act:
            nodes.append(helper.make_node(act, [name], [f"{name}.act"], name=f"{name}.act"))
            return f"{name}.act"
        return name

    x = conv("stem", "image", 3, 16, 3, stride=2)
    x = conv("dw1", x, 16, 16, 3, group=16)
    x = conv("pw1", x, 16, 32, 1)
    x = conv("dw2", x, 32, 32, 3, stride=2, group=32)
    x = conv("pw2", x, 32, 48, 1)
    # squeeze-and-excite: global pool -> reduce -> expand -> sigmoid gate
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["se.pool"], name="se.pool"))
    s = conv("se.reduce", "se.pool", 48, 12, 1)
    s = conv("se.expand", s, 12, 48, 1, act="Sigmoid")
    nodes.append(helper.make_node("Mul", [x, s], ["se.scale"], name="se.scale"))
    x = conv("pw3", "se.scale", 48, 64, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["head.pool"], name="head.pool"))
    nodes.append(helper.make_node("Flatten", ["head.pool"], ["head.flat"], name="head.flat"))
    w = rng.normal(0, 0.2, (64, 10)).astype(np.float32)
    inits += [numpy_helper.from_array(w, "fc.w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes.append(helper.make_node("Gemm", ["head.flat", "fc.w", "fc.b"], ["logits"], name="fc"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    graph = helper.make_graph(nodes, "qbench-demo", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                   ["batch", 3, 64, 64])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def smooth_images(n: int, seed: int) -> np.ndarray:
    """(n, 1, 3, 64, 64) float32 images: low-frequency random fields, roughly unit variance."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, 1, 3, 8, 8)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 8, axis=3), 8, axis=4) + 0.1 * rng.normal(size=(n, 1, 3, 64, 64)).astype(
        np.float32)


def write_demo(directory: str | Path) -> None:
    """model.onnx, eval.npz (8 samples) and calib.npz (32 samples) in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_demo_model(directory / "model.onnx")
    np.savez(directory / "eval.npz", image=smooth_images(8, 1))
    np.savez(directory / "calib.npz", image=smooth_images(32, 2))
