"""What a fix search or a sensitivity sweep edits: one calibrated int8 model of a float model, whose
trials are written from that one calibration, never by calibrating again.

Each format has its own (:class:`~qbench.host.quantize.qdq_edit.QdqGraph` for ONNX: edits of the QDQ
graph; :class:`~qbench.host.quantize.tflite_edit.RecipeGraph` for TFLite: ai-edge-quantizer recipes
over the kept calibration); :meth:`ModelFormat.calibrated <qbench.host.formats.base.ModelFormat.calibrated>`
makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol


@dataclass
class Op:
    """A compute op of the int8 model (not a quantize/dequantize op), in topological order.

    Attributes:
        name: the op's id (ONNX: the node name; TFLite: its first output tensor's name).
        op_type: its type.
        reads: quantized activation tensors it reads.
        writes: quantized activation tensors it writes.
        weights: its quantized constants (ONNX: their DequantizeLinear nodes; TFLite: tensor names).
    """

    name: str
    op_type: str
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)


class TrialGraph(Protocol):
    """One calibrated int8 model, indexed for trials.

    Attributes:
        path: the int8 model as calibrated (no edit).
        suffix: the file suffix of its trial models.
        ops: its compute ops, in topological order.
    """

    path: Path
    suffix: str
    ops: list[Op]

    def ranges(self) -> dict[str, Any]:
        """Each quantized activation tensor's calibrated range, by tensor: another calibration's
        ranges for :meth:`write`."""

    def write(self, path: Path, float_tensors: Iterable[str] = (), int16_tensors: Iterable[str] = (),
              float_weights: Iterable[str] = (), ranges: Mapping[str, Any] | None = None) -> Path:
        """Writes a trial model to ``path``: ``float_tensors`` unquantized, ``int16_tensors`` with int16
        activations over the same calibrated range, the ops ``float_weights`` in float (with the float
        model's weights), ``ranges`` (from another calibration's :meth:`ranges`) for those tensors."""
