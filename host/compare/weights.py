"""Weight error: every quantized weight of the int8 model against the float weight it replaces.

Weights are constants, so this is computed on the host from the two model files: the device
would compute exactly the same numbers. For each integer weight ``q`` with scale ``s`` and zero
point ``z`` (per tensor, or per channel along ``axis``) and its float counterpart ``w``:

- dequantized ``ŵ = (q − z)·s``
- PSNR = 10·log10(peak² / MSE), MSE = mean((w − ŵ)²), peak = max|w|, over the whole tensor
- channel PSNR: the same over one output channel (peak = that channel's max|w|); the channel axis is
  the quantization axis for per-channel weights, else the consuming op's output-channel axis
- dead channels: max|w| below DEAD_FRACTION (1e-6) of the median channel's max|w|. Training left
  them at ~0; int8 rounds them to 0, which costs the layer nothing, but against their own tiny peak
  that is a PSNR of a few dB. Their channel PSNR is null and they are listed in ``dead_channels``,
  so they never become the worst channel
- ``effective_psnr_db``: the lowest over live channels of 10·log10(max(peak, median peak)² / MSE), a
  channel's error against the larger of its own peak and the median channel's (the tensor PSNR
  without channels). A channel far smaller than the others adds little to the layer's output,
  whatever its own PSNR: PP-OCRv5's detector has a 384-channel 1x1 conv whose channels peak at
  3e-8 where the median channel peaks at 1e-5; ONNX Runtime's quantizer leaves them at 12 dB
  against their own peak, while the layer's SQNR falls 1.3 dB. The ranking weighs weights by it
- histogram: 64 equal bins over the weight's quantization range ``[(lo − z)·s, (hi − z)·s]``
  (``lo``/``hi`` the integer type's limits; per channel, the lowest and highest over channels),
  with a count below and above the range in front and at the end; ``float`` bins ``w``,
  ``int8`` bins ``ŵ``.

Sources of weights: ONNX QDQ (``DequantizeLinear`` of an integer constant), ONNX QOperator
(``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``/``QLinearMul`` constant operands) and
TFLite (integer constant inputs of an op, with the tensor's quantization parameters). 32-bit
integer constants (biases) are left out: their step is the product of two scales, far below the
weights' error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import numpy as np
import onnx

from qbench.protocols.messages import QParams

from .matching import _Graph
from .metrics import psnr_db

BINS = 64
DEAD_FRACTION = 1e-6
_INTEGER_TYPES = ("int8", "uint8", "int16", "uint16")
#: QOperator ops: (integer operand slot, scale slot, zero point slot, slot of the float op's operand)
_QOPERATOR = {
    "QLinearConv": ((3, 4, 5, 1),),
    "QLinearMatMul": ((0, 1, 2, 0), (3, 4, 5, 1)),
    "QGemm": ((0, 1, 2, 0), (3, 4, 5, 1)),
    "QLinearAdd": ((0, 1, 2, 0), (3, 4, 5, 1)),
    "QLinearMul": ((0, 1, 2, 0), (3, 4, 5, 1)),
}
#: ops that pass a tensor through element-wise: a weight's layer may be the tensor after them
_ELEMENTWISE = {"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                "BatchNormalization", "Identity"}
#: TFLite ops whose weight (input 1) has its output channels along this axis
_TFLITE_CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 0,
                        "CONV_3D": 4}

PathLike = Union[str, Path]


@dataclass
class QuantizedWeight:
    """One integer weight and the float weight it stands for.

    Attributes:
        name: the weight's name in the int8 model.
        op_type: the op consuming it (float model's op type).
        values: the float weight.
        q: the integer weight.
        qparams: its scale and zero point (``axis`` set when per channel).
        channel_axis: axis of the output channels for channel PSNR, None when the op has none.
        reaches: the tensors the weight's op output flows to, nearest first (see ``WeightTable``).
    """

    name: str
    op_type: str
    values: np.ndarray
    q: np.ndarray
    qparams: QParams
    channel_axis: int | None
    reaches: tuple[str, ...]


@dataclass
class WeightTable:
    """The weight figures of a model pair, before they are tied to the report's layers.

    Everything here depends on the two model files alone, so it can be computed while the device
    still measures (``qbench.host.report.prefetch``).

    Attributes:
        entries: report entries as described in the module doc, ``layer`` None.
        reaches: per entry, the tensors its op's output flows to, nearest first: the output, then
            the outputs of at most 3 element-wise ops it passes through; the first that is a
            report layer is the entry's ``layer``.
        unmatched: integer weights without a float counterpart, ``{"name", "reason"}``.
    """

    entries: list[dict[str, Any]]
    reaches: list[tuple[str, ...]]
    unmatched: list[dict[str, str]]

    def for_layers(self, layer_names: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """(entries with ``layer`` set from ``layer_names``, unmatched); the table itself is left as it is."""
        names = set(layer_names)
        entries = [{**e, "layer": next((t for t in reach if t in names), None)}
                   for e, reach in zip(self.entries, self.reaches)]
        return entries, list(self.unmatched)


def weight_table(found: list, unmatched: list[dict[str, str]]) -> WeightTable:
    """The figures of the integer weights a format's reader found (``onnx_weights``, ``tflite_weights``:
    the model format picks its own, :meth:`ModelFormat.weight_table <qbench.host.formats.base.ModelFormat.weight_table>`)."""
    entries, reaches, unmatched = [], [], list(unmatched)
    for w in found:
        if np.isfinite(w.values).all():
            entries.append(weight_entry(w))
            reaches.append(w.reaches)
        else:  # no PSNR exists, and report.json holds no NaN
            unmatched.append({"name": w.name, "reason": "the float weight holds NaN or infinity"})
    return WeightTable(entries, reaches, unmatched)


def attach_to_layers(layers: list[dict[str, Any]], weights: list[dict[str, Any]]) -> None:
    """Sets ``weight_psnr_db`` and ``weight_worst_channel_psnr_db`` on the layers that consume weights.

    A layer with several weights gets the lowest of each; ``weight_effective_psnr_db`` too.
    """
    by_name = {layer["name"]: layer for layer in layers}
    for w in weights:
        layer = by_name.get(w["layer"])
        if layer is None:
            continue
        for key, value in (("weight_psnr_db", w["psnr_db"]), ("weight_worst_channel_psnr_db", _worst(w)),
                           ("weight_effective_psnr_db", w.get("effective_psnr_db"))):
            if value is not None:
                layer[key] = value if layer.get(key) is None else min(layer[key], value)


def worst_psnr_db(w: Mapping[str, Any]) -> float | None:
    """The lowest channel PSNR of a ``report["weights"]`` entry, or its tensor PSNR without channel figures."""
    channels = [c for c in w.get("channel_psnr_db") or [] if c is not None]
    return min(channels) if channels else w.get("psnr_db")


def _worst(w: dict[str, Any]) -> float | None:
    return None if w["worst_channel"] is None else w["channel_psnr_db"][w["worst_channel"]]


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """(q − zero_point)·scale in float64, per channel along ``qp.axis`` when it has several scales."""
    scale = np.asarray(qp.scale, dtype=np.float64)
    zero = np.asarray(qp.zero_point, dtype=np.float64)
    if qp.axis is not None and scale.size > 1:
        shape = [1] * q.ndim
        shape[qp.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q.astype(np.float64) - zero) * scale


def weight_entry(w: QuantizedWeight) -> dict[str, Any]:
    """The report entry of one weight (see the module doc for every figure), ``layer`` None."""
    f = w.values.astype(np.float64)
    d = dequantize(w.q, w.qparams)
    err = (f - d) ** 2
    magnitude = np.abs(f)
    overall = psnr_db(float(magnitude.max(initial=0.0)), float(err.mean()) if err.size else 0.0)
    channels: list[float | None] = []
    effective: list[float] = []
    dead: list[int] = []
    if w.channel_axis is not None and f.ndim:
        n = f.shape[w.channel_axis]
        peaks = np.moveaxis(magnitude, w.channel_axis, 0).reshape(n, -1).max(axis=1)
        mses = np.moveaxis(err, w.channel_axis, 0).reshape(n, -1).mean(axis=1)
        median = float(np.median(peaks))
        live = peaks >= DEAD_FRACTION * median
        channels = [_round(psnr_db(p, m)) if alive else None
                    for p, m, alive in zip(peaks.tolist(), mses.tolist(), live)]
        dead = np.flatnonzero(~live).tolist()
        typical = np.maximum(peaks, median)
        effective = [v for v in (psnr_db(p, m) for p, m, alive in zip(typical.tolist(), mses.tolist(), live) if alive)
                     if v is not None]
    defined = [(v, i) for i, v in enumerate(channels) if v is not None]
    return {
        "name": w.name,
        "layer": None,
        "op_type": w.op_type,
        "axis": w.qparams.axis,
        "channel_axis": w.channel_axis,
        "shape": list(f.shape),
        "dtype": w.qparams.dtype,
        "psnr_db": _round(overall),
        "channel_psnr_db": channels,
        "worst_channel": min(defined)[1] if defined else None,
        "dead_channels": dead,
        "effective_psnr_db": _round(min(effective)) if effective else None if channels else _round(overall),
        "histogram": histogram(w.values, d, w.qparams),
    }


def quant_range(qp: QParams) -> tuple[float, float]:
    """The real values the integer type can represent; per channel, the widest over channels."""
    lo, hi = qp.levels()
    scale, zero = np.asarray(qp.scale, dtype=np.float64), np.asarray(qp.zero_point, dtype=np.float64)
    return float(((lo - zero) * scale).min()), float(((hi - zero) * scale).max())


def histogram(values: np.ndarray, d: np.ndarray, qp: QParams) -> dict[str, Any] | None:
    """Counts of the float weights and the dequantized ones ``d``: [below range, 64 bins, above range]."""
    lo, hi = quant_range(qp)
    if not hi > lo:
        return None
    edges = np.linspace(lo, hi, BINS + 1)
    # Sorted in their own type (float32 sorts faster); widening to float64 is exact and keeps the order.
    return {"range": [lo, hi], "float": _counts(np.sort(values, axis=None).astype(np.float64), edges),
            "int8": _counts(np.sort(d, axis=None), edges)}


def _counts(ascending: np.ndarray, edges: np.ndarray) -> list[int]:
    """[below, np.histogram(bins=edges) counts, above] of sorted values: a binary search per edge.

    A bin holds edges[i] <= v < edges[i + 1], the last one also v == edges[-1], as in np.histogram.
    """
    ends = np.concatenate(([0], ascending.searchsorted(edges[:-1], "left"),
                           ascending.searchsorted(edges[-1:], "right"), [ascending.size]))
    return np.diff(ends).tolist()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ---------------------------------------------------------------- ONNX


def onnx_weights(float_model: onnx.ModelProto,
                 int8_model: onnx.ModelProto) -> tuple[list[QuantizedWeight], list[dict[str, str]]]:
    """Integer weights of an ONNX int8 model (QDQ or QOperator) paired with the float model's."""
    f, q = _Graph(float_model), _Graph(int8_model)
    f_nodes = {n.name: n for n in f.nodes if n.name}
    found: list[QuantizedWeight] = []
    unmatched: list[dict[str, str]] = []
    seen: set[str] = set()
    for name, qp, q_node, float_slot in _onnx_candidates(q):
        if name in seen:
            continue
        seen.add(name)
        values, f_node, slot = _float_counterpart(name, q_node, float_slot, f, f_nodes)
        q_values = q.constant(name)
        if values is None:
            unmatched.append({"name": name, "reason": "no float weight of the same node or name"})
            continue
        if values.shape != q_values.shape:
            unmatched.append({"name": name, "reason": f"shapes differ: float {list(values.shape)} vs int8 "
                                                      f"{list(q_values.shape)}"})
            continue
        op_type = f_node.op_type if f_node is not None else q_node.op_type
        axis = qp.axis if qp.axis is not None else _onnx_channel_axis(f_node, slot, values.ndim)
        found.append(QuantizedWeight(name, op_type, values, q_values, qp, axis, _onnx_reaches(f_node, f)))
    return found, unmatched


