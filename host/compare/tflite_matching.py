"""Pair each float tensor with its counterpart in the int8 TFLite graph.

The result is the same :class:`~qbench.host.compare.matching.Matching` as for ONNX: the int8
side is captured raw and dequantized on the agent with ``CapturePair.qparams`` (scale, zero
point, per-channel axis) read from the flatbuffer. Rules, tried in order for every float-valued
op output ``X`` of the float graph (execution order), and for graph inputs the int8 model quantizes:

``name``
    The int8 graph has a tensor named ``X`` (ai-edge-quantizer and the TF converter keep op
    output names). When it is float there, a QUANTIZE consuming it (an op kept in float, or a float
    model input) or a DEQUANTIZE producing it (a float model output) gives the integer tensor at
    the boundary instead, rule ``boundary``; else the float tensor itself is compared, rule ``float``.
``position``
    No tensor has that name: the compute ops (all but QUANTIZE/DEQUANTIZE) of both graphs are
    aligned by op type and output shapes, and the int8 op at the same place gives the tensor.

Anything else is listed as unmatched with the reason.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from qbench.protocols.messages import CapturePair, QParams, StructureRequest

from ..errors import UserError
from . import output_structure
from .matching import ControlFlow, Layer, Matching, Unmatched, link_parents

_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
_CONTROL_FLOW = ("IF", "WHILE")


@dataclass
class Tensor:
    name: str
    shape: list[int]
    dtype: str
    constant: bool
    qparams: QParams | None
    signature: list[int] = field(default_factory=list)  # the shape with -1 for dynamic dims

    @property
    def is_float(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.floating)

    @property
    def nbytes(self) -> int:
        """Bytes per sample; a dynamic (-1) dimension counts as 1."""
        return int(np.prod([max(d, 1) for d in self.shape], dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Op:
    type: str
    inputs: list[int]
    outputs: list[int]
    branches: tuple[int, ...] = ()  # an IF's then and else subgraphs


@dataclass
class TFLiteGraph:
    """Subgraph 0 of a .tflite: tensors, ops in execution order, inputs and outputs (tensor indices);
    ``bodies`` the other subgraphs (``bodies[i - 1]`` is subgraph i: IF branches, WHILE bodies)."""

    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    bodies: list[TFLiteGraph] = field(default_factory=list)
    producer: dict[int, int] = field(default_factory=dict)
    consumers: dict[int, list[int]] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k, op in enumerate(self.ops):
            for t in op.outputs:
                self.producer[t] = k
            for t in op.inputs:
                self.consumers.setdefault(t, []).append(k)
        for i, t in enumerate(self.tensors):
            if not t.constant:
                self.by_name.setdefault(t.name, i)


def read_graph(path: Union[str, Path]) -> TFLiteGraph:
    """Reads a .tflite's subgraphs with the flatbuffer schema (lazy: weights are not copied)."""
    return parse_graph(Path(path).read_bytes(), Path(path).name)


def parse_graph(data: bytes, name: str) -> TFLiteGraph:
    """:func:`read_graph` of a model in memory; ``name`` names it in errors."""
    from ai_edge_litert import schema_py_generated as fb

    if data[4:8] != b"TFL3":
        raise UserError(f"{name} is not a TFLite model (no TFL3 identifier)")
    model = fb.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() == 0:
        raise UserError(f"{name} has no subgraph")
    codes = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    graphs = [_parse_subgraph(fb, model, model.Subgraphs(i), codes, types) for i in range(model.SubgraphsLength())]
    graphs[0].bodies = graphs[1:]
    return graphs[0]


