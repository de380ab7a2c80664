"""Trial models made by editing one calibrated QDQ graph, never by calibrating again.

A sensitivity sweep or a fix search measures dozens of mixed-precision variants of one int8 model.
Calibrating each anew would cost a calibration per trial and could move every other tensor's range;
editing the calibrated graph changes only what the trial is about:

* **float tensor**: its QuantizeLinear/DequantizeLinear pair is removed and its readers take the
  float tensor. ONNX Runtime's QDQ quantizer drops a Relu or Clip whose clamp the quantized range
  already does (``QDQKeepRemovableActivations`` off); when such a tensor goes float, the dropped op
  is put back from the float graph, else its clamp would be lost with the pair.
* **float weights** (an op kept in float): the DequantizeLinear of each of its constant inputs is
  replaced by the float model's own initializer (the dequantized values when the float model has no
  initializer of that name and shape).
* **int16 tensor**: its pair becomes int16 with the *same calibrated range*: symmetric pairs
  (zero point 0) keep zero point 0 and get scale × qmax8 / 32767; others map [rmin, rmax] onto
  [−32768, 32767]. Standard-domain Q/DQ carry int16 from opset 21; below that the pair moves to
  the ``com.microsoft`` domain (ONNX Runtime's own int16 Q/DQ, as its quantizer writes them).

Tensors are named as in the float graph; ops by their node names (the QDQ graph keeps them).
Edits see the quantizer's own graph: the HardSigmoid gates that the int8 model runs as quantized
Adds are HardSigmoids again while edited (:mod:`~qbench.host.quantize.hard_sigmoid`), and each
written model gets them back, where its ranges still allow, as well as float weights that ONNX
Runtime keeps float (:mod:`~qbench.host.quantize.float_ops`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..errors import UserError
from .float_ops import keep_float
from .graph_maps import producers_of, readers_of, reads, subgraph_nodes
from .hard_sigmoid import gates_as_add, restore_gates
from .trial_graph import Op

_LEVELS = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
           np.dtype(np.int16): (-32768, 32767), np.dtype(np.uint16): (0, 65535)}
_REMOVABLE = ("Relu", "Clip")


@dataclass
class Pair:
    """One quantized activation tensor of the QDQ graph.

    Attributes:
        tensor: its name in the float graph.
        quantize: the QuantizeLinear node's name.
        dequantize: the DequantizeLinear nodes' names (one, for ONNX Runtime's quantizer).
    """

    tensor: str
    quantize: str
    dequantize: list[str]


class QdqGraph:
    """A calibrated QDQ model and its float model, indexed for edits.

    Args:
        int8_path: the QDQ model (ONNX Runtime's static quantizer, QDQ format).
        float_path: the float model it was quantized from.

    Raises:
        UserError: not a QDQ model.
    """

    suffix = ".onnx"

    def __init__(self, int8_path: Path, float_path: Path) -> None:
        import onnx

        self.path = Path(int8_path)
        self.float_path = Path(float_path)
        self.model = onnx.load(str(int8_path))
        self.float_model = onnx.load(str(float_path))
        restore_gates(self.model, self.float_model)
        graph = self.model.graph
        self._inits = {t.name: t for t in graph.initializer}
        self._nodes = {n.name: n for n in graph.node}
        if len(self._nodes) != len(graph.node):
            raise UserError(f"{Path(int8_path).name}: QDQ edits need unique node names")
        producer = producers_of(graph)
        readers = readers_of(graph)
        outputs = {o.name for o in graph.output}
        self.pairs: dict[str, Pair] = {}
        by_dq_output: dict[str, str] = {}
        for q in graph.node:
            if q.op_type != "QuantizeLinear" or q.input[0] in self._inits:
                continue
            dqs = [r for r in readers.get(q.output[0], []) if r.op_type == "DequantizeLinear"]
            if not dqs or len(dqs) != len(readers.get(q.output[0], [])):
                continue
            out = [d.output[0] for d in dqs if d.output[0] in outputs]
            tensor = out[0] if out else q.input[0]
            self.pairs[tensor] = Pair(tensor, q.name, [d.name for d in dqs])
            for d in dqs:
                by_dq_output[d.output[0]] = tensor
        if not self.pairs:
            raise UserError(f"{Path(int8_path).name}: no QuantizeLinear/DequantizeLinear pair to edit")
        self._dropped = self._dropped_activations()
        src_to_tensor = {self._source(p): t for t, p in self.pairs.items()}
        self.ops: list[Op] = []
        for n in graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            op = Op(n.name, n.op_type)
            for i in n.input:
                if i in by_dq_output:
                    op.reads.append(by_dq_output[i])
                elif i in producer and producer[i].op_type == "DequantizeLinear" and producer[i].input[0] in self._inits:
                    op.weights.append(producer[i].name)
            op.writes = [src_to_tensor[o] for o in n.output if o in src_to_tensor]
            self.ops.append(op)

    def _source(self, pair: Pair) -> str:
        return self._nodes[pair.quantize].input[0]

    def _dropped_activations(self) -> dict[str, object]:
        """Float Relu/Clip nodes the quantizer dropped, by the tensor they wrote (now written by their producer)."""
        present = set(self._nodes)
        dropped = {}
        for n in self.float_model.graph.node:
            if n.op_type in _REMOVABLE and n.name not in present and n.output[0] in self.pairs:
                dropped[n.output[0]] = n
        return dropped

    def ranges(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each pair's calibrated int8 (scale, zero point), by tensor: another method's ranges for :meth:`write`."""
        from onnx import numpy_helper

        found = {}
        for tensor, pair in self.pairs.items():
            q = self._nodes[pair.quantize]
            if len(q.input) > 2 and q.input[2]:
                found[tensor] = (numpy_helper.to_array(self._inits[q.input[1]]),
                                 numpy_helper.to_array(self._inits[q.input[2]]))
        return found

    def write(self, path: Path, float_tensors: Iterable[str] = (), int16_tensors: Iterable[str] = (),
              float_weights: Iterable[str] = (),
              ranges: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Path:
        """Writes the QDQ model with these edits (see the module docstring) to ``path``.

        Args:
            float_tensors: activation tensors (float-graph names) whose pair is removed.
            int16_tensors: activation tensors whose pair becomes int16 (float ones win).
            float_weights: ops whose constant inputs go back to the float model's values.
            ranges: tensor -> (scale, zero point) of another calibration (:meth:`ranges` of another
                method's graph): the pair quantizes with that range instead (applied before int16).

        Raises:
            KeyError: a tensor without a pair, or an unknown op.
        """
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        floats = set(float_tensors)
        edit = _Edit(model, self.float_model)
        for name in sorted(floats):  # sorted: the same edits write the same bytes
            edit.remove_pair(self.pairs[name], self._dropped.get(name))
        for name in sorted(set(ranges or {}) - floats):
            edit.set_range(self.pairs[name], *ranges[name])
        for name in sorted(set(int16_tensors) - floats):
            edit.to_int16(self.pairs[name])
        ops = {op.name: op for op in self.ops}
        float_weights = sorted(set(float_weights))
        for name in float_weights:
            for dq in ops[name].weights:
                edit.float_constant(dq)
        edit.finish()
        gates_as_add(model)
        keep_float(model, float_weights)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        return path


class _Edit:
    """Edits applied to one copy of the QDQ model; nodes are removed in :meth:`finish`."""

    def __init__(self, model, float_model) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes = {n.name: n for n in self.graph.node}
        self.inits = {t.name: t for t in self.graph.initializer}
        self.float_inits = {t.name: t for t in float_model.graph.initializer}
        self.removed: set[str] = set()
        self.outputs = {o.name for o in self.graph.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def _rename(self, old: str, new: str) -> None:
        for n in self.graph.node:
            for k, o in enumerate(n.output):
                if o == old:
                    n.output[k] = new
        self._reroute(old, new)

    def _reroute(self, old: str, new: str) -> None:
        """Every reader of ``old`` reads ``new``, inside If/Loop/Scan bodies too."""
        for n in [*self.graph.node, *(inner for node in self.graph.node for inner in subgraph_nodes(node))]:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new

    def remove_pair(self, pair: Pair, dropped) -> None:
        q = self.nodes[pair.quantize]
        source = q.input[0]
        self.removed.update([pair.quantize, *pair.dequantize])
        if dropped is not None:  # the Relu/Clip the quantizer folded into this pair's range
            restored = self._restore(dropped)
            self._rename(source, restored.input[0])
            restored.output[0] = source
            self.graph.node.append(restored)
            self.nodes[restored.name] = restored
        for dq in pair.dequantize:
            out = self.nodes[dq].output[0]
            if out in self.outputs:
                self._rename(source, out)
                source = out
            else:
                self._reroute(out, source)

    def _restore(self, node):
        import onnx

        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for name in list(copy.input)[1:]:  # Clip's min/max constants
            if name and name not in self.inits and name in self.float_inits:
                self.graph.initializer.append(self.float_inits[name])
                self.inits[name] = self.float_inits[name]
        return copy

    def set_range(self, pair: Pair, scale: np.ndarray, zero_point: np.ndarray) -> None:
        from onnx import numpy_helper

        q = self.nodes[pair.quantize]
        base = q.input[0] + "_range"
        self.graph.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), base + "_scale"),
                                       numpy_helper.from_array(np.asarray(zero_point), base + "_zero_point")])
        self.inits[base + "_scale"] = self.graph.initializer[-2]
        self.inits[base + "_zero_point"] = self.graph.initializer[-1]
        for node in (q, *(self.nodes[d] for d in pair.dequantize)):
            node.input[1], node.input[2:] = base + "_scale", [base + "_zero_point"]

    def to_int16(self, pair: Pair) -> None:
        from onnx import numpy_helper

        q = self.nodes[pair.quantize]
        scale = numpy_helper.to_array(self.inits[q.input[1]]).astype(np.float64)
        zp_name = q.input[2] if len(q.input) > 2 and q.input[2] else ""
        zp = numpy_helper.to_array(self.inits[zp_name]) if zp_name else np.zeros((), np.uint8)
        lo, hi = _LEVELS[zp.dtype]
        if np.all(zp == 0) and lo < 0:  # symmetric int8: stays symmetric
            scale16 = scale * hi / 32767.0
            zp16 = np.zeros(zp.shape, np.int16)
        else:
            rmin = np.minimum((lo - zp.astype(np.float64)) * scale, 0.0)
            rmax = np.maximum((hi - zp.astype(np.float64)) * scale, 0.0)
            scale16 = np.maximum(rmax - rmin, 1e-30) / 65535.0
            zp16 = np.clip(np.round(-32768 - rmin / scale16), -32768, 32767).astype(np.int16)
        base = q.input[0] + "_int16"
        self.graph.initializer.extend([numpy_helper.from_array(scale16.astype(np.float32), base + "_scale"),
                                       numpy_helper.from_array(zp16, base + "_zero_point")])
        for node in (q, *(self.nodes[d] for d in pair.dequantize)):
            node.input[1], node.input[2:] = base + "_scale", [base + "_zero_point"]
            if self.opset < 21:
                node.domain = "com.microsoft"
        if self.opset < 21 and not any(o.domain == "com.microsoft" for o in self.model.opset_import):
            self.model.opset_import.add(domain="com.microsoft", version=1)

    def float_constant(self, dq_name: str) -> None:
        from onnx import numpy_helper

        if dq_name in self.removed:
            return
        dq = self.nodes[dq_name]
        out = dq.output[0]
        quantized = dq.input[0]
        original = self.float_inits.get(quantized[: -len("_quantized")] if quantized.endswith("_quantized") else "")
        values = self._dequantized(dq)
        if original is not None and tuple(original.dims) == values.shape:
            values = numpy_helper.to_array(original)
        self.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), out))
        self.removed.add(dq_name)

    def _dequantized(self, dq) -> np.ndarray:
        from onnx import numpy_helper

        q = numpy_helper.to_array(self.inits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(self.inits[dq.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(self.inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] \
            else np.zeros_like(scale)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and q.ndim > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return (q - zp) * scale

    def finish(self) -> None:
        kept = [n for n in self.graph.node if n.name not in self.removed]
        del self.graph.node[:]
        self.graph.node.extend(_topological(kept, {i.name for i in self.graph.input} | set(self.inits)
                                            | {t.name for t in self.graph.initializer}))
        used = {i for n in self.graph.node for i in reads(n)}
        keep = [t for t in self.graph.initializer if t.name in used or t.name in self.outputs]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


def _topological(nodes: list, available: set[str]) -> list:
    """``nodes`` ordered so every node follows the producers of its inputs (restored ops were appended)."""
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in reads(n)):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            ordered.extend(rest)  # inputs from outside the graph: keep their order
            break
        pending = rest
    return ordered