def _onnx_candidates(q: _Graph):
    """(integer weight name, qparams, int8 consuming node, slot of the float op's operand)."""
    for node in q.nodes:
        if node.op_type == "DequantizeLinear":
            qp = _dq_qparams(q, node)
            if qp is None:
                continue
            for consumer in q.consumers.get(node.output[0], []):
                yield node.input[0], qp, consumer, list(consumer.input).index(node.output[0])
                break
        for value, scale, zero, float_slot in _QOPERATOR.get(node.op_type, ()):
            if len(node.input) <= zero or node.input[value] not in q.initializers:
                continue
            qp = _qparams(q, node.input[value], node.input[scale], node.input[zero],
                          _qoperator_axis(node, value))
            if qp is not None:
                yield node.input[value], qp, node, float_slot


def _dq_qparams(q: _Graph, node: onnx.NodeProto) -> QParams | None:
    attrs = {a.name: a for a in node.attribute}
    if "block_size" in attrs and attrs["block_size"].i:
        return None  # blocked quantization: scales per block, not per channel
    return _qparams(q, node.input[0], node.input[1], node.input[2] if len(node.input) > 2 else "",
                    attrs["axis"].i if "axis" in attrs else 1)


def _qparams(q: _Graph, name: str, scale_name: str, zero_name: str, axis: int) -> QParams | None:
    values = q.constant(name)
    if values is None or values.dtype.name not in _INTEGER_TYPES:
        return None  # most DequantizeLinear nodes dequantize activations: their scales are not read
    scale = q.constant(scale_name)
    if scale is None:
        return None
    zero = q.constant(zero_name) if zero_name else None
    zero = np.zeros(scale.shape, dtype=values.dtype) if zero is None else zero
    per_channel = scale.size > 1
    return QParams(scale=scale.reshape(-1).tolist(), zero_point=zero.reshape(-1).tolist(),
                   axis=axis % values.ndim if per_channel else None, dtype=values.dtype.name)


