"""Keeps the convolutions and Gemms of a QDQ model that are meant to stay float, float in ONNX Runtime.

Leaving an op out of quantization (``nodes_to_exclude``, or a trial's float weights) leaves its
weights float, but ONNX Runtime undoes that when it loads the model: its basic-level
``WeightBiasQuantization`` transformer takes every Conv, ConvTranspose and Gemm whose input comes
from a per-tensor DequantizeLinear, whose output goes to a QuantizeLinear (through Relu or Clip
only) and whose weight is a float initializer, quantizes the weight per tensor (symmetric int8)
and its bias to int32, and the QDQ fusion then runs it as ``QLinearConv``: coarser than the
per-channel weights of the op's quantized form, the opposite of what leaving it out was for. On
PP-LCNet, excluding one convolution so made the int8 model worse (top-1 agreement 0.77 instead of 0.90).

The transformer takes an op only when its bias, if any, is an initializer. :func:`keep_float`
gives each such op its bias as ``DequantizeLinear`` of int32 levels (a zero bias when it had none):
ONNX Runtime does not fold a DequantizeLinear into a constant while its QDQ fusions are on, so the
op keeps its float weights and runs as a float kernel. The bias is the same up to
``max|bias| / 2**30``, far below float32 rounding of the op's sums.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .graph_maps import producers_of, set_nodes

_OPS = ("Conv", "ConvTranspose", "Gemm")
#: int32 levels of the largest bias magnitude (headroom below 2**31 for rounding)
_BIAS_LEVELS = 2**30


def keep_float(model, names: Iterable[str]) -> list[str]:
    """Gives each named Conv/ConvTranspose/Gemm of ``model`` whose weight is a float initializer and
    whose input is dequantized a dequantized bias, in place, so ONNX Runtime does not quantize its
    weights when it loads the model. Returns the names of the ops changed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    wanted = set(names)
    inits = {t.name: t for t in graph.initializer}
    producer = producers_of(graph)
    changed, added = [], {}
    for node in graph.node:
        if node.name not in wanted or node.op_type not in _OPS or node.domain not in ("", "ai.onnx"):
            continue
        weight = inits.get(node.input[1])
        source = producer.get(node.input[0])
        if weight is None or weight.data_type != TensorProto.FLOAT or source is None \
                or source.op_type != "DequantizeLinear":
            continue
        has_bias = len(node.input) > 2 and node.input[2]
        if has_bias and node.input[2] not in inits:
            continue  # the bias is computed: ONNX Runtime leaves the op alone already
        bias = numpy_helper.to_array(inits[node.input[2]]) if has_bias else np.zeros(_outputs(node, weight), np.float32)
        scale = float(np.abs(bias).max(initial=0.0)) / _BIAS_LEVELS or 1.0
        levels = np.round(bias.astype(np.float64) / scale).astype(np.int32)
        base = f"{node.name}_float_bias"
        graph.initializer.extend([numpy_helper.from_array(levels, f"{base}_quantized"),
                                  numpy_helper.from_array(np.array(scale, np.float32), f"{base}_scale")])
        added[id(node)] = helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale"], [base],
                                           name=f"{base}_DequantizeLinear")
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = base
        changed.append(node.name)
    if added:
        set_nodes(graph, [n for node in graph.node for n in ([added[id(node)]] if id(node) in added else []) + [node]])
    return changed


def _outputs(node, weight) -> int:
    """The op's output channels (its bias length) from its weight's shape."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    dims = list(weight.dims)
    if node.op_type == "Conv":
        return dims[0]
    if node.op_type == "ConvTranspose":
        return dims[1] * attrs.get("group", 1)
    return dims[0] if attrs.get("transB", 0) else dims[1]
