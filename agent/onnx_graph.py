"""The user's int8 tensors in the graph ONNX Runtime deployed, found without the ``onnx`` package.

:func:`read_graph` reads the nodes of a serialized ONNX model straight from its protobuf bytes; the
capture needs only what each node is called, what it computes, which tensors it reads and writes,
and a few integer attributes. :func:`locate` then finds each tensor of the user's model in the graph
ORT optimized from it (``SessionOptions.optimized_model_filepath``), or says which kernel absorbed it.
Wire layout read here (onnx.proto3): ``ModelProto.graph`` = field 7; ``GraphProto.node`` = 1,
``input`` = 11, ``output`` = 12; ``NodeProto.input`` = 1, ``output`` = 2, ``name`` = 3, ``op_type`` = 4,
``attribute`` = 5, ``domain`` = 7. Everything else (initializers, subgraphs) is skipped by its length.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Node:
    name: str
    op_type: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    domain: str = ""
    ints: dict[str, list[int]] = field(default_factory=dict)  # integer attributes (perm, channels_last)


def read_graph(model: bytes) -> tuple[list[Node], list[str]]:
    """The main graph's nodes, in file order, and the names of its inputs and outputs
    (``GraphProto.input`` = 11, ``output`` = 12; ``ValueInfoProto.name`` = 1).

    Raises ValueError on bytes that are not a protobuf message.
    """
    nodes: list[Node] = []
    inputs: list[str] = []
    for number, graph in _fields(memoryview(model)):
        if number != 7:
            continue
        for n, raw in _fields(graph):  # protobuf merges repeated ``graph`` fields: their nodes concatenate
            if n == 1:
                nodes.append(_node(raw))
            elif n in (11, 12):
                inputs.extend(bytes(v).decode() for k, v in _fields(raw) if k == 1)
    return nodes, inputs


def graph_io_names(model: bytes) -> tuple[list[str], list[str]]:
    """The names of the main graph's inputs and of its outputs, apart."""
    found: dict[int, list[str]] = {11: [], 12: []}
    for number, graph in _fields(memoryview(model)):
        if number == 7:
            for n, raw in _fields(graph):
                if n in found:
                    found[n].extend(bytes(v).decode() for k, v in _fields(raw) if k == 1)
    return found[11], found[12]


def _node(raw: memoryview) -> Node:
    node = Node("", "")
    for number, value in _fields(raw):
        if number == 1:
            node.inputs.append(bytes(value).decode())
        elif number == 2:
            node.outputs.append(bytes(value).decode())
        elif number == 3:
            node.name = bytes(value).decode()
        elif number == 4:
            node.op_type = bytes(value).decode()
        elif number == 7:
            node.domain = bytes(value).decode()
        elif number == 5:
            name, values = _int_attribute(value)
            if values:
                node.ints[name] = values
    return node


def _int_attribute(raw: memoryview) -> tuple[str, list[int]]:
    """AttributeProto: ``name`` = 1, ``i`` = 3, ``ints`` = 8 (packed or not)."""
    name, values = "", []
    for number, wire, value in _fields(raw, with_varints=True):
        if number == 1 and wire == 2:
            name = bytes(value).decode()
        elif number in (3, 8) and wire == 0:
            values.append(value)
        elif number == 8 and wire == 2:
            pos = 0
            while pos < len(value):
                v, pos = _varint(value, pos)
                values.append(v)
    return name, values


def _fields(buf: memoryview, with_varints: bool = False):
    """``(field number, payload)`` of each length-delimited field; other wire types are skipped.

    ``with_varints``: ``(field number, wire type, payload or value)`` of varint fields too.
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated protobuf field")
            yield (key >> 3, 2, buf[pos: pos + size]) if with_varints else (key >> 3, buf[pos: pos + size])
            pos += size
        elif wire == 0:
            value, pos = _varint(buf, pos)
            if with_varints:
                yield key >> 3, 0, value
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


@dataclass
class Located:
    """Where a tensor of the user's model is in the graph ORT deploys.

    ``tensor``: the deployed graph's tensor with its values; ``to_original``: the axes that put it back in
    the original layout (``numpy.transpose``; :data:`CHANNELS_LAST` for a channels-last kernel's output,
    whose rank only the values tell: :func:`original_axes`), None when it already is (ORT's NHWC kernels
    write channels last).
    """

    tensor: str
    to_original: list[int] | None = None
    #: for :data:`FROM_SHAPE`: what the tensor is when its shape cannot tell the layout either
    note: str = ""


def from_shape(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` put in the layout of a tensor shaped ``shape`` when the shapes alone decide it, else None.

    For a tensor ORT holds in a layout the graph does not tell (:data:`FROM_SHAPE`): a transpose of the
    original when its shape is a permutation of ``shape``. Axes of size 1 carry no order, so the
    transpose is decided when the other dims of ``shape`` are all different, and not when two are equal
    (a square image's H and W).
    """
    if sorted(value.shape) != sorted(shape):
        return None
    wanted = [d for d in shape if d != 1]
    held = [d for d in value.shape if d != 1]
    if len(set(wanted)) != len(wanted):
        return None
    return np.ascontiguousarray(value.reshape(held).transpose([held.index(d) for d in wanted]).reshape(shape))


