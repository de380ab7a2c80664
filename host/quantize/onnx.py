"""Static int8 quantization of a prepared float ONNX model with ONNX Runtime's quantizer (QDQ format).

Weights are int8 (per channel by default), activations int8 or uint8 with ranges calibrated on the
given samples. ONNX Runtime's QDQ quantizer does not quantize inside If/Loop/Scan bodies: those
subgraphs stay float in the int8 model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import numpy as np

from qbench.host.errors import UserError
from qbench.host.models import body_nodes, default_opset, onnx_inputs
from qbench.host.quantize.activation_pairs import unsigned_activations, unsigned_constants
from qbench.host.quantize.compat import check_loads, clamp_ir_version, first_line
from qbench.host.quantize.float_ops import keep_float
from qbench.host.quantize.hard_sigmoid import gates_as_add
from qbench.host.quantize.quiet import quiet_runtime

METHODS = ("minmax", "entropy", "percentile", "distribution")
ACTIVATION_TYPES = ("int8", "uint8")

#: Memory for one calibration pass. ONNX Runtime's calibrators keep every intermediate tensor of
#: all the samples of a pass, so large models are calibrated in several passes. One pass is preferred:
#: the histogram methods (entropy above all) grow their histograms from the first pass's range, so
#: their thresholds shift with the pass size.
CALIBRATION_MEMORY_BYTES = 1 << 30


class SampleReader:
    """Feeds calibration samples to ONNX Runtime one at a time.

    The arrays have a leading sample axis, ``(N, *input_shape)``, so sample ``i`` is
    ``array[i]``, whose shape is exactly the model input's (its batch dim included).
    Supports ``set_range`` so that quantize_static can calibrate in strides.
    """

    def __init__(self, samples: Mapping[str, np.ndarray]) -> None:
        self._samples = dict(samples)
        self._count = len(next(iter(self._samples.values())))
        self._next, self._end = 0, self._count

    def __len__(self) -> int:
        return self._count

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restricts the next pass to samples ``start_index`` up to ``end_index``."""
        self._next, self._end = start_index, min(end_index, self._count)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        """The next sample as a feed dict, or None at the end of the range."""
        if self._next >= self._end:
            return None
        index = self._next
        self._next += 1
        return {name: np.ascontiguousarray(array[index]) for name, array in self._samples.items()}


