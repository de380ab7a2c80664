"""A QDQ int8 model whose fusion changes when one of its int8 tensors is made a graph output.

Built with onnx.helper after the pattern in PP-OCRv4's recognizer (a LearnableAffineBlock's bias
before a depthwise conv): ``x -> Q -> DQ -> Add(DQ(constant)) -> Q -> DQ -> depthwise Conv -> Q -> DQ``.
At ORT_ENABLE_ALL, ORT (1.32) folds the Add's requantization into its integer kernels; with the Add's
QuantizeLinear output exposed, it cannot, and the model output moves by a step (about 0.02).
The float twin is the same graph without Q/DQ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import IR_VERSION

C, H, W = 64, 12, 80
INPUT_SHAPE = [1, C, H, W]


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w_scale = (rng.uniform(0.01, 0.03, C)).astype(np.float32)
    return {
        "w_q": rng.integers(-30, 30, (C, 1, 5, 5)).astype(np.int8), "w_scale": w_scale,
        "w_zp": np.zeros(C, np.int8),
        "b_q": rng.integers(-2000, 2000, C).astype(np.int32), "b_scale": (w_scale * 0.00973022).astype(np.float32),
        "b_zp": np.zeros(C, np.int32),
        "k_q": np.array([-128], np.int8), "k_scale": np.array(4.57989e-05, np.float32), "k_zp": np.array(127, np.int8),
        "x_scale": np.array(0.00973022, np.float32), "x_zp": np.array(-108, np.int8),
        "a_scale": np.array(0.00973022, np.float32), "a_zp": np.array(-107, np.int8),
        "y_scale": np.array(0.02078227, np.float32), "y_zp": np.array(39, np.int8), "r_zp": np.array(-128, np.int8),
    }


def build_affine_dwconv_int8(path: Path) -> Path:
    """The int8 QDQ model; tensor ``a_q`` (the Add's int8 output) is the one whose exposure alters the graph."""
    t = _tensors()
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["k_q", "k_scale", "k_zp"], ["k"], name="k_dequant"),
        helper.make_node("Add", ["x_dq", "k"], ["a"], name="affine_bias"),
        helper.make_node("QuantizeLinear", ["a", "a_scale", "a_zp"], ["a_q"], name="a_quant"),
        helper.make_node("DequantizeLinear", ["a_q", "a_scale", "a_zp"], ["a_dq"], name="a_dequant"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dequant", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="b_dequant", axis=0),
        helper.make_node("Conv", ["a_dq", "w", "b"], ["conv"], name="dwconv", group=C, kernel_shape=[5, 5],
                         pads=[2, 2, 2, 2]),
        helper.make_node("QuantizeLinear", ["conv", "y_scale", "y_zp"], ["conv_q"], name="conv_quant"),
        helper.make_node("DequantizeLinear", ["conv_q", "y_scale", "y_zp"], ["conv_dq"], name="conv_dequant"),
        helper.make_node("Relu", ["conv_dq"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "y_scale", "r_zp"], ["r_q"], name="relu_quant"),
        helper.make_node("DequantizeLinear", ["r_q", "y_scale", "r_zp"], ["r_dq"], name="relu_dequant"),
        helper.make_node("Transpose", ["r_dq"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("QuantizeLinear", ["t", "y_scale", "r_zp"], ["t_q"], name="t_quant"),
        helper.make_node("DequantizeLinear", ["t_q", "y_scale", "r_zp"], ["y"], name="t_dequant"),
    ]
    return _save(nodes, t, path)


def build_affine_dwconv_float(path: Path) -> Path:
    """The float model the int8 one stands for: Add(constant) -> depthwise Conv, same names."""
    t = _tensors()
    k = (t["k_q"].astype(np.float32) - float(t["k_zp"])) * t["k_scale"]
    w = t["w_q"].astype(np.float32) * t["w_scale"][:, None, None, None]
    b = t["b_q"].astype(np.float32) * t["b_scale"]
    nodes = [
        helper.make_node("Add", ["x", "k"], ["a"], name="affine_bias"),
        helper.make_node("Conv", ["a", "w", "b"], ["conv"], name="dwconv", group=C, kernel_shape=[5, 5],
                         pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["conv"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["y"], name="to_nhwc", perm=[0, 2, 3, 1]),
    ]
    return _save(nodes, {"k": k.astype(np.float32), "w": w.astype(np.float32), "b": b.astype(np.float32)}, path)


def _save(nodes: list, tensors: dict[str, np.ndarray], path: Path) -> Path:
    graph = helper.make_graph(
        nodes, "affine_dwconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, INPUT_SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, H, W, C])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def _write(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def samples(count: int, seed: int = 0) -> np.ndarray:
    """Inputs in the int8 input's range ([-0.2, 2.3] for scale 0.0097, zero point -108)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.2, 2.3, (count, *INPUT_SHAPE)).astype(np.float32)


def build_conv1d_float(path: Path, seed: int = 0) -> Path:
    """x [1,4,64] -> Conv1d (8 filters of 3) -> Relu -> Conv1d (4 of 3) -> y: a speech model's front end
    (silero VAD's encoder). Quantized, ORT's NHWC transformer runs both as channels-last QLinearConvs of 3-D
    tensors, (N, L, C)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", pads=[1, 1])]
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 64])], inits)
    return _write(graph, path)


def build_audio_front_end_float(path: Path, seed: int = 0) -> Path:
    """basic-pitch's front end (spotify's basic-pitch 0.4.0 wheel, nmp.onnx): audio [1, L, 1] -> Reshape to
    [1, 1, L] -> Slice (its strided_slice) -> four Conv1d filter banks that share one bias initializer
    ``bank``, one of them writing a tensor named ``bank1`` -> Concat -> y.

    Two patterns of that real model: onnxruntime's quantizer copies the shared bias per node as
    ``bank0``, ``bank1``, ... after the initializers' names only, so its int8 model has two tensors
    ``bank1`` and does not load; and ONNX Runtime moves the input's QuantizeLinear ahead of the Slice and
    the Reshape, so the deployed graph holds the Reshape's output as int8 levels.
    """
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array([1, 1, -1], np.int64), "flat_shape"),
             numpy_helper.from_array(np.full(6, 0.01, np.float32), "bank"),
             numpy_helper.from_array(np.array([0], np.int64), "start"),
             numpy_helper.from_array(np.array([256], np.int64), "end"),
             numpy_helper.from_array(np.array([2], np.int64), "axis")]
    nodes = [helper.make_node("Reshape", ["audio", "flat_shape"], ["flat"], name="flatten_audio"),
             helper.make_node("Slice", ["flat", "start", "end", "axis"], ["window"], name="strided_slice")]
    outs = ["bank_a", "bank1", "bank_c", "bank_d"]
    for k, out in enumerate(outs):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.2, (6, 1, 16)).astype(np.float32), f"w{k}"))
        nodes.append(helper.make_node("Conv", ["window", f"w{k}", "bank"], [out], name=f"filters_{k}", strides=[4]))
    nodes.append(helper.make_node("Concat", outs, ["y"], name="stack", axis=1))
    graph = helper.make_graph(nodes, "audio_front_end",
                              [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 256, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 24, 61])], inits)
    return _write(graph, path)


