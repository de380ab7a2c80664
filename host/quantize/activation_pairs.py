"""Stores a QDQ model's int8 activations as uint8, the type ONNX Runtime's x86 kernels take.

ONNX Runtime's CPU provider on x86 has no int8 x int8 fusion in its QDQ selectors (it allows one
only on ARM): it first rewrites every int8 activation QuantizeLinear -> DequantizeLinear pair as
uint8 (``QDQS8ToU8Transformer``, zero point + 128, same scale), then fuses
DequantizeLinear -> Conv -> QuantizeLinear into ``QLinearConv`` when the input and the output are
of one type. That rewrite takes only a QuantizeLinear with exactly one consumer, and the
transformer that runs before it (``EnsureUniqueDQForNodeUnit``) gives every consumer of a shared
DequantizeLinear its own copy. So every activation read by two nodes (HardSwish, inlined as
``x * HardSigmoid(x)``; ``x * Clip(x + 3, 0, 6) / 6``; residual Adds; squeeze-excitation Muls)
stays int8 while its neighbours become uint8, and the convolutions on either side run as float
``Conv`` between DequantizeLinear and QuantizeLinear.

Doing the same rewrite in the file, for every pair, gives the same values (ONNX Runtime's
asymmetric 8-bit ranges have the same scale for both types, and the uint8 zero point is the int8
one + 128), and convolutions whose tensors fan out fuse too; ARM runs uint8 x int8 kernels as well.

The quantizer stores the constant operand of an Add or Mul (PP-OCRv4's LearnableAffineBlocks
``x * scale + bias``, Paddle's inference dropout ``x * 0.8``) as an int8 weight. ``QLinearAdd`` and
``QLinearMul`` take one type for both operands, so next to a uint8 activation each of them ran as
a float op between DequantizeLinear and QuantizeLinear (PP-OCRv4's detector: 104 of them, half its
int8 run time): :func:`unsigned_constants` stores those constants as uint8 too, the same values.
"""

from __future__ import annotations

import numpy as np

from .graph_maps import producers_of, readers_of

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def unsigned_activations(model) -> int:
    """Rewrites the int8 activation Q/DQ pairs of ``model`` (in place) as uint8; returns how many tensors.

    An activation's pair is a QuantizeLinear whose input is not an initializer, and the
    DequantizeLinear nodes that read its output; only scalar int8 zero points (per-tensor ranges) are
    rewritten. Weights (DequantizeLinear of an int8 initializer) and int16 activations stay as they are.
    """
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    readers = readers_of(graph)
    pairs = []  # (QuantizeLinear, its DequantizeLinear readers) to rewrite
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx")]:
        if q.input[0] in initializers or len(q.input) < 3 or q.output[0] in outputs:
            continue
        zero_point = initializers.get(q.input[2])
        if zero_point is None or zero_point.data_type != TensorProto.INT8 or _size(zero_point) != 1:
            continue
        dqs = readers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or len(d.input) < 3 for d in dqs):
            continue  # the quantized tensor goes elsewhere too (a graph output): leave it be
        if any(_zero_point(initializers, d) != _zero_point(initializers, q) for d in dqs):
            continue
        pairs.append((q, dqs))
    rewritten_nodes = {id(node) for q, dqs in pairs for node in (q, *dqs)}
    unsigned: dict[str, str] = {}  # int8 zero point name -> the name of its uint8 value
    for q, dqs in pairs:
        name = q.input[2]
        if name not in unsigned:
            value = (numpy_helper.to_array(initializers[name]).astype(np.int16) + 128).astype(np.uint8)
            if all(id(node) in rewritten_nodes for node in readers[name]):  # the usual case: in place, same name
                initializers[name].CopyFrom(numpy_helper.from_array(value, name))
                unsigned[name] = name
            else:  # another node still reads the int8 zero point: a uint8 twin beside it
                graph.initializer.append(numpy_helper.from_array(value, f"{name}_uint8"))
                unsigned[name] = f"{name}_uint8"
        for node in (q, *dqs):
            node.input[2] = unsigned[name]
    return len(pairs)


def _size(tensor) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1


def _zero_point(initializers, node):
    from onnx import numpy_helper

    tensor = initializers.get(node.input[2])
    return None if tensor is None else int(numpy_helper.to_array(tensor).reshape(-1)[0])


def unsigned_constants(model) -> int:
    """Rewrites (in place) the per-tensor int8 constants that only uint8-activation Adds and Muls read as uint8.

    A constant is a DequantizeLinear of an int8 initializer with a scalar scale and zero point; it is
    rewritten when every reader of its output is a default-domain Add or Mul whose other operands are
    DequantizeLinear nodes of uint8. Returns how many constants.
    """
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = producers_of(graph)
    readers = readers_of(graph)

    def is_uint8_dq(name: str) -> bool:
        dq = producers.get(name)
        zero_point = initializers.get(dq.input[2]) if dq is not None and len(dq.input) > 2 else None
        return zero_point is not None and dq.op_type == "DequantizeLinear" and zero_point.data_type == TensorProto.UINT8

    rewritten = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx")]:
        if len(dq.input) < 3 or any(name not in initializers for name in dq.input):
            continue
        levels, scale, zero_point = (initializers[name] for name in dq.input)
        if levels.data_type != TensorProto.INT8 or zero_point.data_type != TensorProto.INT8 or _size(scale) != 1 \
                or _size(zero_point) != 1:
            continue
        users = readers.get(dq.output[0], [])
        if not users or any(u.op_type not in ("Add", "Mul") or u.domain not in ("", "ai.onnx")
                            or not all(is_uint8_dq(i) for i in u.input if i != dq.output[0]) for u in users):
            continue
        for index, tensor in ((0, levels), (2, zero_point)):
            value = (numpy_helper.to_array(tensor).astype(np.int16) + 128).astype(np.uint8)
            if len(readers[tensor.name]) == 1:  # this DequantizeLinear's own: in place, same name
                tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
            else:
                graph.initializer.append(numpy_helper.from_array(value, f"{dq.name}_{tensor.name}_uint8"))
                dq.input[index] = graph.initializer[-1].name
        rewritten += 1
    return rewritten
