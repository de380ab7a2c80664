"""Pair each float tensor with its counterpart in the int8 ONNX graph.

Rules, tried in order for every float-valued node output ``X`` of the float graph
(topological order), and for graph inputs the int8 model quantizes:

``qdq``
    The int8 graph has a ``QuantizeLinear`` whose input is ``X`` (or, for graph outputs,
    ``X_QuantizeLinear_Input``). Its int8 output is captured and dequantized with its
    own scale and zero point. The ``DequantizeLinear`` output is deliberately *not*
    captured: making it a graph output stops ONNX Runtime from fusing the Q/DQ pattern
    into int8 kernels, and the capture would then measure a float simulation.
``qoperator``
    The int8 graph has ``X_quantized`` (QOperator format, e.g. ``QLinearConv``) with
    initializers ``X_scale`` and ``X_zero_point``.
``float``
    The int8 graph computes ``X`` itself, unquantized (ops left in float).

Anything else is listed as unmatched with the reason, never dropped silently.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np
import onnx
from onnx import numpy_helper

from qbench.protocols.messages import CapturePair, QParams, StructureRequest

from ..errors import UserError
from ..models import bodies, body_nodes
from . import output_structure

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass
class Layer:
    """One compared tensor of the float graph, in topological order."""

    name: str
    op_type: str
    rule: str
    pair: CapturePair
    parents: list[str] = field(default_factory=list)
    #: the user's node and the prepared name, when the prepared model's differ (see :mod:`.names`)
    user_fields: dict[str, str] = field(default_factory=dict)


@dataclass
class Unmatched:
    name: str
    op_type: str
    reason: str
    user_fields: dict[str, str] = field(default_factory=dict)  # as in :class:`Layer`

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "op_type": self.op_type, "reason": self.reason, **self.user_fields}


@dataclass
class ControlFlow:
    """Control-flow nodes of the float graph (If/Loop/Scan; IF/WHILE in TFLite): the nodes in their
    bodies are not compared one by one.

    Attributes:
        nodes: the control-flow nodes of the main graph, as ``"<op type> <name>"``.
        body_nodes: nodes inside their bodies (nested bodies included).
        total_nodes: every node of the model, bodies included.
        quantized_bodies: whether the int8 model quantizes anything inside its bodies (ONNX Runtime's
            quantizer does not).
    """

    nodes: list[str]
    body_nodes: int
    total_nodes: int
    quantized_bodies: bool

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "body_nodes": self.body_nodes, "total_nodes": self.total_nodes,
                "share": round(self.body_nodes / self.total_nodes, 4), "quantized_bodies": self.quantized_bodies}

    def note(self) -> str:
        """One line for the terminal and ``notes``."""
        shown = ", ".join(self.nodes[:3]) + (f" and {len(self.nodes) - 3} more" if len(self.nodes) > 3 else "")
        what = "not compared" if self.quantized_bodies else "float in the int8 model (not quantized) and not compared"
        return (f"{self.body_nodes} of the model's {self.total_nodes} nodes "
                f"({100 * self.body_nodes / self.total_nodes:.0f}%) sit inside the bodies of {shown}: "
                f"{what} one by one; only the outputs of the control-flow node(s) are")


@dataclass
class Matching:
    layers: list[Layer]
    outputs: list[Layer]
    unmatched: list[Unmatched]
    control_flow: ControlFlow | None = None

    def pairs(self) -> list[CapturePair]:
        """Every pair to capture: layers first, then model outputs."""
        return [layer.pair for layer in self.layers] + [out.pair for out in self.outputs]


class _Graph:
    """Lookups over one graph; tensor types from ``typed`` (e.g. ``infer(model)``) when given."""

    def __init__(self, model: onnx.ModelProto, typed: onnx.GraphProto | None = None):
        graph = model.graph
        typed = graph if typed is None else typed
        self.nodes = list(graph.node)
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.types = {}
        for vi in [*typed.input, *typed.output, *typed.value_info]:
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] if tt.HasField("shape") else None
            self.types[vi.name] = (tt.elem_type, dims)
        for t in graph.initializer:
            self.types[t.name] = (t.data_type, list(t.dims))
        self.inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.outputs = [o.name for o in graph.output]

    def is_float(self, name: str) -> bool | None:
        elem = self.types.get(name, (0, None))[0]
        return None if elem == 0 else elem in _FLOAT_TYPES

    def nbytes(self, name: str) -> int | None:
        elem, dims = self.types.get(name, (0, None))
        if not elem or dims is None or any(d is None for d in dims):
            return None
        return int(np.prod(dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None


def load_model(path: Union[str, os.PathLike]) -> onnx.ModelProto:
    """``onnx.load(path)``, parsed once per version of the file (its size and modification time).

    A run reads each model for matching and again for its weights; both get the same object,
    so callers must not modify it.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _load(str(resolved), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)  # the float and the int8 model of a run: a large model is held only once