def _qoperator_axis(node: onnx.NodeProto, value_slot: int) -> int:
    """The axis a 1-D QOperator weight scale runs along (only read when it has several entries)."""
    if node.op_type == "QLinearConv":
        return 0
    if node.op_type == "QGemm" and value_slot == 3:
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return -1  # QLinearMatMul: per column of B


def _float_counterpart(name: str, q_node: onnx.NodeProto, float_slot: int, f: _Graph,
                       f_nodes: dict[str, onnx.NodeProto]) -> tuple[np.ndarray | None, onnx.NodeProto | None, int]:
    """(float weight, float node consuming it, its input slot there).

    The same node's operand (QOperator nodes are named ``<node>_quant``), else the float constant
    the integer one was named after (``<name>_quantized``) and its first consumer.
    """
    for node_name in (q_node.name, q_node.name.removesuffix("_quant")):
        f_node = f_nodes.get(node_name)
        if f_node is not None and float_slot < len(f_node.input):
            values = _float_constant(f, f_node.input[float_slot])
            if values is not None:
                return values, f_node, float_slot
    base = name.removesuffix("_quantized")
    values = _float_constant(f, base)
    f_node = next(iter(f.consumers.get(base, [])), None) if values is not None else None
    return values, f_node, list(f_node.input).index(base) if f_node is not None else -1


