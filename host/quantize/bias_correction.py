"""Bias correction (Nagel et al. 2019, "Data-free quantization through weight equalization and bias
correction", section 4.2) of a QDQ model: the second half of the paper whose first half is
:mod:`~qbench.host.quantize.equalize`.

Rounding a layer's weights, W_q = W + ΔW, shifts the mean of its outputs: E[W_q·x] − E[W·x] = ΔW·E[x].
That shift is the same for every sample, so it does not average out downstream, and it is large
wherever the input has a large mean: log-mel features (5.8..12.3 on openwakeword's embedding model),
a wake-word head's embeddings, post-ReLU activations. The int8 model's bias of each convolution and
Gemm is corrected by that shift, per output channel:

    b_corrected = b − mean over output positions of (ΔW ⊛ E[x])

with ΔW the dequantized int8 weights minus the float model's, and E[x] the float model's input of
that layer averaged over the calibration samples, per element: a convolution of that mean map
with ΔW is the exact mean shift at every output position, the zero padding of the borders
included. The corrected bias is written back as the int32 bias it was (its scale unchanged:
ΔW's effect is far below the int32 range).

Measured on published models (``benchmarks/bias_correction.py``): oww-hey-jarvis from 31.32 to
41.6 dB output PSNR, all of it still int8, where keeping its first Gemm's weights float gives
45.1 dB. It is not always a gain: errors of several layers can cancel, and a model whose error is
mostly rounding noise gains nothing, which is why ``qbench fix`` measures it as one more remedy.

Layers corrected: Conv and Gemm (transA 0) of the QDQ graph with int8 weights and an int32 bias,
each behind a DequantizeLinear. A layer without a bias input, MatMul, ConvTranspose and layers
inside If/Loop/Scan bodies are left as they are and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .graph_maps import producers_of

_CORRECTED = ("Conv", "Gemm")
_SKIPPED = ("MatMul", "ConvTranspose")


@dataclass
class _Layer:
    node: Any  # the weighted op of the QDQ graph
    delta: np.ndarray  # dequantized int8 weights minus the float model's
    bias: Any  # the int32 bias initializer
    bias_scale: np.ndarray
    input: str  # the float model's tensor the layer reads


def correct_biases(model, float_model, calibration: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Corrects, in place, the int32 biases of ``model`` (a QDQ ModelProto quantized from ``float_model``)
    by each layer's mean output shift on ``calibration``.

    Returns:
        the report's ``bias_correction`` section: ``layers`` (corrected), ``skipped`` (weighted ops
        left as they were, with why), ``largest`` (the five layers of the largest shifts: layer,
        max |shift|, max |b|), ``samples``.
    """
    layers, skipped = _layers(model, float_model)
    means = _input_means(float_model, [layer.input for layer in layers], calibration)
    largest = []
    for layer in layers:
        shift = _shift(layer, means[layer.input])
        bias = _array(layer.bias)
        corrected = bias.astype(np.int64) - np.round(shift / layer.bias_scale).astype(np.int64)
        info = np.iinfo(np.int32)
        layer.bias.CopyFrom(_tensor(np.clip(corrected, info.min, info.max).astype(np.int32), layer.bias.name))
        largest.append({"layer": layer.node.name, "max_shift": float(np.abs(shift).max()),
                        "max_bias": float(np.abs(bias * layer.bias_scale).max())})
    largest.sort(key=lambda x: -x["max_shift"])
    return {"layers": len(layers), "skipped": skipped, "largest": largest[:5],
            "samples": len(next(iter(calibration.values()))) if calibration else 0}