def _load(path: str, size: int, mtime_ns: int) -> onnx.ModelProto:
    return onnx.load(path)


#: initializers with at least this many elements lose their values for shape inference: no op reads
#: a tensor that large to find its output's shape (shapes, axes, pads and scales have a few elements)
_INFER_WITHOUT_VALUES = 1024
_TENSOR_VALUES = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def infer(model: onnx.ModelProto) -> onnx.GraphProto:
    """The graph with the types and sizes of its intermediates; the model's own graph if inference fails.

    Inference runs on a copy whose large initializers keep their type and shape but not their
    values: onnx serializes the model it infers, and without the weights that takes a fraction of
    the time, for the same types. Read only the returned graph's types (``input``, ``output``,
    ``value_info``): its large initializers are empty.
    """
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for tensor in skeleton.graph.initializer:
        if math.prod(tensor.dims) >= _INFER_WITHOUT_VALUES:
            for values in _TENSOR_VALUES:
                tensor.ClearField(values)
    try:
        return onnx.shape_inference.infer_shapes(skeleton).graph
    except Exception:  # inference is a nicety here: matching still works by name
        return model.graph


def output_structures(float_model: onnx.ModelProto) -> dict[str, StructureRequest]:
    """What the agent measures of each float output's structure, by output name (as :func:`match` asks)."""
    f = _Graph(float_model, infer(float_model))
    return {name: output_structure.request(output_structure.onnx_producers(f, name)) for name in f.outputs}


def match(float_model: onnx.ModelProto, int8_model: onnx.ModelProto) -> Matching:
    """Pair float and int8 tensors. Raises UserError if the two are not the same network."""
    f, q = _Graph(float_model, infer(float_model)), _Graph(int8_model, infer(int8_model))
    _check_same_network(f, q)
    layers: list[Layer] = []
    unmatched: list[Unmatched] = []
    for name in f.inputs:
        pair, rule = _qdq(name, f, q)
        if pair is not None:
            layers.append(Layer(name, "Input", rule, pair))
    for node in f.nodes:
        for name in node.output:
            if not name or f.is_float(name) is False:
                continue
            pair, rule = _qdq(name, f, q)
            if pair is None:
                pair, rule = _qoperator(name, f, q)
            if pair is None and name in q.producer and q.is_float(name) is not False:
                pair, rule = CapturePair(name, name, nbytes=_sum(f.nbytes(name), q.nbytes(name))), "float"
            if pair is None:
                unmatched.append(Unmatched(name, node.op_type, _reason(name, q)))
            else:
                layers.append(Layer(name, node.op_type, rule, pair))
    if f.nodes and not layers:
        raise UserError("the float and int8 models are not the same network: no layer of one matches the other")
    link_parents(layers, _onnx_inputs(f))
    outputs = [
        Layer(name, "Output", "output",
              CapturePair(name, name, nbytes=_sum(f.nbytes(name), q.nbytes(name)), exact=f.is_float(name) is False,
                          structure=output_structure.request(output_structure.onnx_producers(f, name))))
        for name in f.outputs
    ]
    return Matching(layers, outputs, unmatched, control_flow(float_model, int8_model))