def _parse_subgraph(fb, model, sg, codes: dict, types: dict) -> TFLiteGraph:
    tensors = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        buf = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
        tensors.append(Tensor(
            name=(t.Name() or b"").decode("utf-8", "replace"),
            shape=[int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else [],
            dtype=_numpy_dtype(types.get(t.Type(), "")),
            constant=buf is not None and (buf.DataLength() > 0 or buf.Size() > 0),
            qparams=_qparams(t, types.get(t.Type(), "")),
            signature=[int(d) for d in t.ShapeSignatureAsNumpy()] if t.ShapeSignatureLength() else [],
        ))
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = codes.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = (code.CustomCode() or b"CUSTOM").decode("utf-8", "replace")
        branches: tuple[int, ...] = ()
        if op.BuiltinOptionsType() == fb.BuiltinOptions.IfOptions:
            options = fb.IfOptions()
            options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            branches = (options.ThenSubgraphIndex(), options.ElseSubgraphIndex())
        inputs = _indices(op.InputsAsNumpy(), op.InputsLength())
        ops.append(Op(name, inputs, _indices(op.OutputsAsNumpy(), op.OutputsLength()), branches))
    return TFLiteGraph(tensors, ops, _indices(sg.InputsAsNumpy(), sg.InputsLength()),
                       _indices(sg.OutputsAsNumpy(), sg.OutputsLength()))


def _indices(array, length: int) -> list[int]:
    return [int(i) for i in array if i >= 0] if length else []


def _numpy_dtype(type_name: str) -> str:
    """numpy name of a TFLite tensor type; types numpy lacks (int4, bfloat16...) map to uint8 storage."""
    try:
        return np.dtype(type_name.lower()).name
    except TypeError:
        return "uint8"


def _qparams(t, type_name: str) -> QParams | None:
    q = t.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    scale = [float(s) for s in q.ScaleAsNumpy()]
    zero = [int(z) for z in q.ZeroPointAsNumpy()] if q.ZeroPointLength() else [0] * len(scale)
    return QParams(scale=scale, zero_point=zero, axis=int(q.QuantizedDimension()) if len(scale) > 1 else None,
                   dtype=_numpy_dtype(type_name))


def match_tflite(float_model: Union[str, Path], int8_model: Union[str, Path]) -> Matching:
    """Pairs float and int8 tensors; raises UserError if the two are not the same network."""
    f, q = read_graph(float_model), read_graph(int8_model)
    _check_same_network(f, q)
    aligned = _align(f, q)
    layers: list[Layer] = []
    unmatched: list[Unmatched] = []
    for i in f.inputs:
        pair, rule, _ = _pair(f, q, i, q.by_name.get(f.tensors[i].name), "name")
        if pair is not None and pair.qparams is not None:  # an input the int8 model quantizes
            layers.append(Layer(f.tensors[i].name, "INPUT", rule, pair))
    for k, op in enumerate(f.ops):
        if op.type in _BOUNDARY_OPS:
            continue
        for slot, i in enumerate(op.outputs):
            t = f.tensors[i]
            if not t.is_float:
                continue
            if t.name in q.by_name:
                pair, rule, reason = _pair(f, q, i, q.by_name[t.name], "name")
            elif k in aligned and slot < len(q.ops[aligned[k]].outputs):
                candidate = q.ops[aligned[k]].outputs[slot]
                if q.tensors[candidate].name in f.by_name:  # it is another float tensor's counterpart
                    pair, rule = None, ""
                    reason = _fused_reason(f, i, op, q.tensors[candidate].name) or (
                        f"the {op.type} at this position in the int8 graph is {q.tensors[candidate].name!r}")
                else:
                    pair, rule, reason = _pair(f, q, i, candidate, "position")
            else:
                pair, rule = None, ""
                reason = f"no int8 tensor named {t.name!r} and no {op.type} with its output shape at this position"
            if pair is None:
                unmatched.append(Unmatched(t.name, op.type, reason))
            else:
                layers.append(Layer(t.name, op.type, rule, pair))
    if f.ops and not layers:
        raise UserError("the float and int8 models are not the same network: no layer of one matches the other")
    link_parents(layers, _tflite_inputs(f))
    outputs = []
    for fi, qi in zip(f.outputs, q.outputs):
        pair, _, reason = _pair(f, q, fi, qi, "output", follow_boundary=False)
        if pair is None:
            unmatched.append(Unmatched(f.tensors[fi].name, "OUTPUT", reason))
        else:
            pair.structure = output_structure.request(output_structure.tflite_producers(f, fi))
            outputs.append(Layer(f.tensors[fi].name, "OUTPUT", "output", pair))
    return Matching(layers, outputs, unmatched, control_flow(f, q))


def control_flow(f: TFLiteGraph, q: TFLiteGraph) -> ControlFlow | None:
    """The IF/WHILE ops of subgraph 0 and what share of the model's ops the other subgraphs hold."""
    holders = [op for op in f.ops if op.type in _CONTROL_FLOW]
    if not holders or not f.bodies:
        return None
    inside = sum(len(body.ops) for body in f.bodies)
    quantized = any(t.qparams is not None and not t.is_float for body in q.bodies for t in body.tensors
                    if not t.constant)
    return ControlFlow([f"{op.type} {f.tensors[op.outputs[0]].name}" for op in holders if op.outputs], inside,
                       len(f.ops) + inside, quantized)


def output_structures(path: Union[str, Path]) -> dict[str, StructureRequest]:
    """What the agent measures of each float output's structure, by output name (as :func:`match_tflite` asks)."""
    f = read_graph(path)
    return {f.tensors[i].name: output_structure.request(output_structure.tflite_producers(f, i)) for i in f.outputs}


_ACTIVATION_OPS = ("RELU", "RELU6", "RELU_N1_TO_1")


def _fused_reason(f: TFLiteGraph, tensor: int, op: Op, int8_name: str) -> str | None:
    """Why ``tensor`` has no int8 counterpart when the int8 op applies the activation after it itself
    (qbench's quantizer input fuses it, as the TensorFlow converter does); None if that is not so."""
    readers = f.consumers.get(tensor, [])
    if len(readers) != 1 or f.ops[readers[0]].type not in _ACTIVATION_OPS:
        return None
    activation = f.ops[readers[0]]
    if [f.tensors[t].name for t in activation.outputs] != [int8_name]:
        return None
    return (f"fused: the int8 {op.type} applies the {activation.type} after it itself and writes {int8_name!r}; "
            "this pre-activation tensor exists only in the float model")


def _check_same_network(f: TFLiteGraph, q: TFLiteGraph) -> None:
    # by the shape signatures: the default shape of a dynamic input is the data's in a model qbench
    # quantized (see tflite_rewrite.default_input_shapes), a placeholder in the user's
    fin, qin = ([t.signature or t.shape for t in (g.tensors[i] for i in g.inputs)] for g in (f, q))
    if fin != qin:
        raise UserError(f"the float and int8 models are not the same network: input shapes {fin} vs {qin}")
    fout, qout = [f.tensors[i].shape for i in f.outputs], [q.tensors[i].shape for i in q.outputs]
    if fout != qout:
        raise UserError(f"the float and int8 models are not the same network: output shapes {fout} vs {qout}")


def _pair(
    f: TFLiteGraph, q: TFLiteGraph, fi: int, qi: int | None, rule: str, follow_boundary: bool = True
) -> tuple[CapturePair | None, str, str]:
    """(pair, rule, reason if no pair) for float tensor ``fi`` and int8 tensor ``qi``.

    A float ``qi`` is replaced by the integer tensor at its QUANTIZE/DEQUANTIZE boundary, if any.
    """
    if qi is None:
        return None, "", "not in the int8 graph"
    ft = f.tensors[fi]
    if follow_boundary and q.tensors[qi].is_float:
        twin = _integer_twin(q, qi)
        if twin is not None:
            qi, rule = twin, "boundary"
        elif rule == "name":
            rule = "float"
    qt = q.tensors[qi]
    if qt.shape != ft.shape:
        return None, "", f"shapes differ: float {ft.shape} vs int8 {qt.shape} ({qt.name!r})"
    if not qt.is_float and qt.qparams is None:
        return None, "", f"int8 graph holds it as {qt.dtype} {qt.name!r} with no quantization parameters"
    qparams = None if qt.is_float else qt.qparams
    return CapturePair(ft.name, qt.name, qparams, ft.nbytes + qt.nbytes), rule, ""


def _integer_twin(q: TFLiteGraph, qi: int) -> int | None:
    """The integer tensor holding float tensor ``qi`` quantized: a QUANTIZE's output or a DEQUANTIZE's input."""
    for k in q.consumers.get(qi, []):
        op = q.ops[k]
        if op.type == "QUANTIZE" and op.outputs and q.tensors[op.outputs[0]].qparams is not None:
            return op.outputs[0]
    k = q.producer.get(qi)
    if k is not None and q.ops[k].type == "DEQUANTIZE":
        source = q.ops[k].inputs[0]
        if not q.tensors[source].constant and q.tensors[source].qparams is not None:
            return source
    return None


def _align(f: TFLiteGraph, q: TFLiteGraph) -> dict[int, int]:
    """float op index -> int8 op index, compute ops aligned by (type, output shapes) in order."""
    def compute_ops(g: TFLiteGraph) -> list[int]:
        return [k for k, op in enumerate(g.ops) if op.type not in _BOUNDARY_OPS]

    def key(g: TFLiteGraph, k: int) -> tuple:
        return (g.ops[k].type, tuple(tuple(g.tensors[t].shape) for t in g.ops[k].outputs))

    fk, qk = compute_ops(f), compute_ops(q)
    matcher = difflib.SequenceMatcher(None, [key(f, k) for k in fk], [key(q, k) for k in qk], autojunk=False)
    aligned = {}
    for block in matcher.get_matching_blocks():
        for n in range(block.size):
            aligned[fk[block.a + n]] = qk[block.b + n]
    return aligned


def _tflite_inputs(f: TFLiteGraph):
    def inputs_of(name: str) -> list[str]:
        k = f.producer.get(f.by_name[name]) if name in f.by_name else None
        ops = f.ops[k].inputs if k is not None else []
        return [f.tensors[i].name for i in ops if not f.tensors[i].constant]

    return inputs_of
