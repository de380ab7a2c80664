"""Small ONNX models that build the inputs qbench must recognise (issue 16), with onnx.helper.

* :func:`build_hardswish`: Conv -> HardSwish (node ``act``) -> GlobalAveragePool, opset 15. ONNX
  Runtime's pre-processing inlines the HardSwish into HardSigmoid + Mul, whose inner tensor
  ``_inlfunc_HardSwish_HS_X`` the user's model does not have.
* :func:`build_nan_after_quantization`: ``t = x * 1`` (quantized Mul), then ``log = Log(t)`` and
  ``ratio = Div(t, t)``, both left in float. On :func:`tiny_positive_samples` (values of 1e-4..1e-3
  beside a 1.0) the float model is finite, but int8 rounds the small ``t`` to 0: ``log`` becomes
  -inf and ``ratio`` NaN (0/0) on every element but the first of each sample.
* :func:`build_cancelling_variance`: a normalisation whose variance is E[x²] − E[x]², as magika's LayerNorm
  (Google's file-type detector) computes it, on :func:`offset_features` (a variation on an offset): the
  int8 rounding of the two means leaves a difference below 0, whose Sqrt is NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import PathLike, _save


def build_hardswish(path: PathLike) -> Path:
    """Conv (``conv``) -> HardSwish (``act``, output ``hs``) -> GlobalAveragePool (input ``x`` [1,3,8,8])."""
    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c"], ["hs"], name="act"),
        helper.make_node("GlobalAveragePool", ["hs"], ["y"], name="gap"),
    ]
    graph = helper.make_graph(nodes, "hardswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], [w])
    return _save(graph, path, 15)


def build_nan_after_quantization(path: PathLike) -> Path:
    """x [1,16] -> Mul by ones (``t``) -> Log (``log``) and Div(t, t) (``ratio``); see the module doc."""
    nodes = [
        helper.make_node("Mul", ["x", "ones"], ["t"], name="scale"),
        helper.make_node("Log", ["t"], ["log"], name="log"),
        helper.make_node("Div", ["t", "t"], ["ratio"], name="ratio"),
    ]
    graph = helper.make_graph(
        nodes, "nan_after_quantization", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("log", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("ratio", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(np.ones((1, 16), np.float32), "ones")])
    return _save(graph, path, 13)


def tiny_positive_samples(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 1, 16)``: element 0 is 1.0 (it sets the int8 scale near 1/255), the rest 1e-4..1e-3 (they round to 0)."""
    x = np.random.default_rng(seed).uniform(1e-4, 1e-3, (n, 1, 16)).astype(np.float32)
    x[:, 0, 0] = 1.0
    return x


def build_cancelling_variance(path: PathLike) -> Path:
    """x [1,64] -> (x − mean) / Sqrt(mean(x²) − mean²) -> y [1,64]."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[1]),
             helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["mean_sq"], name="mean_sq", axes=[1]),
             helper.make_node("Mul", ["mean", "mean"], ["sq_mean"], name="sq_mean"),
             helper.make_node("Sub", ["mean_sq", "sq_mean"], ["var"], name="variance"),
             helper.make_node("Sqrt", ["var"], ["std"], name="std"),
             helper.make_node("Sub", ["x", "mean"], ["centred"], name="centre"),
             helper.make_node("Div", ["centred", "std"], ["y"], name="normalise")]
    graph = helper.make_graph(nodes, "cancelling_variance",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    return _save(graph, path, 13)


def offset_features(n: int, seed: int) -> np.ndarray:
    """(n, 1, 64) rows each around its own offset (2..6), spread 0.05..0.5."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0.05, 0.5, (n, 1, 1))
    return (rng.uniform(2, 6, (n, 1, 1)) + spread * rng.standard_normal((n, 1, 64))).astype(np.float32)


def build_dynamic_quantized(float_path: PathLike, path: PathLike) -> Path:
    """``float_path`` quantized by onnxruntime's ``quantize_dynamic`` (ConvInteger/MatMulInteger, DynamicQuantizeLinear)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv", "MatMul"])
    return Path(path)


def load(path: PathLike) -> onnx.ModelProto:
    return onnx.load(str(path))