def _float_constant(f: _Graph, name: str) -> np.ndarray | None:
    values = f.constant(name) if name else None
    return values if values is not None and np.issubdtype(values.dtype, np.floating) else None


def _onnx_channel_axis(node: onnx.NodeProto | None, slot: int, ndim: int) -> int | None:
    if node is None or ndim == 0:
        return None
    if node.op_type == "Conv" and slot == 1:
        return 0
    if node.op_type == "ConvTranspose" and slot == 1:
        return 1
    if node.op_type == "Gemm" and slot == 1:
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    if node.op_type == "MatMul" and slot == 1:
        return ndim - 1
    return None


def _onnx_reaches(node: onnx.NodeProto | None, f: _Graph) -> tuple[str, ...]:
    """The node's output, then the outputs of at most 3 element-wise ops it passes through alone."""
    if node is None or not node.output:
        return ()
    reaches = [node.output[0]]
    while len(reaches) < 4:
        consumers = f.consumers.get(reaches[-1], [])
        if len(consumers) != 1 or consumers[0].op_type not in _ELEMENTWISE:
            break
        reaches.append(consumers[0].output[0])
    return tuple(reaches)


# ---------------------------------------------------------------- TFLite


def tflite_weights(float_path: PathLike,
                   int8_path: PathLike) -> tuple[list[QuantizedWeight], list[dict[str, str]]]:
    """Integer constant inputs of the int8 TFLite model's ops paired with the float model's constants.

    The float op is the one with the same output tensor name, else the op at the same place
    (the same alignment as layer matching); the float weight is its input in the same slot,
    through a DEQUANTIZE of a float16 constant if there is one.
    """
    from .tflite_matching import _align, read_graph

    f, q = read_graph(float_path), read_graph(int8_path)
    f_data, q_data = _TFLiteBuffers(float_path), _TFLiteBuffers(int8_path)
    aligned = _align(f, q)
    by_int8_op = {k8: kf for kf, k8 in aligned.items()}
    found: list[QuantizedWeight] = []
    unmatched: list[dict[str, str]] = []
    seen: set[int] = set()
    for k, op in enumerate(q.ops):
        if op.type in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for slot, i in enumerate(op.inputs):
            i = _through_dequantize(q, i)
            t = q.tensors[i]
            if i in seen or not t.constant or t.qparams is None or t.dtype not in _INTEGER_TYPES:
                continue
            seen.add(i)
            kf = _tflite_float_op(f, q, op, by_int8_op.get(k))
            source = _through_dequantize(f, f.ops[kf].inputs[slot]) if kf is not None and slot < len(
                f.ops[kf].inputs) else None
            values = f_data.array(f, source) if source is not None and f.tensors[source].constant else None
            if values is None or not np.issubdtype(values.dtype, np.floating):
                unmatched.append({"name": t.name, "reason": "no float constant in the same op and slot"})
                continue
            q_values = q_data.array(q, i)
            if values.shape != q_values.shape:
                unmatched.append({"name": t.name, "reason": f"shapes differ: float {list(values.shape)} vs int8 "
                                                            f"{list(q_values.shape)}"})
                continue
            out = f.tensors[f.ops[kf].outputs[0]].name if f.ops[kf].outputs else None
            axis = t.qparams.axis if t.qparams.axis is not None else (
                _TFLITE_CHANNEL_AXIS.get(op.type) if slot == 1 else None)
            found.append(QuantizedWeight(t.name, op.type, values, q_values, t.qparams, axis,
                                         (out,) if out else ()))
    return found, unmatched