def original_axes(to_original: list[int], ndim: int) -> list[int]:
    """The ``numpy.transpose`` axes of :attr:`Located.to_original` for a tensor of ``ndim`` dimensions."""
    if to_original is CHANNELS_LAST:  # (N, spatial..., C) back to (N, C, spatial...): 1-D convolutions too
        return [0, ndim - 1, *range(1, ndim - 1)]
    return to_original


def locate(original: list[Node], optimized: list[Node], names: list[str], interface: set[str] = frozenset()
           ) -> tuple[dict[str, Located], dict[str, str]]:
    """Where each tensor of ``names`` (of the original graph) is in the optimized graph.

    ``interface``: the model's input and output names, which the optimized graph keeps as they are.
    Returns ``(found, fused)``. ``found[name]`` holds the same values: a tensor of the same name that
    the same node writes, or the same slot of the node that replaced the original one (see
    :func:`_slots`). ``fused[name]`` says why it is not there: which kernel computes it now without
    writing it (``"fused into QLinearConv <node>"``), or that ORT holds it in a layout this reader
    cannot undo. A name that is neither (not in the original graph either) is in neither dict.
    """
    present = set(interface)
    for node in optimized:
        present.update(node.outputs)
    twins = _twins(original, optimized)
    own = _own_names(original, optimized, twins) | set(interface)
    slots = _slots(original, twins, present)
    layouts = _layouts(optimized, twins)

    def image(name: str) -> str | None:
        return name if name in own else slots.get(name)

    producer = {out: node for node in optimized for out in node.outputs}
    consumers = _consumers(original)
    # An optimized tensor that stands for several original ones has a layout that fits only one of them
    # when ORT cancelled a user's Transpose against one of its own: it is then not undone for any.
    shared = Counter(list(slots.values()) + [n for n in own if n not in slots])
    cancelled = any(n.op_type == "Transpose" and n.name not in twins for n in original)
    levels_then = _holds_levels(original)
    levels_now = _holds_levels(optimized)
    found, fused = {}, {}
    for name in names:
        where = image(name)
        if where is not None and levels_now.get(where) and not levels_then.get(name):
            fused[name] = (f"held as the int8 levels of {levels_now[where]}: ONNX Runtime moved that "
                           f"quantization ahead of {producer[where].op_type} {producer[where].name}")
            continue
        if where is not None:
            axes = layouts.get(where)
            if where in interface:
                axes = None  # the model's inputs and outputs keep their layout whatever ORT did inside
            elif axes is not None and cancelled and shared[where] > 1:
                axes = _UNKNOWN
            if axes is _UNKNOWN:
                node = producer.get(where)
                found[name] = Located(where, FROM_SHAPE, f"held in another layout by {node.op_type} {node.name}"
                                      if node else "in another layout")
            else:
                found[name] = Located(where, None if axes is None else axes if axes is CHANNELS_LAST
                                      else sorted(range(len(axes)), key=axes.__getitem__))
            continue
        downstream = _first_downstream(name, consumers, image)
        if downstream is not None and downstream in producer:
            node = producer[downstream]
            fused[name] = f"fused into {node.op_type} {node.name}"
    return found, fused


#: quantized-operator kernels ORT makes from DQ -> op -> Q: where the op's k-th input went (offset + k * step:
#: each input is followed by its scale and zero point; QLinearConcat's output scale and zero point come first)
_QUANTIZED_INPUT = {"QLinearConv": (0, 3), "QLinearMatMul": (0, 3), "QLinearAdd": (0, 3), "QLinearMul": (0, 3),
                    "QGemm": (0, 3), "QLinearConcat": (2, 3)}


