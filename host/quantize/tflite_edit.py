"""TFLite trial models from one ai-edge-quantizer calibration: the recipe is edited, the QSVs are kept.

ai-edge-quantizer quantizes in two steps: calibration (the QSVs: each activation tensor's min/max,
GPTQ's Hessians) and quantization of a recipe with those QSVs. A fix search or a sensitivity sweep
calibrates once and quantizes each trial with an edited recipe over the same QSVs:

* **float ops**: ``no_quantize`` entries for them (the quantizer puts DEQUANTIZE/QUANTIZE around
  them), so they compute in float on float weights;
* **int16 tensors**: the ops writing them get int16 activations with int8 weights (``a16w8``) over
  the same calibrated range; the quantizer requantizes where int8 and int16 tensors meet;
* **ranges**: another calibration's QSVs for those tensors (the activation ranges of another
  method: ai-edge-quantizer has no per-tensor weight algorithm to swap, and no histograms).

Ops are addressed by their first output tensor's name, as ai-edge-quantizer's scopes address them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from .tflite import PreparedTFLite, quantize_calibrated, tflite_recipe
from .tflite_rewrite import text
from .trial_graph import Op


class RecipeGraph:
    """A calibrated TFLite int8 model, indexed for trials (see the module docstring).

    Args:
        prepared: the float model as the quantizer took it.
        name: the float model's file name, for errors.
        recipe: the recipe name (``static_wi8_ai8``, ...) and ``method`` the calibration method,
            as :func:`~.tflite.tflite_recipe` takes them.
        qsvs: the calibration of ``prepared`` with that recipe.
        int8_path: the int8 model quantized with them.
    """

    suffix = ".tflite"

    def __init__(self, prepared: PreparedTFLite, name: str, recipe: str, method: str, qsvs: dict,
                 int8_path: Path, debug: bool = False) -> None:
        self.prepared, self.name, self.recipe, self.method = prepared, name, recipe, method
        self.qsvs, self.path, self.debug = qsvs, Path(int8_path), debug
        quantized = _quantized_tensors(self.path.read_bytes())
        self.ops: list[Op] = []
        self.producer: dict[str, str] = {}
        for op_type, inputs, constants, outputs in _ops(prepared.model):
            if not outputs:
                continue
            op = Op(outputs[0], op_type, [t for t in inputs if t in quantized], [t for t in outputs if t in quantized],
                    [t for t in constants if t in quantized])
            self.ops.append(op)
            self.producer.update({t: op.name for t in outputs})

    def ranges(self) -> dict[str, Any]:
        tensors = {t for op in self.ops for t in (*op.reads, *op.writes)}
        return {t: q for t, q in self.qsvs.items() if t in tensors}

    def write(self, path: Path, float_tensors: Iterable[str] = (), int16_tensors: Iterable[str] = (),
              float_weights: Iterable[str] = (), ranges: Mapping[str, Any] | None = None) -> Path:
        floats = set(float_weights) | {self.producer[t] for t in float_tensors if t in self.producer}
        int16 = {self.producer[t] for t in int16_tensors if t in self.producer} - floats
        recipe = tflite_recipe(self.recipe, self.method, sorted(floats), sorted(int16))
        return quantize_calibrated(self.prepared, self.name, path, recipe, {**self.qsvs, **(ranges or {})},
                                   self.debug)


def _ops(model: bytes) -> list[tuple[str, list[str], list[str], list[str]]]:
    """Subgraph 0's ops in execution order: (op type, activation inputs, constant inputs, outputs) by name."""
    from ai_edge_litert import schema_py_generated as fb

    root = fb.Model.GetRootAs(model, 0)
    sg = root.Subgraphs(0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    result = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = root.OperatorCodes(op.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        inputs, constants = [], []
        for t in (op.InputsAsNumpy() if op.InputsLength() else []):
            if t < 0:
                continue
            tensor = sg.Tensors(int(t))
            buffer = root.Buffers(tensor.Buffer())
            (constants if buffer is not None and buffer.DataLength() else inputs).append(text(tensor.Name()))
        outputs = [text(sg.Tensors(int(t)).Name()) for t in (op.OutputsAsNumpy() if op.OutputsLength() else [])
                   if t >= 0]
        result.append((kind, inputs, constants, outputs))
    return result


def _quantized_tensors(model: bytes) -> set[str]:
    """Names of the int8 model's integer tensors (activations and weights) that carry a scale."""
    from ai_edge_litert import schema_py_generated as fb

    sg = fb.Model.GetRootAs(model, 0).Subgraphs(0)
    integer = {fb.TensorType.INT8, fb.TensorType.INT16, fb.TensorType.UINT8, fb.TensorType.INT32}
    found = set()
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        q = t.Quantization()
        if t.Type() in integer and q is not None and q.ScaleLength():
            found.add(text(t.Name()))
    return found
