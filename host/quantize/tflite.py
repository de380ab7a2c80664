"""Quantizes a float .tflite with ai-edge-quantizer (static int8, or int16 activations).

Published float models trip ai-edge-quantizer in several ways, which :func:`prepare_tflite` fixes
with the flatbuffer schema that ships with ai-edge-litert (no TensorFlow):

* no signature def (the quantizer calibrates through one): ``serving_default`` is added for
  subgraph 0, its inputs and outputs named after their tensors;
* operator codes of the old schema, where only ``deprecated_builtin_code`` is set: the quantizer
  reads ``builtin_code`` (0, ADD) and quantizes every op as an ADD;
* MediaPipe's ``Convolution2DTransposeBias`` custom op, sparse weights behind DENSIFY, float16
  weights behind DEQUANTIZE: rewritten into builtins and constants (:mod:`.tflite_rewrite`);
* tensor names that repeat across subgraphs (an IF's branches each name their arguments ``arg0``),
  which the quantizer refuses: made unique (:mod:`.tflite_rewrite`); the ops of those subgraphs stay
  float (the quantizer calibrates subgraph 0 only: :func:`with_bodies_float`);
* a dynamic input whose default shape is a placeholder the model does not prepare at: given the
  data's shape (:mod:`.tflite_rewrite`);
* separate activation ops, whole-map average pools and HARD_SWISH, which XNNPACK runs in float
  only, so each one splits the int8 model's delegate partition: rewritten into ops it runs in int8
  (:mod:`.tflite_rewrite`).

A float model that LiteRT cannot load (a custom op no builtin replaces, such as MediaPipe's
``TransformTensorBilinear``) is refused with the ops named; an int8 model LiteRT cannot load or
run is refused with the op and its kernel's reason, and kept on disk for inspection.

Tensor names are kept, so float and int8 layers still match by name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

from qbench.host.errors import UserError
from qbench.host.quantize import tflite_checks as checks
from qbench.host.quantize import tflite_ranges
from qbench.host.quantize import tflite_rewrite as rewrite
from qbench.host.quantize.quiet import quiet_runtime

#: recipes of ai_edge_quantizer.recipe offered here (int8 weights) -> their activation bits
RECIPES = {"static_wi8_ai8": 8, "static_wi8_ai16": 16}
#: calibration methods -> (ai-edge-quantizer algorithm, activation ranges: see :mod:`.tflite_ranges`).
#: The algorithm sets the weight ranges (OCTAV, MSE: clipping searches; GPTQ: error-compensating
#: rounding), and the activation ranges of ops that have their own (none of those offered here).
METHODS = {
    "minmax": ("min_max_uniform_quantize", "minmax"),
    "extremes": ("min_max_uniform_quantize", "extremes"),
    "moving-average": ("min_max_uniform_quantize", "moving-average"),
    "octav": ("OCTAV", "minmax"),
    "mse": ("MSE", "minmax"),
    "gptq": ("GPTQ", "minmax"),
}
#: what ai-edge-quantizer cannot do that ONNX calibration methods ask for
NO_HISTOGRAMS = ("ai-edge-quantizer keeps no histograms of activations (no entropy, percentile or distribution "
                 "calibration): its activation ranges are min/max")
SIGNATURE_KEY = "serving_default"

PathLike = Union[str, Path]


@dataclass
class PreparedTFLite:
    """A float model ready for ai-edge-quantizer.

    Attributes:
        model: the model bytes (the input unchanged when nothing needed fixing).
        signature_key: the signature def of subgraph 0.
        signature_inputs: input tensor name -> the signature's name for it.
        notes: what was changed, one sentence each, for the user.
        rewritten_from: the user's model when custom ops were rewritten (LiteRT runs it only
            with XNNPACK): ``model`` is then the float reference to compare against; else None.
        xnnpack_ops: custom ops left in the model, which only XNNPACK runs (MediaPipe's
            MaxPoolingWithArgmax2D, MaxUnpooling2D): the quantizer keeps them in float, and the
            int8 model, like the float one, loads only with XNNPACK.
        reference: ``model`` before the rewrites only the int8 model needs (fused activations,
            pools as MEAN, HARD_SWISH as a gate): the float reference when :attr:`needs_reference`.
        body_tensors: names of the tensors of every subgraph but 0 (the bodies of IF and WHILE ops),
            which every recipe keeps in float (see :func:`with_bodies_float`).
        resized_inputs: dynamic inputs whose default shape became the data's: the user's model
            does not load at its own (see :func:`~.tflite_rewrite.default_input_shapes`).
    """

    model: bytes
    signature_key: str
    signature_inputs: dict[str, str]
    notes: list[str]
    rewritten_from: bytes | None
    xnnpack_ops: list[str]
    reference: bytes
    body_tensors: list[str] = field(default_factory=list)
    resized_inputs: list[str] = field(default_factory=list)

    @property
    def needs_reference(self) -> bool:
        """Whether the float model to compare against is ``reference``, not the user's file: LiteRT
        runs the user's only with XNNPACK, or not at its default input shapes."""
        return self.rewritten_from is not None or bool(self.resized_inputs)


