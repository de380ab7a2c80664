"""Cross-layer weight equalization (Nagel et al. 2019, "Data-free quantization through weight
equalization and bias correction", section 4.1) of a float ONNX model, before quantization.

For two convolutions joined by a positively homogeneous activation ``f`` (``f(x/s) = f(x)/s`` for
``s > 0``), output channel ``i`` of the first can be divided by ``s_i`` and the matching input channel
of the second multiplied by ``s_i`` without changing what the pair computes. With ``r1_i`` the range
(max|w|) of the first conv's output channel ``i`` and ``r2_i`` the range of the second conv's input
channel ``i`` (over all its output channels and kernel taps),

    s_i = sqrt(r1_i · r2_i) / r2_i

makes both ranges ``sqrt(r1_i · r2_i)``: the channels of each weight tensor get similar ranges, which
is what per-tensor weight quantization needs. The first conv's bias is divided by ``s_i`` too. Pairs
are equalized in graph order, and the whole pass is repeated until no scale moves by more than
:data:`TOLERANCE` (at most :data:`MAX_ITERATIONS` passes), since a conv in the middle of a chain
belongs to two pairs.

Pairs: ``Conv → [Relu | LeakyRelu | PRelu | Clip with min 0 and no max] → Conv``, or two convs
joined directly; grouped and depthwise convs included (a depthwise conv's input channel ``i`` is its
filter ``i``). Relu6 (Clip with a max) is left alone: ``min(relu(x/s), 6) ≠ min(relu(x), 6)/s``,
so scaling through it would change the float model. The joining tensors must have no other
consumer and not be graph outputs; weights and biases must be float32 initializers used by that
conv only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx
from onnx import numpy_helper

TOLERANCE = 1e-3
MAX_ITERATIONS = 20
_HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}

PathLike = Union[str, Path]


@dataclass
class _Pair:
    first: onnx.NodeProto
    activation: onnx.NodeProto | None
    second: onnx.NodeProto


def equalize_file(src: PathLike, dst: PathLike) -> dict[str, Any]:
    """Equalizes the model at ``src`` and writes it to ``dst``; returns the report section.

    Returns:
        ``{"pairs": [{"first", "activation", "second", "channels"}], "iterations",
        "channel_ranges_before": {conv: [max|w| per output channel]}, "channel_ranges_after": {...}}``
        for every conv of an equalized pair.
    """
    model = onnx.load(str(src))
    section = equalize(model)
    onnx.save(model, str(dst))
    return section


def equalize(model: onnx.ModelProto) -> dict[str, Any]:
    """Equalizes ``model`` in place (see the module doc); returns the report section."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    pairs = find_pairs(model)
    arrays: dict[str, np.ndarray] = {}
    for pair in pairs:
        for conv in (pair.first, pair.second):
            for name in conv.input[1:3]:
                if name and name not in arrays:
                    arrays[name] = numpy_helper.to_array(weights[name]).astype(np.float64)
    convs = {_name(c): c.input[1] for p in pairs for c in (p.first, p.second)}
    before = {name: _output_ranges(arrays[w]) for name, w in convs.items()}
    iterations = 0
    for iterations in range(1, MAX_ITERATIONS + 1):
        largest = max((_equalize_pair(p, arrays) for p in pairs), default=0.0)
        if largest < TOLERANCE:
            break
    for name, array in arrays.items():
        weights[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    return {
        "pairs": [{"first": _name(p.first), "activation": p.activation.op_type if p.activation else None,
                   "second": _name(p.second), "channels": int(arrays[p.first.input[1]].shape[0])} for p in pairs],
        "iterations": iterations if pairs else 0,
        "channel_ranges_before": before,
        "channel_ranges_after": {name: _output_ranges(arrays[w]) for name, w in convs.items()},
    }


def find_pairs(model: onnx.ModelProto) -> list[_Pair]:
    """The conv pairs that can be equalized, in graph order (conditions in the module doc)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_consumer(tensor: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in outputs else None

    def own_weights(conv: onnx.NodeProto) -> bool:
        names = [n for n in conv.input[1:3] if n]
        return all(n in initializers and initializers[n].data_type == onnx.TensorProto.FLOAT
                   and len(consumers.get(n, [])) == 1 for n in names) and len(conv.input) > 1

    pairs = []
    for node in graph.node:
        if node.op_type != "Conv" or not own_weights(node):
            continue
        nxt = only_consumer(node.output[0])
        activation = None
        if nxt is not None and _homogeneous(nxt, initializers):
            activation, nxt = nxt, only_consumer(nxt.output[0])
        if nxt is not None and nxt.op_type == "Conv" and nxt.input[0] == (
                activation or node).output[0] and own_weights(nxt):
            pairs.append(_Pair(node, activation, nxt))
    return pairs


def _homogeneous(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    """Whether ``node`` commutes with a positive per-channel scale."""
    if node.op_type in _HOMOGENEOUS:
        return True
    if node.op_type != "Clip":
        return False
    attrs = {a.name: a.f for a in node.attribute}
    low = attrs.get("min")
    high = attrs.get("max")
    if len(node.input) > 1 and node.input[1]:
        low = _scalar(initializers, node.input[1])
    if len(node.input) > 2 and node.input[2]:
        high = _scalar(initializers, node.input[2])
    return low == 0.0 and (high is None or high == np.inf)


def _scalar(initializers: dict[str, onnx.TensorProto], name: str) -> float:
    """A constant Clip bound; NaN when it is not an initializer, so that the pair is left alone."""
    if name not in initializers:
        return np.nan
    return float(numpy_helper.to_array(initializers[name]).reshape(-1)[0])


def _equalize_pair(pair: _Pair, arrays: dict[str, np.ndarray]) -> float:
    """Rescales one pair; returns the largest |log s_i| applied."""
    w1, w2 = arrays[pair.first.input[1]], arrays[pair.second.input[1]]
    channels = w1.shape[0]
    group = next((a.i for a in pair.second.attribute if a.name == "group"), 1)
    per_group_in = w2.shape[1]
    per_group_out = w2.shape[0] // group
    if per_group_in * group != channels:
        return 0.0
    r1 = _output_ranges(w1, as_list=False)
    # w2 viewed as [group, out per group, in per group, ...]: input channel i = (i // per_group_in, i % per_group_in)
    view = np.abs(w2).reshape(group, per_group_out, per_group_in, -1)
    r2 = view.max(axis=(1, 3)).reshape(-1)
    ok = (r1 > 0) & (r2 > 0)
    s = np.ones(channels)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    w1 /= s.reshape(-1, *([1] * (w1.ndim - 1)))
    if len(pair.first.input) > 2 and pair.first.input[2]:
        arrays[pair.first.input[2]] /= s
    w2_view = w2.reshape(group, per_group_out, per_group_in, -1)
    w2_view *= s.reshape(group, 1, per_group_in, 1)
    return float(np.abs(np.log(s)).max(initial=0.0))


def _output_ranges(w: np.ndarray, as_list: bool = True):
    ranges = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    return [float(r) for r in ranges] if as_list else ranges


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]