def _tflite_float_op(f, q, op, aligned: int | None) -> int | None:
    for t in op.outputs:
        index = f.by_name.get(q.tensors[t].name)
        if index is not None and index in f.producer:
            return f.producer[index]
    return aligned


def _through_dequantize(g, i: int) -> int:
    """The constant behind a DEQUANTIZE (weight-only int8 or float16 weights), else ``i``."""
    k = g.producer.get(i)
    if k is not None and g.ops[k].type == "DEQUANTIZE" and g.tensors[g.ops[k].inputs[0]].constant:
        return g.ops[k].inputs[0]
    return i


class _TFLiteBuffers:
    """Constant tensor values of a .tflite, read from its buffers (inline or at an offset)."""

    def __init__(self, path: PathLike):
        from ai_edge_litert import schema_py_generated as fb

        self.data = Path(path).read_bytes()
        self.model = fb.Model.GetRootAs(self.data, 0)
        self.subgraph = self.model.Subgraphs(0)

    def array(self, g, i: int) -> np.ndarray | None:
        t = g.tensors[i]
        buf = self.model.Buffers(self.subgraph.Tensors(i).Buffer())
        if buf.DataLength():
            raw = buf.DataAsNumpy().tobytes()
        elif buf.Offset() > 1:  # large models keep buffers after the flatbuffer
            raw = self.data[buf.Offset(): buf.Offset() + buf.Size()]
        else:
            return None
        dtype = np.dtype(t.dtype).newbyteorder("<")
        if len(raw) != int(np.prod(t.shape, dtype=np.int64)) * dtype.itemsize:
            return None  # packed sub-byte types and the like
        values = np.frombuffer(raw, dtype=dtype).reshape(t.shape)
        return values.astype(np.float32) if values.dtype == np.float16 else values
