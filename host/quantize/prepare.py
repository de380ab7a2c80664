"""Turns a real-world float ONNX model into one that quantizes and reports cleanly.

Real models arrive with dynamic dimensions, old opsets, unnamed nodes and IR versions the installed
onnxruntime may not load. :func:`prepare_float` fixes each of these and says what it did in
``Prepared.notes``; the prepared file is the float model that is benchmarked and quantized.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Union

from qbench.host.data import batch_stacked
from qbench.host.errors import UserError
from qbench.host.models import InputSpec, default_opset, inspect_model, onnx_inputs
from qbench.host.quantize.compat import (
    check_loads, clamp_ir_version, first_line, flatten_gemm_biases, load_error, name_nodes, unshare_biases,
)
from qbench.host.quantize.fold import conv_transpose_as_conv, fuse_hardswish
from qbench.host.quantize.quiet import quiet_runtime

#: Per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute) arrived in opset 13.
MIN_OPSET = 13
PREPARED_NAME = "float.prepared.onnx"


@dataclass
class Prepared:
    """The prepared float model.

    Attributes:
        path: the prepared file (``out_dir/float.prepared.onnx``).
        notes: what was changed, one sentence each, for the user.
        input_shapes: every input's resolved static shape, by input name.
        inputs: the prepared model's inputs (static shapes).
        outputs: the prepared model's outputs.
        opset: its default-domain opset after any upgrade.
    """

    path: Path
    notes: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[InputSpec] = field(default_factory=list)
    opset: int = MIN_OPSET


def parse_input_shapes(specs: Iterable[str]) -> dict[str, list[int]]:
    """Parses ``--input-shape`` values such as ``x:1,3,224,224``.

    The name is everything before the last colon, so TensorFlow-style names like ``input:0`` work
    (``input:0:1,3,8,8``). An empty dimension list (``sr:``) means a scalar.

    Args:
        specs: the option's values, one per input.

    Returns:
        Dimensions by input name.

    Raises:
        UserError: a value is malformed, a dimension is not a positive integer, or a name repeats.
    """
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, colon, dims_text = spec.rpartition(":")
        if not colon or not name:
            raise UserError(f"--input-shape {spec!r}: expected NAME:D0,D1,... (e.g. x:1,3,224,224)")
        dims: list[int] = []
        for part in dims_text.split(",") if dims_text.strip() else []:
            try:
                dim = int(part.strip())
            except ValueError:
                raise UserError(f"--input-shape {spec!r}: {part.strip()!r} is not an integer") from None
            if dim <= 0:
                raise UserError(f"--input-shape {spec!r}: dimensions must be positive, got {dim}")
            dims.append(dim)
        if name in shapes:
            raise UserError(f"--input-shape: input {name!r} given twice")
        shapes[name] = dims
    return shapes


def resolve_input_shapes(
    inputs: list[InputSpec], given: Mapping[str, list[int]], model_name: str,
    data_shapes: Mapping[str, tuple[int, ...]] = {},
) -> tuple[dict[str, list[int]], list[str]]:
    """Gives every input a static shape: the user's where given, else the data's, else dynamic dims set to 1.

    Args:
        inputs: the model's inputs.
        given: ``--input-shape`` values by input name.
        model_name: for messages.
        data_shapes: one sample's shape per array of ``--data`` / ``--calibration``
            (:func:`qbench.host.data.sample_shapes`); used for an input whose shape fits it, or whose
            batch dim of 1 or dynamic the samples were stacked along (:func:`qbench.host.data.batch_stacked`).

    Returns:
        The static shape of every input, and notes on the dims taken from the data or defaulted to 1.

    Raises:
        UserError: an unknown input name, a rank that does not match, a fixed dim contradicted, or an
            input of unknown rank with no shape given.
    """
    by_name = {spec.name: spec for spec in inputs}
    listing = ", ".join(f"{s.name} (rank {_rank(s)}: {s.shape_text()})" for s in inputs)
    for name in given:
        if name not in by_name:
            raise UserError(f"--input-shape: {model_name} has no input {name!r}; its inputs: {listing}")
    resolved: dict[str, list[int]] = {}
    notes: list[str] = []
    for spec in inputs:
        if spec.shape is None and spec.dtype == "object":
            raise UserError(f"{model_name}: input {spec.name!r} is not a tensor; qbench feeds tensors only")
        if spec.name in given:
            resolved[spec.name] = _check_given(spec, given[spec.name], model_name)
            continue
        if spec.shape is None:
            raise UserError(
                f"{model_name}: input {spec.name!r} has no shape in the model; give one with "
                f"--input-shape {spec.name}:D0,D1,..."
            )
        from_data = data_shapes.get(spec.name)
        if from_data is not None and batch_stacked((0, *from_data), spec.shape):
            from_data = (1, *from_data)
        if not spec.is_static and from_data is not None and _fits(from_data, spec.shape):
            resolved[spec.name] = list(from_data)
            notes.append(f"input {spec.name!r} {spec.shape_text()}: dynamic dims taken from the data's samples -> "
                         f"[{','.join(map(str, from_data))}]")
            continue
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        if not spec.is_static:
            notes.append(
                f"input {spec.name!r} {spec.shape_text()}: dynamic dims set to 1 -> "
                f"[{','.join(map(str, shape))}]; choose them with --input-shape {spec.name}:D0,D1,..."
            )
        resolved[spec.name] = shape
    return resolved, notes


def _fits(shape: tuple[int, ...], dims: tuple) -> bool:
    return len(shape) == len(dims) and all(not isinstance(d, int) or d == a for d, a in zip(dims, shape))


def _rank(spec: InputSpec) -> str:
    return "?" if spec.shape is None else str(len(spec.shape))


def _check_given(spec: InputSpec, dims: list[int], model_name: str) -> list[int]:
    if spec.shape is None:
        return list(dims)
    if len(dims) != len(spec.shape):
        raise UserError(
            f"--input-shape {spec.name}: {model_name} input {spec.name!r} has rank {len(spec.shape)} "
            f"{spec.shape_text()}, got {len(dims)} dims [{','.join(map(str, dims))}]"
        )
    for axis, (fixed, dim) in enumerate(zip(spec.shape, dims)):
        if isinstance(fixed, int) and fixed != dim:
            raise UserError(
                f"--input-shape {spec.name}: dim {axis} of {spec.name!r} is fixed at {fixed} in "
                f"{model_name} {spec.shape_text()}, got {dim}"
            )
    return list(dims)


def prepare_float(
    path: Union[str, Path],
    input_shapes: Mapping[str, list[int]],
    out_dir: Union[str, Path],
    *,
    data_shapes: Mapping[str, tuple[int, ...]] = {},
    debug: bool = False,
) -> Prepared:
    """Prepares a float ONNX model for quantization and layer-by-layer comparison.

    In order: fixes every input's shape (see :func:`resolve_input_shapes`), names unnamed nodes
    ``{op_type}_{index}``, upgrades opsets below 13 (per-channel Q/DQ needs 13), runs onnxruntime's
    ``quant_pre_process`` (symbolic shape inference, basic graph optimizations, ONNX shape
    inference) falling back to less of it where it fails, rewrites upsampling ConvTransposes as
    1x1 Conv + DepthToSpace and Paddle's HardSwish as ``x * HardSigmoid(x)`` (see
    :mod:`~qbench.host.quantize.fold`), and lowers the IR version to one the installed onnxruntime loads.

    Args:
        path: the float ONNX model.
        input_shapes: ``--input-shape`` values (see :func:`parse_input_shapes`).
        data_shapes: one sample's shape per data array, for dims neither the model nor ``input_shapes`` fix.
        out_dir: where ``float.prepared.onnx`` is written (created if missing).
        debug: let the runtimes' own logs through to the terminal.

    Returns:
        The prepared model and notes on what changed.

    Raises:
        UserError: the file is not a usable ONNX model, the shapes do not fit, or the result cannot
            be loaded by onnxruntime.
    """
    import onnx

    path = Path(path)
    info = inspect_model(path)
    if info.format != "onnx":
        raise UserError(f"{path}: is a {info.format} model; this step prepares ONNX models")
    name = path.name
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types for bad files
        raise UserError(f"{path}: cannot load ONNX model: {first_line(exc)}") from exc

    resolved, notes = resolve_input_shapes(info.inputs, input_shapes, name, data_shapes)
    renamed = name_nodes(model.graph)
    if renamed:
        notes.append(f"named {renamed} unnamed or duplicate node(s) as OpType_index")
    model, opset_note = _upgrade_opset(model, name, debug)
    if opset_note:
        notes.append(opset_note)
    ir_note = clamp_ir_version(model, name)
    model, static_note = _fix_input_shapes(model, resolved, all(s.is_static for s in info.inputs), name, debug)
    if static_note:
        notes.append(static_note)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / PREPARED_NAME
    with tempfile.TemporaryDirectory(prefix="qbench-prepare-") as tmp:
        model, pre_notes = _pre_process(model, Path(tmp).resolve(), debug)
    notes.extend(pre_notes)
    rewritten = conv_transpose_as_conv(model)
    if rewritten:
        notes.append(f"rewrote {rewritten} ConvTranspose (kernel = stride) as a 1x1 Conv + DepthToSpace, the same "
                     "sums: ONNX Runtime's CPU provider has no int8 ConvTranspose kernel")
    rewritten = fuse_hardswish(model)
    if rewritten:
        notes.append(f"rewrote {rewritten} x*Clip(x+3,0,6)/6 as x*HardSigmoid(x), as ONNX Runtime runs HardSwish: "
                     "2 ops instead of 4, each of which the int8 model would wrap in QuantizeLinear/DequantizeLinear")
    renamed = name_nodes(model.graph)
    if renamed:
        notes.append(f"named {renamed} node(s) that onnxruntime's pre-processing left unnamed")
    flattened = flatten_gemm_biases(model.graph)
    if flattened:
        notes.append(f"wrote {flattened} Gemm bias(es) of shape [1, N] as [N], the same broadcast: onnxruntime's "
                     "quantizer reads a per-channel bias channel by channel")
    copies = unshare_biases(model.graph)
    if copies:
        notes.append(f"gave {copies} convolution(s) sharing a bias initializer a copy of their own: the int8 bias "
                     "scale is per node")
    ir_note = clamp_ir_version(model, name) or ir_note
    if ir_note:
        notes.append(ir_note)
    try:
        onnx.save(model, str(out_path))
    except (ValueError, OSError) as exc:
        raise UserError(f"{out_path}: cannot write the prepared model: {first_line(exc)}") from exc
    with quiet_runtime(debug):
        check_loads(out_path, f"{name} after preparation")

    return Prepared(
        path=out_path,
        notes=notes,
        input_shapes=resolved,
        inputs=[InputSpec(spec.name, spec.dtype, tuple(resolved[spec.name])) for spec in onnx_inputs(model)],
        outputs=inspect_model(out_path).outputs,
        opset=default_opset(model) or MIN_OPSET,
    )


def _fix_input_shapes(model, shapes: Mapping[str, list[int]], already_static: bool, name: str, debug: bool):
    """Returns the model with static input shapes, or unchanged (and a note) when it then fails to load.

    Fixing the input dims makes onnxruntime propagate shapes into every If/Loop branch, and some
    exported models carry a branch that is only valid for other input sizes (silero-vad's 8 kHz
    branch for a 16 kHz window). Such a model keeps its dynamic inputs; samples still get the
    resolved shapes.
    """
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    _set_input_shapes(fixed, shapes)
    if already_static:
        return fixed, None
    with quiet_runtime(debug):
        error = load_error(fixed)
        if error is None:
            return fixed, None
        original_error = load_error(model)
    if original_error is not None:
        raise UserError(f"{name}: onnxruntime cannot load it: {original_error}")
    return model, (
        f"{name} does not load with static input shapes ({error}); its inputs stay dynamic in the "
        "prepared model; samples still get the resolved shapes"
    )


def _set_input_shapes(model, shapes: Mapping[str, list[int]]) -> None:
    """Writes static dims into the graph inputs and drops stale intermediate shapes.

    Old ``value_info`` entries carry the dynamic symbols, and shape inference refuses to merge them
    with the now-static shapes in some models, so they are inferred afresh.
    """
    for value_info in model.graph.input:
        if value_info.name not in shapes:
            continue
        shape = value_info.type.tensor_type.shape
        dims = shapes[value_info.name]
        while len(shape.dim) > len(dims):
            shape.dim.pop()
        while len(shape.dim) < len(dims):
            shape.dim.add()
        for dim, value in zip(shape.dim, dims):
            dim.Clear()
            dim.dim_value = value
        if not dims:
            value_info.type.tensor_type.shape.SetInParent()
    del model.graph.value_info[:]


def _upgrade_opset(model, name: str, debug: bool):
    import onnx
    from onnx import version_converter

    opset = default_opset(model)
    if opset is None or opset >= MIN_OPSET:
        return model, None
    try:
        with quiet_runtime(debug):
            converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors and C++ errors
        raise UserError(
            f"{name}: cannot upgrade opset {opset} to {MIN_OPSET} (needed for per-channel int8): "
            f"{first_line(exc)}"
        ) from exc
    # The converter keeps the old IR version, which can be too old for the new opset (13 needs 7).
    needed = onnx.helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    converted.ir_version = max(converted.ir_version, needed)
    return converted, f"opset {opset} upgraded to {MIN_OPSET} (per-channel int8 needs it)"


def _pre_process(model, tmp: Path, debug: bool):
    """Runs onnxruntime's quant_pre_process, with less of it each time a stage fails.

    Returns:
        The processed model (the input model when every attempt failed) and notes.
    """
    import onnx

    src, dst = tmp / "in.onnx", tmp / "out.onnx"
    onnx.save(model, str(src))
    attempts = [
        ({}, "symbolic shape inference"),
        ({"skip_symbolic_shape": True}, "graph optimization"),
        ({"skip_symbolic_shape": True, "skip_optimization": True}, None),
    ]
    notes: list[str] = []
    for options, next_drop in attempts:
        failure = _run_pre_process(src, dst, options, debug)
        if failure is None:
            if not options:
                notes.append("ran onnxruntime's quantization pre-processing")
            return onnx.load(str(dst)), notes
        notes.append(
            f"onnxruntime pre-processing failed ({failure})"
            + (f"; retried without {next_drop}" if next_drop else "")
        )
        dst.unlink(missing_ok=True)
    notes.append("went on without onnxruntime's pre-processing")
    return model, notes


_SAVE_LOCK = threading.Lock()


class _SavesInto:
    """The ``onnx`` module as symbolic shape inference sees it, but saving relative paths under ``folder``.

    When ONNX Runtime's symbolic shape inference cannot infer every shape, it saves
    ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` copy of the weights into the current
    directory, and nothing in its API moves them. Changing the directory would move the host's
    other threads too (an agent started meanwhile would run in a removed folder), so the module's
    own ``onnx`` name is replaced for the call.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def __getattr__(self, name: str):
        import onnx

        return getattr(onnx, name)

    def save_model(self, model, f, *args, **kwargs):
        import onnx

        if isinstance(f, (str, os.PathLike)) and not os.path.isabs(f):
            f = os.path.join(self._folder, f)
        return onnx.save_model(model, f, *args, **kwargs)


@contextlib.contextmanager
def _shape_inference_saves_into(folder: Path):
    """Within the block, symbolic shape inference's relative saves land in ``folder`` (see :class:`_SavesInto`)."""
    from onnxruntime.tools import symbolic_shape_infer

    with _SAVE_LOCK:
        original = symbolic_shape_infer.onnx
        symbolic_shape_infer.onnx = _SavesInto(folder)
        try:
            yield
        finally:
            symbolic_shape_infer.onnx = original


class ErrorWatcher(logging.Handler):
    """Keeps one line per ERROR record it sees: a traceback's last line, else the first line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        lines = [line for line in record.getMessage().splitlines() if line.strip()]
        if lines:
            self.messages.append((lines[-1] if lines[0].startswith("Traceback") else lines[0]).strip())


def _run_pre_process(src: Path, dst: Path, options: dict, debug: bool):
    """One quant_pre_process attempt; returns why it failed, or None when it worked."""
    from onnxruntime.quantization import shape_inference

    # quant_pre_process logs an optimizer failure and carries on with the unoptimized model, so its
    # logger is watched (in debug mode too, where quiet_runtime captures nothing).
    watcher = ErrorWatcher()
    shape_inference.logger.addHandler(watcher)
    try:
        with quiet_runtime(debug), _shape_inference_saves_into(src.parent):
            shape_inference.quant_pre_process(str(src), str(dst), auto_merge=True, **options)
    except ImportError as exc:
        return f"symbolic shape inference unavailable: {first_line(exc)}"
    except Exception as exc:  # noqa: BLE001 - shape inference raises anything from asserts to KeyError
        return first_line(exc)
    finally:
        shape_inference.logger.removeHandler(watcher)
    if watcher.messages:
        return f"graph optimization: {watcher.messages[-1]}"
    if not dst.is_file():
        return "it wrote no model"
    return None