def correct_file(int8_path: Path, float_path: Path, calibration: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """:func:`correct_biases` on the files, rewriting ``int8_path``."""
    import onnx

    model = onnx.load(str(int8_path))
    section = correct_biases(model, onnx.load(str(float_path)), calibration)
    onnx.save(model, str(int8_path))
    return section


def _layers(model, float_model) -> tuple[list[_Layer], list[dict[str, str]]]:
    inits = {t.name: t for t in model.graph.initializer}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node if n.name}
    made_by = producers_of(model.graph)
    layers, skipped = [], []
    for node in model.graph.node:
        if node.op_type in _SKIPPED:
            skipped.append({"layer": node.name, "why": f"{node.op_type} is not corrected"})
            continue
        if node.op_type not in _CORRECTED:
            continue
        twin = float_nodes.get(node.name)
        weight_dq = made_by.get(node.input[1])
        bias_dq = made_by.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        why = None
        if _attr(node, "transA", 0):
            why = "Gemm with transA"
        elif twin is None or twin.input[1] not in float_inits:
            why = "no float weights of that node"
        elif not _is_dq_of(weight_dq, inits, (np.int8, np.uint8)):
            why = "float weights"
        elif not _is_dq_of(bias_dq, inits, (np.int32,)):
            why = "no int32 bias"
        if why is not None:
            skipped.append({"layer": node.name, "why": why})
            continue
        weight = _array(float_inits[twin.input[1]]).astype(np.float64)
        layers.append(_Layer(node, _dequantized(weight_dq, inits) - weight, inits[bias_dq.input[0]],
                             _dequantized_scale(bias_dq, inits), twin.input[0]))
    return layers, skipped


def _input_means(float_model, names: list[str], calibration: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each tensor's mean over the calibration samples, per element (one float pass, those tensors exposed)."""
    if not names:
        return {}
    import onnx
    import onnxruntime as ort
    from onnx import helper

    exposed = onnx.ModelProto()
    exposed.CopyFrom(float_model)
    outputs = {o.name for o in exposed.graph.output}
    wanted = list(dict.fromkeys(names))
    graph_inputs = {i.name for i in exposed.graph.input}
    for name in wanted:
        if name not in outputs and name not in graph_inputs:
            exposed.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    run_names = [n for n in wanted if n not in graph_inputs]
    count = len(next(iter(calibration.values())))
    sums: dict[str, np.ndarray] = {}
    for index in range(count):
        feeds = {k: v[index] for k, v in calibration.items()}
        values = dict(zip(run_names, session.run(run_names, feeds)))
        values.update({n: feeds[n] for n in wanted if n in graph_inputs})
        for name in wanted:
            value = np.asarray(values[name], np.float64)
            sums[name] = value if name not in sums else sums[name] + value
    return {name: total / count for name, total in sums.items()}


def _shift(layer: _Layer, mean: np.ndarray) -> np.ndarray:
    """The mean output shift per output channel that ΔW adds, for an input of mean ``mean``."""
    node = layer.node
    if node.op_type == "Gemm":
        delta = layer.delta.T if _attr(node, "transB", 0) else layer.delta
        return _attr(node, "alpha", 1.0) * mean.reshape(-1, mean.shape[-1]).mean(axis=0) @ delta / _attr(node, "beta", 1.0)
    return _conv(node, layer.delta, mean).mean(axis=tuple(i for i in range(mean.ndim) if i != 1))


def _conv(node, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``node``'s convolution (attributes as given, no bias) of ``x`` with ``weight``, by ONNX Runtime (in
    float32: its CPU provider has no double Conv; the shift is far above float32's rounding)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    conv = helper.make_node("Conv", ["x", "w"], ["y"], **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    graph = helper.make_graph([conv], "shift", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_tensor(weight.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0].astype(np.float64)


def _is_dq_of(node, inits, dtypes) -> bool:
    return (node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits
            and _array(inits[node.input[0]]).dtype in [np.dtype(d) for d in dtypes])


def _dequantized(node, inits) -> np.ndarray:
    values = _array(inits[node.input[0]]).astype(np.float64)
    scale = _dequantized_scale(node, inits)
    zero = (_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 and node.input[2]
            else np.zeros_like(scale))
    if scale.ndim == 1 and values.ndim > 1:  # per channel, along the node's axis
        shape = [1] * values.ndim
        shape[_attr(node, "axis", 1)] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale


def _dequantized_scale(node, inits) -> np.ndarray:
    return _array(inits[node.input[1]]).astype(np.float64)


def _attr(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _array(tensor) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def _tensor(array: np.ndarray, name: str):
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)