def control_flow(float_model: onnx.ModelProto, int8_model: onnx.ModelProto) -> ControlFlow | None:
    """The float graph's If/Loop/Scan nodes and what share of the model their bodies hold; None without any."""
    holders = [n for n in float_model.graph.node if bodies(n)]
    if not holders:
        return None
    inside = sum(1 for _ in body_nodes(float_model.graph))
    quantized = any(n.op_type == "QuantizeLinear" or n.op_type.startswith("QLinear") for n in body_nodes(int8_model.graph))
    return ControlFlow([f"{n.op_type} {n.name or n.output[0]}" for n in holders], inside,
                       len(float_model.graph.node) + inside, quantized)


def _check_same_network(f: _Graph, q: _Graph) -> None:
    if sorted(f.inputs) != sorted(q.inputs):
        raise UserError(f"the float and int8 models are not the same network: inputs {f.inputs} vs {q.inputs}")
    missing = [o for o in f.outputs if o not in q.outputs]
    if missing:
        raise UserError(f"the float and int8 models are not the same network: int8 model lacks outputs {missing}")


def _qdq(name: str, f: _Graph, q: _Graph) -> tuple[CapturePair | None, str]:
    for source in (name, f"{name}_QuantizeLinear_Input"):
        for node in q.consumers.get(source, []):
            if node.op_type != "QuantizeLinear" or len(node.input) < 2:
                continue
            qparams = _qparams(q, node.input[1], node.input[2] if len(node.input) > 2 else "", node)
            if qparams is not None:
                out = node.output[0]
                return CapturePair(name, out, qparams, _sum(f.nbytes(name), q.nbytes(out))), "qdq"
    return None, ""


def _qoperator(name: str, f: _Graph, q: _Graph) -> tuple[CapturePair | None, str]:
    quantized = f"{name}_quantized"
    if quantized not in q.producer:
        return None, ""
    qparams = _qparams(q, f"{name}_scale", f"{name}_zero_point", None)
    if qparams is None:
        return None, ""
    return CapturePair(name, quantized, qparams, _sum(f.nbytes(name), q.nbytes(quantized))), "qoperator"


def _qparams(q: _Graph, scale_name: str, zero_name: str, node: onnx.NodeProto | None) -> QParams | None:
    scale = q.constant(scale_name)
    if scale is None:
        return None
    zero = q.constant(zero_name) if zero_name else None
    if zero is None:
        zero = np.zeros(scale.shape, dtype=np.uint8)  # ONNX default zero point is uint8 0
    axis = None
    if scale.size > 1:
        axis = next((a.i for a in (node.attribute if node is not None else []) if a.name == "axis"), 1)
    return QParams(scale=[float(s) for s in scale.reshape(-1)], zero_point=[int(z) for z in zero.reshape(-1)],
                   axis=axis, dtype=np.dtype(zero.dtype).name)


def _reason(name: str, q: _Graph) -> str:
    if name not in q.producer:
        return "not in the int8 graph (the quantizer fused or removed the node that produced it)"
    if q.is_float(name) is False:
        return "int8 graph holds it as an integer tensor with no quantization parameters"
    return "no rule applies"


def link_parents(layers: list[Layer], inputs_of: Callable[[str], list[str]]) -> None:
    """Set each layer's parents: the nearest compared tensors upstream of it.

    Args:
        layers: the compared tensors, by name.
        inputs_of: a tensor's producer's non-constant input tensor names ([] for graph inputs).
    """
    compared = {layer.name for layer in layers}
    memo: dict[str, list[str]] = {}

    def upstream(tensor: str) -> list[str]:
        if tensor in memo:
            return memo[tensor]
        memo[tensor] = []  # guards against cycles in a malformed graph
        found: list[str] = []
        for inp in inputs_of(tensor):
            found.extend([inp] if inp in compared else upstream(inp))
        memo[tensor] = list(dict.fromkeys(found))
        return memo[tensor]

    for layer in layers:
        layer.parents = upstream(layer.name)


def _onnx_inputs(f: _Graph) -> Callable[[str], list[str]]:
    def inputs_of(tensor: str) -> list[str]:
        node = f.producer.get(tensor)
        return [i for i in (node.input if node is not None else []) if i and i not in f.initializers]

    return inputs_of


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b
