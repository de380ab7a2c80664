"""What ``calibrate`` and ``fix`` need of a model format, behind one interface.

Both commands run one loop for every format (:mod:`qbench.host.calibrate`, :mod:`qbench.host.fix`);
a :class:`Quantizer` supplies the format's part: its calibration methods, the float model to
quantize, the float graph (ops and the activation tensors between them), the settings of one
quantization as JSON, and the quantization those settings describe. :class:`OnnxQuantizer` drives
ONNX Runtime's static quantizer, :class:`TFLiteQuantizer` ai-edge-quantizer.

Settings are the exact arguments of one quantization; every format's also carry ``float_path``
and ``calibration`` (added by :class:`~qbench.host.trials.Trials`), so that they reproduce the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from .errors import UserError
from .models import InputSpec, inspect_model
from .quantize import onnx as onnx_quant
from .quantize import tflite as tflite_quant
from .quantize import tflite_ranges
from .quantize.prepare import Prepared, prepare_float, resolve_input_shapes
from .session_tflite import RECIPES as TFLITE_RECIPES
from .session_tflite import write_float_reference

if TYPE_CHECKING:
    from .session import RunSettings


@dataclass
class GraphIndex:
    """The float graph as the fallback sees it.

    Attributes:
        ops: every op's id: the node name (ONNX), or the name of the op's first output tensor
            (TFLite: ai-edge-quantizer addresses ops by their output names).
        producer: activation tensor -> the op that writes it.
        readers: activation tensor -> the ops that read it.
        inputs: op -> the activation tensors it reads (constants left out).
    """

    ops: set[str] = field(default_factory=set)
    producer: dict[str, str] = field(default_factory=dict)
    readers: dict[str, list[str]] = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)

    def add(self, op: str, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        self.ops.add(op)
        self.inputs[op] = list(inputs)
        for name in outputs:
            self.producer[name] = op
        for name in inputs:
            self.readers.setdefault(name, []).append(op)


class Quantizer(Protocol):
    """A model format's quantization, as ``calibrate`` and ``fix`` use it.

    Attributes:
        format: "onnx" or "tflite".
        int8_name: the file name of a quantized model.
        methods: the calibration methods, default order.
        note: what the calibration table must say about the methods, or None.
    """

    format: str
    int8_name: str
    methods: tuple[str, ...]
    note: str | None

    def prepare(self, settings: RunSettings) -> Prepared:
        """The float model that is quantized and measured, with static input shapes."""

    def index(self, float_path: Path) -> GraphIndex:
        """The float graph's ops and activation tensors."""

    def settings(self, method: str, base: RunSettings, float_ops: Sequence[str],
                 int16: Sequence[str]) -> dict[str, Any]:
        """The JSON arguments of one quantization: ``float_ops`` (op ids) left in float, ``int16``
        (whatever :meth:`int16_targets` names) with int16 activations."""

    def quantize(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                 debug: bool) -> Path:
        """Quantizes ``settings["float_path"]`` as ``settings`` say into ``out_path``."""

    def quantized(self, report: dict[str, Any], int8_path: Path) -> set[str]:
        """The activation tensors an int8 model (with its report) holds in an integer type."""

    def int16_targets(self, tensors: set[str], index: GraphIndex) -> set[str]:
        """What :meth:`settings` takes as ``int16`` to hold these activation tensors in int16."""

    def describe(self, method: str) -> dict[str, Any]:
        """More fields of a method's row in the calibration table."""


def quantizer_for(model: Path) -> Quantizer:
    """The quantizer of ``model``'s format (read from its bytes).

    Raises:
        UserError: not a model file.
    """
    return TFLiteQuantizer() if inspect_model(model).format == "tflite" else OnnxQuantizer()


class OnnxQuantizer:
    """ONNX Runtime's static QDQ quantizer (:func:`~qbench.host.quantize.onnx.quantize_onnx`).

    Int16 targets are tensors (``TensorQuantOverrides``, quant_type named by its
    ``onnxruntime.quantization.QuantType`` member).
    """

    format = "onnx"
    int8_name = "model.int8.onnx"
    methods = onnx_quant.METHODS
    note = None

    def prepare(self, settings: RunSettings) -> Prepared:
        s = settings
        return prepare_float(s.model, s.input_shapes, s.out_dir, debug=s.debug)

    def index(self, float_path: Path) -> GraphIndex:
        import onnx

        graph = onnx.load(str(float_path)).graph
        constants = {t.name for t in graph.initializer}
        index = GraphIndex()
        for node in graph.node:
            index.add(node.name, [i for i in node.input if i and i not in constants], node.output)
        return index

    def settings(self, method: str, base: RunSettings, float_ops: Sequence[str],
                 int16: Sequence[str]) -> dict[str, Any]:
        return {
            "method": method,
            "activation_type": base.activation_type,
            "per_channel": base.per_channel,
            "nodes_to_exclude": list(float_ops),
            "tensor_overrides": {name: [{"quant_type": "QInt16"}] for name in int16},
        }

    def quantize(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                 debug: bool) -> Path:
        return onnx_quant.quantize_onnx(
            settings["float_path"], out_path, calibration, method=settings["method"],
            activation_type=settings["activation_type"], per_channel=settings["per_channel"],
            nodes_to_exclude=settings["nodes_to_exclude"],
            tensor_overrides=_ort_overrides(settings["tensor_overrides"]), debug=debug,
        )

    def quantized(self, report: dict[str, Any], int8_path: Path) -> set[str]:
        return {x["name"] for x in report.get("layers", []) if x.get("rule") == "qdq"}

    def int16_targets(self, tensors: set[str], index: GraphIndex) -> set[str]:
        return set(tensors)

    def describe(self, method: str) -> dict[str, Any]:
        return {}


