"""Small ONNX models for the tests, built with onnx.helper (no exporter, no download).

Each ``build_*(path)`` writes one model and returns the path. All use IR version 8 or lower because
onnx 1.23 would stamp IR 14, which onnxruntime 1.31 refuses. Weights come from fixed seeds.

* :func:`build_convnet`: Conv/Relu/Conv/Relu/Add (residual)/Conv/GlobalAveragePool/Flatten/Softmax,
  input ``x`` [1,3,16,16], output ``probs`` [1,10]; opset 13, every node named.
* :func:`build_dynamic_opset11`: opset 11, input ``x`` [N,3,H,W], Conv/Relu/ReduceMean/Squeeze/
  MatMul/Add/Softmax, output ``probs`` [N,5]; its nodes are unnamed, as some exporters leave them.
* :func:`build_two_inputs_int64`: inputs ``x`` float32 [1,16] and ``mask`` int64 [1,16]; Cast/Mul/
  MatMul/Add/Gather/Softmax to ``probs`` [1,4] and an int64 ``label`` (ArgMax) output.
* :func:`build_control_flow`: input ``x`` [1,8]; MatMul/Slice/If (on the sign of the slice's sum)/
  Cast (float16 round trip)/MatMul to ``y`` [1,4].
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
PathLike = Union[str, Path]


def _weights(seed: int, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _save(graph: onnx.GraphProto, path: PathLike, opset: int, ir_version: int = IR_VERSION) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version, producer_name="qbench-tests"
    )
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_convnet(path: PathLike) -> Path:
    """A small residual conv net ending in a softmax over 10 classes (input ``x`` [1,3,16,16])."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("Add", ["relu1", "relu2"], ["add"], name="add"),
        helper.make_node("Conv", ["add", "w3", "b3"], ["conv3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["conv3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Softmax", ["flat"], ["probs"], name="softmax", axis=1),
    ]
    initializers = [
        _init("w1", _weights(1, 8, 3, 3, 3)),
        _init("b1", _weights(2, 8, scale=0.1)),
        _init("w2", _weights(3, 8, 8, 3, 3, scale=0.2)),
        _init("b2", _weights(4, 8, scale=0.1)),
        _init("w3", _weights(5, 10, 8, 1, 1)),
        _init("b3", _weights(6, 10, scale=0.1)),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        initializers,
    )
    return _save(graph, path, opset=13)


def write_convnet_samples(folder: PathLike, seed: int) -> None:
    """``folder/eval.npz`` (3 samples) and ``folder/calib.npz`` (8) for :func:`build_convnet`'s input ``x``."""
    rng = np.random.default_rng(seed)
    np.savez(Path(folder) / "eval.npz", x=rng.normal(size=(3, 1, 3, 16, 16)).astype(np.float32))
    np.savez(Path(folder) / "calib.npz", x=rng.normal(size=(8, 1, 3, 16, 16)).astype(np.float32))


def build_dynamic_opset11(path: PathLike) -> Path:
    """Opset 11, dynamic batch and spatial dims, unnamed nodes (input ``x`` [N,3,H,W]).

    Squeeze takes ``axes`` as an attribute before opset 13 and Softmax flattens differently, so the
    upgrade to 13 has real work to do.
    """
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("ReduceMean", ["relu1"], ["mean"], axes=[2, 3], keepdims=1),
        helper.make_node("Squeeze", ["mean"], ["feat"], axes=[2, 3]),
        helper.make_node("MatMul", ["feat", "w2"], ["mm"]),
        helper.make_node("Add", ["mm", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    initializers = [
        _init("w1", _weights(11, 6, 3, 3, 3)),
        _init("b1", _weights(12, 6, scale=0.1)),
        _init("w2", _weights(13, 6, 5)),
        _init("b2", _weights(14, 5, scale=0.1)),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic_opset11",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5])],
        initializers,
    )
    return _save(graph, path, opset=11, ir_version=6)


def build_two_inputs_int64(path: PathLike) -> Path:
    """Float features ``x`` [1,16] masked by an int64 ``mask`` [1,16]; outputs ``probs`` and ``label``.

    A mask of ones (what random data gives int inputs) leaves ``x`` unchanged. ``label`` is the int64
    ArgMax of the logits, an output that must be compared exactly rather than by PSNR.
    """
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask_f"], name="cast_mask", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "mask_f"], ["masked"], name="mul_mask"),
        helper.make_node("MatMul", ["masked", "w1"], ["hidden_mm"], name="fc1"),
        helper.make_node("Add", ["hidden_mm", "b1"], ["hidden"], name="fc1_bias"),
        helper.make_node("Relu", ["hidden"], ["hidden_relu"], name="relu"),
        helper.make_node("Gather", ["hidden_relu", "keep"], ["kept"], name="gather_units", axis=1),
        helper.make_node("MatMul", ["kept", "w2"], ["logits_mm"], name="fc2"),
        helper.make_node("Add", ["logits_mm", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    initializers = [
        _init("w1", _weights(21, 16, 12)),
        _init("b1", _weights(22, 12, scale=0.1)),
        _init("keep", np.array([0, 2, 3, 5, 7, 8, 10, 11], dtype=np.int64)),
        _init("w2", _weights(23, 8, 4)),
        _init("b2", _weights(24, 4, scale=0.1)),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs_int64",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 16]),
        ],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
        ],
        initializers,
    )
    return _save(graph, path, opset=13)


def build_control_flow(path: PathLike) -> Path:
    """MatMul -> Slice -> If (data-dependent branch) -> Cast round trip -> MatMul (input ``x`` [1,8]).

    The If condition depends on the input's values, so no optimizer can fold it away: the branch
    bodies stay subgraphs, which ONNX Runtime's QDQ quantizer leaves in float.
    """
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["sliced"], ["then_out"], name="then_relu")],
        "then_branch",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 8])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Neg", ["sliced"], ["neg"], name="else_neg"),
            helper.make_node("Relu", ["neg"], ["else_out"], name="else_relu"),
        ],
        "else_branch",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 8])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Slice", ["h", "starts", "ends", "axes"], ["sliced"], name="slice"),
        helper.make_node("ReduceSum", ["sliced"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="is_positive"),
        helper.make_node(
            "If", ["positive"], ["branch"], name="branch", then_branch=then_branch, else_branch=else_branch
        ),
        helper.make_node("Cast", ["branch"], ["half"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["half"], ["rounded"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["rounded", "w2"], ["y"], name="fc2"),
    ]
    initializers = [
        _init("w1", _weights(31, 8, 16)),
        _init("starts", np.array([0], dtype=np.int64)),
        _init("ends", np.array([8], dtype=np.int64)),
        _init("axes", np.array([1], dtype=np.int64)),
        _init("zero", np.array(0.0, dtype=np.float32)),
        _init("w2", _weights(32, 8, 4)),
    ]
    graph = helper.make_graph(
        nodes,
        "control_flow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializers,
    )
    return _save(graph, path, opset=13)