def build_fpn_float(path: Path, seed: int = 0) -> Path:
    """PP-OCR's detector neck: x [1,4,32,24] -> three convolutions at strides 1, 2, 4 -> the coarser two
    upsampled (nearest Resize) to the finest -> Concat -> 1x1 Conv -> y. Quantized, ORT runs the Concat as a
    QLinearConcat, whose inputs sit at 2 + 3k (its output scale and zero point first)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array([], np.float32), "no_roi"),
             numpy_helper.from_array(rng.normal(0, 0.2, (8, 24, 1, 1)).astype(np.float32), "w_out")]
    nodes, merged = [], []
    for k, stride in enumerate((1, 2, 4)):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), f"w{k}"))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), f"b{k}"))
        nodes.append(helper.make_node("Conv", ["x", f"w{k}", f"b{k}"], [f"level{k}"], name=f"conv{k}",
                                      strides=[stride, stride], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"level{k}"], [f"act{k}"], name=f"relu{k}"))
        if stride == 1:
            merged.append(f"act{k}")
            continue
        inits.append(numpy_helper.from_array(np.array([1, 1, stride, stride], np.float32), f"scales{k}"))
        nodes.append(helper.make_node("Resize", [f"act{k}", "no_roi", f"scales{k}"], [f"up{k}"], name=f"upsample{k}",
                                      mode="nearest"))
        merged.append(f"up{k}")
    nodes.append(helper.make_node("Concat", merged, ["merged"], name="concat", axis=1))
    nodes.append(helper.make_node("Conv", ["merged", "w_out"], ["y"], name="conv_out"))
    graph = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 32, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 24])], inits)
    return _write(graph, path)


def build_qkv_slices_float(path: Path, seed: int = 0) -> Path:
    """An SVTR attention's input (PP-OCR recognizers): x [1,16,8] -> MatMul to q, k, v side by side [1,16,24]
    -> three Slices of 8 along the last axis -> q @ k^T -> @ v -> y. Quantized, ORT fuses the three Slices and
    their QuantizeLinears into one Split named after one of them, which writes the QuantizeLinears' tensors."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 24)).astype(np.float32), "w_qkv")]
    nodes = [helper.make_node("MatMul", ["x", "w_qkv"], ["qkv"], name="to_qkv")]
    for k, part in enumerate("qkv"):
        inits += [numpy_helper.from_array(np.array([8 * k], np.int64), f"{part}_start"),
                  numpy_helper.from_array(np.array([8 * k + 8], np.int64), f"{part}_end")]
        nodes.append(helper.make_node("Slice", ["qkv", f"{part}_start", f"{part}_end", "last"], [part],
                                      name=f"slice_{part}"))
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "last"))
    nodes += [helper.make_node("Transpose", ["k"], ["k_t"], name="k_t", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "k_t"], ["scores"], name="scores"),
              helper.make_node("MatMul", ["scores", "v"], ["y"], name="attend")]
    graph = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8])], inits)
    return _write(graph, path)