def _ort_overrides(overrides: Mapping[str, list[dict[str, str]]]) -> dict | None:
    """JSON overrides (quant_type by name) as ONNX Runtime takes them (QuantType members)."""
    if not overrides:
        return None
    from onnxruntime.quantization import QuantType

    return {name: [{**o, "quant_type": QuantType[o["quant_type"]]} for o in spec]
            for name, spec in overrides.items()}


class TFLiteQuantizer:
    """ai-edge-quantizer (:func:`~qbench.host.quantize.tflite.quantize_with_recipe`).

    The float model is the user's file (``run`` compares that one too); the quantizer's own repairs
    (:func:`~qbench.host.quantize.tflite.prepare_tflite`) keep tensor names. Ops are addressed by
    their first output tensor's name; int16 targets are ops (ai-edge-quantizer sets activation bits
    per op), the producers of the tensors to hold in int16.
    """

    format = "tflite"
    int8_name = "model.int8.tflite"
    methods = tuple(tflite_quant.METHODS)
    note = (f"activation ranges over the calibration samples: minmax = the extremes for tensors of at most "
            f"{tflite_ranges.SMALL} elements per sample, the moving average for larger ones; extremes = the extremes "
            "for all; moving-average = ai-edge-quantizer's own (a 0.95 moving average of each sample's min/max). "
            "Weights: octav, mse, gptq = ai-edge-quantizer's OCTAV, MSE, GPTQ (mse and gptq on the ops with weights "
            "it registers them for), min/max otherwise; " + tflite_quant.NO_HISTOGRAMS)

    def prepare(self, settings: RunSettings) -> Prepared:
        s = settings
        if s.activation_type not in TFLITE_RECIPES:
            raise UserError(f"--activation-type for a TFLite model is int8 or int16, not {s.activation_type!r}")
        info = inspect_model(s.model)
        shapes, notes = resolve_input_shapes(info.inputs, s.input_shapes, Path(s.model).name)
        inputs = [InputSpec(name=i.name, dtype=i.dtype, shape=tuple(shapes[i.name])) for i in info.inputs]
        prepared = tflite_quant.prepare_tflite(Path(s.model).read_bytes(), Path(s.model).name)
        notes += [f"quantizer input: {note}" for note in prepared.notes]
        path = Path(s.model)
        if prepared.rewritten_from is not None:  # plain LiteRT runs only the rewritten float model
            path, note = write_float_reference(s.out_dir, prepared.model)
            notes.append(note)
        return Prepared(path=path, notes=notes, input_shapes=shapes, inputs=inputs)

    def index(self, float_path: Path) -> GraphIndex:
        from .compare.tflite_matching import parse_graph

        prepared = tflite_quant.prepare_tflite(Path(float_path).read_bytes()).model
        graph = parse_graph(prepared, Path(float_path).name)
        index = GraphIndex()
        for op in graph.ops:
            if op.outputs:
                index.add(graph.tensors[op.outputs[0]].name,
                          [graph.tensors[i].name for i in op.inputs if not graph.tensors[i].constant],
                          [graph.tensors[i].name for i in op.outputs])
        return index

    def settings(self, method: str, base: RunSettings, float_ops: Sequence[str],
                 int16: Sequence[str]) -> dict[str, Any]:
        recipe = TFLITE_RECIPES[base.activation_type]
        return {
            "method": method,
            "recipe": recipe,
            "ranges": tflite_quant.METHODS[method][1],
            "keep_float": list(float_ops),
            "int16": list(int16),
            "quantizer_recipe": tflite_quant.tflite_recipe(recipe, method, float_ops, int16),
        }

    def quantize(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                 debug: bool) -> Path:
        return tflite_quant.quantize_with_recipe(
            settings["float_path"], out_path, calibration, settings["quantizer_recipe"], debug,
            settings.get("ranges", "moving-average")).path  # settings from before ranges were a choice

    def quantized(self, report: dict[str, Any], int8_path: Path) -> set[str]:
        from .compare.tflite_matching import read_graph

        return {t.name for t in read_graph(int8_path).tensors if not t.constant and t.qparams is not None
                and not t.is_float}

    def int16_targets(self, tensors: set[str], index: GraphIndex) -> set[str]:
        return {index.producer[t] for t in tensors if t in index.producer}

    def describe(self, method: str) -> dict[str, Any]:
        algorithm, ranges = tflite_quant.METHODS[method]
        return {"algorithm": algorithm, "activation_ranges": ranges}