@dataclass
class QuantizedTFLite:
    """A quantized model on disk.

    Attributes:
        path: the int8 model.
        notes: what :func:`prepare_tflite` changed.
        float_model: the float reference to compare against when the user's file cannot be (see
            :attr:`PreparedTFLite.needs_reference`); else None.
        prepared: the model as the quantizer took it, and ``qsvs`` its calibration: what trial models
            are written from (:class:`~.tflite_edit.RecipeGraph`).
    """

    path: Path
    notes: list[str] = field(default_factory=list)
    float_model: bytes | None = None
    prepared: PreparedTFLite | None = None
    qsvs: dict | None = None


def prepare_tflite(model: bytes, name: str = "the model",
                   input_shapes: Mapping[str, Sequence[int]] | None = None) -> PreparedTFLite:
    """Fixes what keeps ai-edge-quantizer from quantizing ``model`` correctly (see the module doc).

    ``input_shapes`` (input name -> one sample's shape, as the data has it) become the default
    shapes of inputs with dynamic dims.

    Raises:
        UserError: not a TFLite model, or one LiteRT cannot load (the custom ops it lacks named).
    """
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    if model[4:8] != b"TFL3":
        raise UserError("not a TFLite model (no TFL3 identifier)")
    original = model
    try:
        obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    except Exception as exc:  # the flatbuffer reader raises whatever its parsing hits
        raise UserError(f"not a readable TFLite model: {checks.first_line(exc)}") from exc
    notes = []
    old_codes = [c for c in obj.operatorCodes or [] if c.deprecatedBuiltinCode > c.builtinCode]
    for code in old_codes:
        code.builtinCode = code.deprecatedBuiltinCode
    if old_codes:
        notes.append(f"{len(old_codes)} operator code(s) of the old schema given their builtin_code")
    rewritten = rewrite.rewrite_custom_ops(obj, fb)
    for op, count in rewritten.items():
        notes.append(f"{count} MediaPipe custom op(s) {op} rewritten as builtin {rewrite.REPLACEABLE[op]} with bias "
                     "(plain LiteRT has no kernel for it)")
    xnnpack_ops = rewrite.custom_ops(obj, fb)
    checks.check_float_loads(model, name, xnnpack_ops)
    if xnnpack_ops:
        notes.append(f"custom op(s) {', '.join(xnnpack_ops)} kept in float: only XNNPACK (LiteRT's default delegate) "
                     "runs them, so neither model loads with --delegate none")
    densified = rewrite.densify_weights(obj, fb, bytes(flatbuffer_utils.convert_object_to_bytearray(obj)))
    if densified:
        notes.append(f"{densified} sparse weight(s) behind DENSIFY densified into constants")
    resized = rewrite.default_input_shapes(obj, input_shapes or {})
    if resized:
        notes.append(f"dynamic input(s) {', '.join(resized)} given the data's shape as their default (the "
                     "quantizer allocates at the default shape before it feeds samples)")
    renamed = rewrite.unique_tensor_names(obj)
    if renamed:
        notes.append(f"{renamed} repeated tensor name(s) made unique with their subgraph's index "
                     "(ai-edge-quantizer keys its ranges by name)")
    folded = rewrite.fold_fp16_weights(obj, fb)
    if folded:
        notes.append(f"{folded} float16 weight(s) behind DEQUANTIZE folded into float32 constants")
    subgraph = obj.subgraphs[0]
    names = [rewrite.text(t.name) for t in subgraph.tensors]
    sig = next((s for s in obj.signatureDefs or [] if s.subgraphIndex == 0), None)
    if sig is None:
        sig = fb.SignatureDefT()
        sig.signatureKey = SIGNATURE_KEY
        sig.subgraphIndex = 0
        sig.inputs = _tensor_maps(fb, names, list(subgraph.inputs), "input")
        sig.outputs = _tensor_maps(fb, names, list(subgraph.outputs), "output")
        obj.signatureDefs = [*(obj.signatureDefs or []), sig]
        notes.append(f"signature def {SIGNATURE_KEY!r} added (the model has none)")
    by_tensor = {names[m.tensorIndex]: rewrite.text(m.name) for m in sig.inputs or []}
    if notes:
        model = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
    # The float reference stops here: what follows changes float results in the last bits (a MEAN
    # sums in another order than the pool), and only the int8 model needs it.
    reference = model
    partition_fixes = [(rewrite.fuse_activations(obj, fb), "activation op(s) fused into the op before them"),
                       (rewrite.global_pools_as_mean(obj, fb), "whole-map AVERAGE_POOL_2D rewritten as MEAN"),
                       (rewrite.hard_swish_as_gate(obj, fb), "HARD_SWISH rewritten as ADD, RELU6 and MUL")]
    for count, what in partition_fixes:
        if count:
            notes.append(f"{count} {what} (XNNPACK runs the original in float only: in the int8 model it "
                         "would split the delegate's partition)")
    if any(count for count, _ in partition_fixes):
        model = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
    bodies = obj.subgraphs[1:]  # left float; the run's control-flow note (compare.matching.ControlFlow) says so
    return PreparedTFLite(model, rewrite.text(sig.signatureKey), by_tensor, notes, original if rewritten else None,
                          xnnpack_ops, reference, [rewrite.text(t.name) for sg in bodies for t in sg.tensors or []],
                          resized)