def quantize_onnx(
    float_path: Union[str, Path],
    out_path: Union[str, Path],
    calibration: Mapping[str, np.ndarray],
    method: str = "minmax",
    activation_type: str = "int8",
    per_channel: bool = True,
    nodes_to_exclude: Iterable[str] = (),
    tensor_overrides: Optional[dict] = None,
    *,
    reduce_range: bool = False,
    debug: bool = False,
) -> Path:
    """Quantizes a (prepared) float ONNX model to int8 QDQ with calibrated activation ranges.

    Args:
        float_path: the float model, normally ``Prepared.path`` from ``prepare_float``.
        out_path: where the int8 model is written.
        calibration: one array per model input, keyed by input name, shaped ``(N, *input_shape)``.
        method: "minmax", "entropy", "percentile" (99.999th) or "distribution".
        activation_type: "int8" or "uint8". Both calibrate the same asymmetric 8-bit ranges; int8
            activations are then stored as uint8 (zero point + 128, the same values), the type ONNX
            Runtime's x86 kernels need (see :mod:`~qbench.host.quantize.activation_pairs`).
        per_channel: per-output-channel weight scales (needs opset >= 13).
        nodes_to_exclude: node names left in float (and kept float when ONNX Runtime loads the
            model: see :mod:`~qbench.host.quantize.float_ops`).
        tensor_overrides: ONNX Runtime's ``TensorQuantOverrides``: tensor name -> list of dicts
            (one per channel) with e.g. ``scale``/``zero_point`` as numpy arrays
            (``np.array(0.05, np.float32)``, ``np.array(-128, np.int8)``), ``symmetric``, ``rmin``/``rmax``.
        reduce_range: 7-bit weights (-64..63): ONNX Runtime's x86 u8s8 kernels without VNNI sum pairs of
            products in int16 (VPMADDUBSW), which saturates with full-range weights and not with these.
        debug: let the runtimes' own logs through to the terminal.

    Returns:
        ``out_path``.

    Raises:
        UserError: a bad method or type, calibration data that does not fit the model, or a model
            the quantizer cannot handle.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    float_path, out_path = Path(float_path), Path(out_path)
    name = float_path.name
    if method not in METHODS:
        raise UserError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    if activation_type not in ACTIVATION_TYPES:
        raise UserError(f"activation type {activation_type!r} is not one of {', '.join(ACTIVATION_TYPES)}")
    try:
        model = onnx.load(str(float_path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types for bad files
        raise UserError(f"{float_path}: cannot load ONNX model: {first_line(exc)}") from exc
    opset = default_opset(model) or 0
    if per_channel and opset < 13:
        raise UserError(f"{name}: per-channel int8 needs opset >= 13, the model has {opset}; prepare it first")
    samples = _check_calibration(model, calibration, name)

    count = len(next(iter(samples.values())))
    excluded = list(nodes_to_exclude)
    extra_options = {
        # quantize_static calls collect_data once per stride, which bounds the calibrators' memory;
        # despite the name every calibrator (min/max and histograms) merges its state across calls.
        "CalibStridedMinMax": _stride(count, _activation_bytes(model)),
        # The quantizer drops Relu/Clip before a QuantizeLinear assuming the calibrated range starts
        # at the activation's floor; histogram methods can give symmetric ranges (distribution
        # always does), and then dropping them lets negative values through.
        "QDQKeepRemovableActivations": method != "minmax",
    }
    if tensor_overrides:
        extra_options["TensorQuantOverrides"] = dict(tensor_overrides)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "distribution": CalibrationMethod.Distribution,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_runtime(debug):
            quantize_static(
                str(float_path),
                str(out_path),
                SampleReader(samples),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                extra_options=extra_options,
            )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizer and the runtime raise many types
        if "not been collected" in str(exc):  # histogram calibrators found no tensor to calibrate
            raise UserError(f"{name}: nothing to quantize{_subgraph_hint(model)}") from exc
        raise UserError(f"{name}: int8 quantization ({method}) failed: {first_line(exc)}") from exc

    quantized = onnx.load(str(out_path))
    if not any(node.op_type == "QuantizeLinear" for node in quantized.graph.node):
        raise UserError(f"{name}: nothing was quantized{_subgraph_hint(model)}")
    # int8 activations are stored as uint8 (same values) so that ONNX Runtime's x86 kernels fuse
    # every convolution, not only those whose tensors have one reader (see activation_pairs).
    rewritten = activation_type == "int8" and unsigned_activations(quantized)
    rewritten = unsigned_constants(quantized) + rewritten  # their Add/Mul constants too
    # HardSigmoid as a QLinearAdd (see hard_sigmoid); excluded convolutions kept float at load (float_ops)
    rewritten = gates_as_add(quantized) + len(keep_float(quantized, excluded)) + rewritten
    if clamp_ir_version(quantized, out_path.name) or rewritten:
        onnx.save(quantized, str(out_path))
    with quiet_runtime(debug):
        check_loads(out_path, f"int8 model {out_path.name}")
    return out_path


def _subgraph_hint(model) -> str:
    """Why a model may have nothing to quantize: its work sits in If/Loop/Scan bodies."""
    inner = sum(1 for _ in body_nodes(model.graph))
    if not inner:
        return ""
    return (
        f": {inner} of its {inner + len(model.graph.node)} nodes sit inside If/Loop/Scan bodies, "
        "which ONNX Runtime's quantizer leaves in float"
    )


def _stride(count: int, bytes_per_sample: int) -> int:
    """Samples per calibration pass: all of them if they fit in :data:`CALIBRATION_MEMORY_BYTES`,
    else the largest divisor of ``count`` that fits (quantize_static wants an exact divisor)."""
    fit = max(1, CALIBRATION_MEMORY_BYTES // max(1, bytes_per_sample))
    return max(d for d in range(1, min(fit, count) + 1) if count % d == 0)


def _activation_bytes(model) -> int:
    """An upper bound on the bytes of intermediate tensors one sample produces (static shapes only)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - then only the shapes already in the model count
        inferred = model
    total = 0
    for value_info in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value_info.type.tensor_type
        dims = [d.dim_value for d in tensor_type.shape.dim]
        if not all(d > 0 for d in dims):
            continue
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 8  # undefined or exotic element types: count them at the widest
        total += int(np.prod(dims, dtype=np.int64)) * itemsize
    return total


def _check_calibration(model, calibration: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """Checks calibration arrays against the model's inputs; casts where no value changes."""
    inputs = {spec.name: spec for spec in onnx_inputs(model)}
    if not calibration:
        raise UserError("no calibration samples given")
    missing = [n for n in inputs if n not in calibration]
    extra = [n for n in calibration if n not in inputs]
    if missing or extra:
        raise UserError(
            f"calibration data does not fit {name}: "
            + "; ".join(
                part
                for part in (
                    f"missing input(s) {', '.join(missing)}" if missing else "",
                    f"unknown key(s) {', '.join(extra)}" if extra else "",
                )
                if part
            )
            + f" (inputs: {', '.join(f'{s.name} {s.shape_text()}' for s in inputs.values())})"
        )
    counts = {n: np.asarray(a).shape[0] if np.ndim(a) else 0 for n, a in calibration.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        listing = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise UserError(f"calibration data: every input needs the same number (>= 1) of samples, got {listing}")
    samples = {}
    for input_name, spec in inputs.items():
        array = np.asarray(calibration[input_name])
        expected = spec.shape or ()
        fits = len(array.shape) == len(expected) + 1 and all(
            not isinstance(d, int) or d == a for d, a in zip(expected, array.shape[1:])
        )
        if not fits:
            raise UserError(
                f"calibration data {input_name!r}: expected shape (N, {', '.join(map(str, expected))}) "
                f"for input {spec.shape_text()}, got {tuple(array.shape)}"
            )
        if array.dtype.name != spec.dtype:
            if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
                raise UserError(f"calibration data {input_name!r}: dtype {array.dtype.name}, the input is {spec.dtype}")
            array = array.astype(spec.dtype)
        samples[input_name] = array
    return samples