def _own_names(original: list[Node], optimized: list[Node], twins: dict[str, Node]) -> set[str]:
    """The original tensor names the optimized graph still uses for the same values.

    ORT renames some outputs after their node (``p2o.Mul.0`` writes ``p2o.Mul.0``, not ``p2o.Mul.1``), so
    a name can come back on another tensor: it is the same tensor when its writer is the original
    writer's node, or a node ORT made (which has no original name), or when it is not named after its
    writer. A fusion keeps the names of what it replaces: ppocr-v4-rec's three Slices of one tensor and
    their QuantizeLinears became one Split (``p2o.Slice.8/GatherSliceToSplitFusion``) that writes the three
    QuantizeLinears' tensors.
    """
    writer = {out: node.name for node in original for out in node.outputs}
    original_names = set(writer.values())
    twin_of = {id(twin): name for name, twin in twins.items()}
    own = set()
    for node in optimized:
        origin = twin_of.get(id(node))
        for out in node.outputs:
            if out not in writer:
                continue
            if origin == writer[out] or (origin is None and node.name not in original_names) or out != node.name:
                own.add(out)
    return own


def _slots(original: list[Node], twins: dict[str, Node], present: set[str]) -> dict[str, str]:
    """Original tensor -> optimized tensor, through the nodes that replaced original ones.

    A node keeps the original's name (ORT's NCHWc Conv too, but it writes another layout: the op type
    and domain must match), or extends it (``<name>_token_N``, ``<name>/MatMulAddFusion``) when a
    fusion replaced it. A QDQ node unit (DequantizeLinear -> op -> QuantizeLinear) that became one
    integer kernel reads the DequantizeLinear's input and writes the QuantizeLinear's output in the
    op's slots (slot k of QLinearConv & co: 3k, past each input's scale and zero point; of QLinearConcat
    2 + 3k: mapped as 3k, the ppocr-v4-det's upsampled maps took each other's values).
    """
    producer = {out: node for node in original for out in node.outputs}
    consumers = _consumers(original)
    slots: dict[str, str] = {}
    for node in original:
        twin = twins.get(node.name)
        if twin is None:
            continue
        same = twin.op_type == node.op_type and twin.domain == node.domain
        offset, step = (0, 1) if same else _QUANTIZED_INPUT.get(twin.op_type, (0, 1))
        for k, old in enumerate(node.inputs):
            source = producer.get(old)
            if not same and source is not None and source.op_type == "DequantizeLinear":
                old = source.inputs[0]
            slot = offset + k * step
            if old and slot < len(twin.inputs) and twin.inputs[slot]:
                slots.setdefault(old, twin.inputs[slot])
        for old, new in zip(node.outputs, twin.outputs):
            readers = consumers.get(old, [])
            if not same and len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
                old = readers[0].outputs[0]  # the unit's output is its QuantizeLinear's
            if old and new:
                slots.setdefault(old, new)
    return {old: new for old, new in slots.items() if new in present}


def _twins(original: list[Node], optimized: list[Node]) -> dict[str, Node]:
    """Original node name -> the optimized node that carries it (same name first, then a derived one)."""
    names = {n.name for n in original if n.name}
    twins: dict[str, Node] = {}
    for node in optimized:
        if node.name in names:
            twins[node.name] = node
    for node in optimized:
        for sep in ("_token_", "/"):
            base = node.name.rsplit(sep, 1)[0] if sep in node.name else None
            if base in names and base not in twins:
                twins[base] = node
    return twins


_UNKNOWN: list[int] = []  # a layout marker: permuted in a way not followed here
#: a layout marker: a channels-last kernel's output, (N, spatial..., C), of a rank the graph does not say
#: (NhwcConv of a Conv1d writes (N, L, C)); the first Transpose ORT puts after it, or the values, say
CHANNELS_LAST: list[int] = [-1]
#: a layout marker: a permutation of the original the graph does not tell (ORT cancelled a user's Transpose
#: against one of its own, or pushed one through an op this reader does not follow); :func:`from_shape`
FROM_SHAPE: list[int] = [-2]
#: ops that write their input's layout: element-wise ones, quantize/dequantize, and the rank-keeping ones whose
#: axes ORT's transpose optimizer rewrites when it pushes a Transpose through them (Softmax axis 1 -> 3)
_LAYOUT_KEEPING = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
                   "LeakyRelu", "Tanh", "Abs", "Neg", "Exp", "Erf", "Cast", "Identity", "QuantizeLinear",
                   "DequantizeLinear", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
                   "Softmax", "LogSoftmax", "QLinearSoftmax", "Concat", "QLinearConcat", "Split", "Slice", "Pad",
                   "Resize", "Max", "Min", "Sum", "Mean", "Where"}