def with_bodies_float(recipe: list[dict], prepared: PreparedTFLite) -> list[dict]:
    """``recipe`` with a last entry (the quantizer's rule: later entries win) that leaves every op of the
    control-flow bodies in float. The quantizer calibrates only subgraph 0, through its signature, and
    fails on a body op it is told to quantize ("not found in tensor_name_to_qsv")."""
    if not prepared.body_tensors:
        return recipe
    algorithm_manager, qtyping, _, recipe_manager = _quantizer_modules()
    manager = recipe_manager.RecipeManager()
    names = "|".join(re.escape(n) for n in prepared.body_tensors)
    manager.add_quantization_config(f"(^|;)({names});", qtyping.TFLOperationName.ALL_SUPPORTED, None,
                                    algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return [*recipe, *json.loads(json.dumps(manager.get_quantization_recipe()))]


def _tensor_maps(fb, names: list[str], indices: list[int], kind: str) -> list:
    """Signature entries named after the tensors; ``<kind>_<i>`` where a name is empty or repeats."""
    maps, seen = [], set()
    for i, index in enumerate(indices):
        name = names[index] if names[index] and names[index] not in seen else f"{kind}_{i}"
        seen.add(name)
        entry = fb.TensorMapT()
        entry.name = name
        entry.tensorIndex = index
        maps.append(entry)
    return maps


def _scope_regex(tensor_name: str) -> str:
    """ai-edge-quantizer's scope of an op is its output tensor names joined by ';' plus a trailing ';'."""
    return f"(^|;){re.escape(tensor_name)};"


def _quantizer_modules():
    try:
        from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe_manager
    except ImportError as exc:
        raise UserError(
            f"quantizing TFLite models needs ai-edge-quantizer: pip install 'qbench[tflite]' ({exc})"
        ) from exc
    return algorithm_manager, qtyping, quantizer, recipe_manager


def tflite_recipe(
    recipe: str = "static_wi8_ai8", method: str = "minmax", keep_float: Sequence[str] = (), int16: Sequence[str] = ()
) -> list[dict]:
    """The ai-edge-quantizer recipe (its JSON form) that :func:`quantize_tflite` quantizes with.

    Entries, later ones winning where they overlap (the quantizer's rule): ``recipe`` for every op
    (see :func:`_add_static` for ``method``), then int16 activations for the ops writing ``int16``,
    then no quantization for the ops writing ``keep_float``.

    Args:
        recipe: one of :data:`RECIPES`.
        method: one of :data:`METHODS`.
        keep_float: output tensor names of ops left in float.
        int16: output tensor names of ops given int16 activations (int8 weights, ``a16w8``).

    Raises:
        UserError: unknown recipe or method.
    """
    if recipe not in RECIPES:
        raise UserError(f"unknown TFLite recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    check_method(method)
    algorithm_manager, qtyping, _, recipe_manager = _quantizer_modules()
    manager = recipe_manager.RecipeManager()
    algorithm = METHODS[method][0]
    _add_static(manager, ".*", RECIPES[recipe], algorithm)
    for name in int16:
        _add_static(manager, _scope_regex(name), 16, algorithm)
    for name in keep_float:
        manager.add_quantization_config(_scope_regex(name), qtyping.TFLOperationName.ALL_SUPPORTED, None,
                                        algorithm_manager.AlgorithmName.NO_QUANTIZE)
    # the quantizer's enums are str subclasses: the JSON form is what a recipe file holds, and loads the same
    return json.loads(json.dumps(manager.get_quantization_recipe()))


def check_method(method: str) -> None:
    """Raises UserError, in one line, for a calibration method ai-edge-quantizer does not have."""
    if method in METHODS:
        return
    known = f"TFLite calibration methods: {', '.join(METHODS)}"
    if method in ("entropy", "percentile", "distribution"):
        raise UserError(f"TFLite calibration method {method!r}: {NO_HISTOGRAMS}; {known}")
    raise UserError(f"TFLite calibration method {method!r} is not one of {', '.join(METHODS)}")


def _add_static(manager, regex: str, activation_bits: int, algorithm: str) -> None:
    """Static int8-weight entries for ``regex``: ``algorithm`` on the ops it is registered for, min/max on the rest.

    OCTAV is registered for every op min/max is; MSE and GPTQ only for ops with weights (conv, fully
    connected), so the other ops of the model keep min/max rather than falling back to float.
    """
    algorithm_manager, qtyping, _, _ = _quantizer_modules()
    ops = [op for op in qtyping.TFLOperationName if op != qtyping.TFLOperationName.ALL_SUPPORTED]
    minmax = algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT
    own = [op for op in ops if algorithm_manager.is_op_registered(algorithm, op)]
    everywhere = all(op in own for op in ops if algorithm_manager.is_op_registered(minmax, op))
    manager.add_static_config(regex, qtyping.TFLOperationName.ALL_SUPPORTED, activation_bits, 8,
                              algorithm_key=algorithm if everywhere else minmax)
    if everywhere:
        return
    for op in own:
        try:
            manager.add_static_config(regex, op, activation_bits, 8, algorithm_key=algorithm)
        except ValueError:  # registered, but not for integer compute (MSE's EMBEDDING_LOOKUP)
            continue


def quantize_tflite(
    float_model: PathLike,
    output: PathLike,
    calibration: Mapping[str, np.ndarray],
    recipe: str = "static_wi8_ai8",
    keep_float: Sequence[str] = (),
    debug: bool = False,
    *,
    method: str = "minmax",
    int16: Sequence[str] = (),
) -> QuantizedTFLite:
    """Quantizes ``float_model`` into ``output`` with static (calibrated) quantization.

    ``method`` (:data:`METHODS`) sets both how activation ranges accumulate over the calibration
    samples (:mod:`.tflite_ranges`) and the ai-edge-quantizer algorithm that sets weight ranges.

    Args:
        float_model: a float .tflite, with or without a signature def (see :func:`prepare_tflite`).
        output: where the quantized .tflite is written.
        calibration: input tensor name -> array whose leading axis is the sample axis; each sample
            has the input's shape (e.g. ``(n, 1, 224, 224, 3)`` for an input ``(1, 224, 224, 3)``).
        recipe: ``static_wi8_ai8`` (int8 activations) or ``static_wi8_ai16`` (int16 activations).
        keep_float: output tensor names of ops to leave in float (mixed precision); the quantizer
            puts QUANTIZE/DEQUANTIZE around them.
        debug: let the quantizer's own output through.
        method: one of :data:`METHODS`.
        int16: output tensor names of ops given int16 activations; the quantizer puts a QUANTIZE
            (requantize) where int8 and int16 tensors meet.

    Returns:
        The written path, what :func:`prepare_tflite` changed before quantizing, and the float
        reference when the user's float model needs XNNPACK.

    Raises:
        UserError: unknown recipe or method, calibration that does not fit the inputs, unknown
            keep_float or int16 names, a float model LiteRT cannot load, the quantizer failing on
            the model, or a result LiteRT cannot load or run (then kept at ``output``).
    """
    ops = tflite_recipe(recipe, method, keep_float, int16)
    prepared = prepare_tflite(Path(float_model).read_bytes(), Path(float_model).name, calibration_shapes(calibration))
    names = _op_output_names(prepared.model)
    for option, given in (("keep_float", keep_float), ("int16", int16)):
        unknown = [n for n in given if n not in names]
        if unknown:
            raise UserError(f"{option}: no op of the model outputs {unknown}")
    return _quantize(prepared, Path(float_model).name, output, calibration, ops, METHODS[method][1], debug)


def quantize_with_recipe(
    float_model: PathLike, output: PathLike, calibration: Mapping[str, np.ndarray], recipe: list[dict],
    debug: bool = False, ranges: str = "minmax",
) -> QuantizedTFLite:
    """Quantizes ``float_model`` with an ai-edge-quantizer recipe (as :func:`tflite_recipe` makes).

    Args and errors as :func:`quantize_tflite`; ``recipe`` is the quantizer's recipe, JSON form,
    ``ranges`` one of :data:`~.tflite_ranges.RANGES`.
    """
    prepared = prepare_tflite(Path(float_model).read_bytes(), Path(float_model).name, calibration_shapes(calibration))
    return _quantize(prepared, Path(float_model).name, output, calibration, recipe, ranges, debug)


def calibration_shapes(calibration: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Input name -> one sample's shape, of arrays whose leading axis is the sample axis."""
    return {name: tuple(np.shape(arr)[1:]) for name, arr in calibration.items()}


#: how far (share of the output's peak) a rewritten float model may be from the user's
REWRITE_TOLERANCE = 1e-5


def _check_rewrite(prepared: PreparedTFLite, sample: Mapping[str, np.ndarray], name: str) -> None:
    """Checks a model whose custom ops were rewritten against the user's, on one calibration sample."""
    diff = rewrite.max_output_difference(prepared.rewritten_from, prepared.reference, sample)
    if diff > REWRITE_TOLERANCE:
        raise UserError(f"rewriting the custom ops of {name} changed its outputs by {diff:.2g} of their peak")


def _quantize(
    prepared: PreparedTFLite, name: str, output: PathLike, calibration: Mapping[str, np.ndarray],
    recipe: list[dict], ranges: str, debug: bool,
) -> QuantizedTFLite:
    qsvs = calibrate_prepared(prepared, name, calibration, recipe, ranges, debug)
    first = {k: np.asarray(v)[0] for k, v in calibration.items()}
    quantize_calibrated(prepared, name, output, recipe, qsvs, debug)
    checks.check_loads(Path(output).read_bytes(), name, Path(output), first, xnnpack=bool(prepared.xnnpack_ops))
    return QuantizedTFLite(Path(output), prepared.notes,
                           prepared.reference if prepared.needs_reference else None, prepared, qsvs)


def calibrate_prepared(prepared: PreparedTFLite, name: str, calibration: Mapping[str, np.ndarray],
                       recipe: list[dict], ranges: str, debug: bool) -> dict:
    """ai-edge-quantizer's calibration (its QSVs, by tensor name) of a prepared model, ranges as
    :mod:`.tflite_ranges` says: what :func:`quantize_calibrated` quantizes any recipe with."""
    if ranges not in tflite_ranges.RANGES:
        raise UserError(f"activation ranges {ranges!r} are not one of {', '.join(tflite_ranges.RANGES)}")
    samples = _calibration_samples(prepared.model, calibration, prepared.signature_inputs)
    if prepared.rewritten_from is not None:
        _check_rewrite(prepared, {k: np.asarray(v)[0] for k, v in calibration.items()}, name)
    recipe = with_bodies_float(recipe, prepared)
    try:
        with quiet_runtime(debug):
            return tflite_ranges.calibrate(prepared.model, recipe, prepared.signature_key, samples, ranges)
    except Exception as exc:  # noqa: BLE001 - the quantizer fails with whatever its code hits on a model
        raise UserError(f"ai-edge-quantizer failed on {name}: {checks.first_line(exc)}") from exc


def quantize_calibrated(prepared: PreparedTFLite, name: str, output: PathLike, recipe: list[dict], qsvs: dict,
                        debug: bool) -> Path:
    """Quantizes a prepared model with ``recipe`` and QSVs calibrated before (no calibration here), into
    ``output``; refuses scales LiteRT cannot load (the model stays at ``output`` to inspect)."""
    _, _, quantizer, _ = _quantizer_modules()
    recipe = with_bodies_float(recipe, prepared)
    try:
        with quiet_runtime(debug):
            result = quantizer.Quantizer(bytearray(prepared.model), recipe).quantize(qsvs, enable_progress_report=False)
    except Exception as exc:  # noqa: BLE001 - the quantizer fails with whatever its code hits on a model
        raise UserError(f"ai-edge-quantizer failed on {name}: {checks.first_line(exc)}") from exc
    quantized = bytes(result.quantized_model)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(quantized)  # before the checks: a model LiteRT refuses stays there to inspect
    checks.check_scales(quantized, name, out)
    return out


def _calibration_samples(
    model: bytes, calibration: Mapping[str, np.ndarray], signature_names: Mapping[str, str]
) -> list[dict[str, np.ndarray]]:
    """One ``{signature input name: sample}`` dict per sample, checked against the model's inputs."""
    from ai_edge_litert import interpreter as tfl

    details = tfl.Interpreter(model_content=model).get_input_details()
    expected = {d["name"]: d for d in details}
    if set(calibration) != set(expected):
        raise UserError(f"calibration inputs {sorted(calibration)} do not match the model's {sorted(expected)}")
    counts = {name: len(arr) for name, arr in calibration.items()}
    if len(set(counts.values())) != 1 or not next(iter(counts.values())):
        raise UserError(f"calibration needs the same, non-zero number of samples for every input; got {counts}")
    for name, arr in calibration.items():
        want = list(expected[name]["shape_signature"])
        got = list(np.shape(arr)[1:])
        if len(got) != len(want) or any(w >= 0 and w != g for w, g in zip(want, got)):
            raise UserError(f"calibration input {name!r}: samples of shape {got} do not fit the model's {want}")
    arrays = {name: np.asarray(arr, dtype=expected[name]["dtype"]) for name, arr in calibration.items()}
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise UserError(f"calibration input {name!r} holds NaN or inf: LiteRT cannot quantize ranges that are not finite")
    count = next(iter(counts.values()))
    return [{signature_names[name]: arrays[name][i] for name in arrays} for i in range(count)]


def _op_output_names(model: bytes) -> set[str]:
    from ai_edge_litert import schema_py_generated as fb

    sg = fb.Model.GetRootAs(model, 0).Subgraphs(0)
    names = set()
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        names.update(rewrite.text(sg.Tensors(t).Name()) for t in op.OutputsAsNumpy() if t >= 0)
    return names