#: like them while they keep their reduced axes (``keepdims`` = 1, the default)
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL2"}
#: ORT's channels-last kernels without a ``channels_last`` attribute
_NHWC = {"NhwcMaxPool"}


def _layouts(optimized: list[Node], twins: dict[str, Node]) -> dict[str, list[int] | None]:
    """Per optimized tensor, the axes of the original layout it holds (``t = original.transpose(axes)``).

    ORT's NHWC transformer makes channels-last kernels (``channels_last`` = 1) and Transposes of its own
    around them, which its transpose optimizer then pushes through element-wise ops. A tensor not
    listed has the original layout; ``_UNKNOWN`` marks one permuted through another op.
    """
    made_here = {id(n) for n in optimized} - {id(t) for t in twins.values()}
    layout: dict[str, list[int] | None] = {}
    for node in optimized:  # ORT saves its graphs in topological order
        seen = [layout[i] for i in node.inputs if layout.get(i) is not None]
        if node.ints.get("channels_last") == [1] or node.op_type in _NHWC:
            out = CHANNELS_LAST
        elif node.op_type == "Transpose" and id(node) in made_here and "perm" in node.ints:
            axes = seen[0] if seen else None
            perm = node.ints["perm"]
            if axes is CHANNELS_LAST:  # the perm's length is the rank
                axes = [0, *range(2, len(perm)), 1]
            if axes is _UNKNOWN or (axes and len(axes) != len(perm)):
                out = _UNKNOWN
            else:
                out = [(axes[p] if axes else p) for p in perm]
                out = None if out == sorted(out) else out
        elif not seen:
            continue
        elif _keeps_layout(node) and _agreed(seen) is not None:
            out = _agreed(seen)
        else:
            out = _UNKNOWN
        for name in node.outputs:
            layout[name] = out
    return layout


def _agreed(seen: list[list[int]]) -> list[int] | None:
    """The layout all of ``seen`` hold (a channels-last marker agrees with the explicit channels-last axes of
    any rank), None when they differ or one is unknown."""
    explicit = [s for s in seen if s is not CHANNELS_LAST]
    if not explicit:
        return CHANNELS_LAST
    first = explicit[0]
    if first is _UNKNOWN:
        return None
    last = [0, *range(2, len(first)), 1]
    return first if all(s == first or (s is CHANNELS_LAST and first == last) for s in seen) else None


#: ops that move or pick their first input's elements without computing on them: ORT runs them on int8
#: levels as well as on floats, and moves a QuantizeLinear ahead of them (QDQ propagation)
_MOVES_DATA = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "GatherElements",
               "Concat", "Split", "Pad", "MaxPool", "NhwcMaxPool", "Resize", "DepthToSpace", "SpaceToDepth",
               "Expand", "Tile", "Identity"}


def _holds_levels(nodes: list[Node]) -> dict[str, str]:
    """The tensors that hold quantized integer levels, each with the QuantizeLinear (or integer kernel)
    whose levels they are: that node's outputs, and what data-moving ops make of them."""
    levels: dict[str, str] = {}
    for node in nodes:  # topological order
        if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") or node.op_type.startswith("QLinear") \
                or node.op_type == "QGemm":
            source = f"{node.op_type} {node.name}"
        elif node.op_type in _MOVES_DATA and node.inputs and node.inputs[0] in levels:
            source = levels[node.inputs[0]]
        else:
            continue
        for out in node.outputs:
            levels[out] = source
    return levels


def _keeps_layout(node: Node) -> bool:
    if node.op_type in _REDUCE:
        return node.ints.get("keepdims", [1]) != [0]
    return node.op_type in _LAYOUT_KEEPING


def _consumers(nodes: list[Node]) -> dict[str, list[Node]]:
    consumers: dict[str, list[Node]] = {}
    for node in nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)
    return consumers


def _first_downstream(name: str, consumers: dict[str, list[Node]], image) -> str | None:
    """The optimized image of the nearest tensor computed from ``name`` that the optimized graph still has."""
    queue, seen = deque([name]), {name}
    while queue:
        for node in consumers.get(queue.popleft(), []):
            for out in node.outputs:
                if out in seen:
                    continue
                seen.add(out)
                where = image(out)
                if where is not None:
                    return where
                queue.append(out)
    return None
