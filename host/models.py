"""What a model file is: its format (read from the content), digest, inputs and outputs.

The format is decided by the bytes, not the file name: a TFLite flatbuffer carries the file identifier
``TFL3`` at bytes 4:8; anything else must parse as an ONNX ``ModelProto`` with a graph and an opset.
Every way a file can fail to be a model (missing, empty, truncated, something else) is a
:class:`~qbench.host.errors.UserError` with one line that names the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from qbench.host.errors import UserError

Dim = Union[int, str, None]
"""A dimension: an int when fixed, the symbol's name (str) or None when dynamic."""

_TFLITE_ID = b"TFL3"


@dataclass(frozen=True)
class InputSpec:
    """A model input (also used for outputs).

    Attributes:
        name: the tensor's name in the graph.
        dtype: numpy dtype name ("float32", "int64", "bool", ...); "object" for strings and
            non-tensor types (sequences, maps).
        shape: one entry per dimension: an int when fixed, a str (the symbol) or None when dynamic;
            None instead of a tuple when even the rank is unknown (an ONNX input without a shape).
    """

    name: str
    dtype: str
    shape: Optional[tuple[Dim, ...]]

    @property
    def is_static(self) -> bool:
        """True when the rank is known and every dimension is a fixed int."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def shape_text(self) -> str:
        """The shape for messages, dynamic dims shown by their symbol or '?': ``[N,3,?,?]``."""
        if self.shape is None:
            return "[unknown rank]"
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class ModelInfo:
    """A model file as the host sees it before running it.

    Attributes:
        path: the file.
        format: "onnx" or "tflite".
        sha256: hex digest of the file's bytes (the agent's cache key).
        size_bytes: file size.
        inputs: graph inputs (initializers listed as inputs by old ONNX exporters are left out).
        outputs: graph outputs.
        opset: the default-domain ONNX opset; None for TFLite.
        ir_version: the ONNX IR version; None for TFLite.
        quantized: how the model is already quantized, for messages (``"QDQ: 58 QuantizeLinear, ..."``);
            None for a float model (see :func:`onnx_quantization`, :func:`tflite_quantization`).
    """

    path: Path
    format: str
    sha256: str
    size_bytes: int
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[InputSpec] = field(default_factory=list)
    opset: Optional[int] = None
    ir_version: Optional[int] = None
    quantized: Optional[str] = None


def inspect_model(path: Union[str, Path]) -> ModelInfo:
    """Reads a model file and describes it.

    Args:
        path: an .onnx or .tflite file (the extension is not trusted).

    Returns:
        The model's format, digest, size, inputs, outputs and (ONNX) opset.

    Raises:
        UserError: the file is missing, unreadable, empty, truncated or not a model.
    """
    path = Path(path)
    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    if data[4:8] == _TFLITE_ID:
        inputs, outputs, quantized = _tflite_io(path, data)
        return ModelInfo(path, "tflite", digest, len(data), inputs, outputs, quantized=quantized)
    model = parse_onnx(path, data)
    return ModelInfo(
        path,
        "onnx",
        digest,
        len(data),
        onnx_inputs(model),
        [_value_info_spec(v) for v in model.graph.output],
        default_opset(model),
        model.ir_version,
        onnx_quantization(model),
    )


def require_float(info: ModelInfo) -> None:
    """Refuses an already-quantized model where the float model belongs, saying what to pass instead.

    Raises:
        UserError: ``info.quantized`` is set.
    """
    if info.quantized:
        raise UserError(
            f"{info.path}: is already quantized ({info.quantized}); qbench compares a float model with its "
            f"int8 version: pass the float model it was made from, and this file as --int8 {info.path}"
        )


def bodies(node) -> list:
    """The subgraphs of an ONNX node (If branches, Loop and Scan bodies); [] for other nodes."""
    from onnx import AttributeProto

    found = []
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            found.append(attribute.g)
        elif attribute.type == AttributeProto.GRAPHS:
            found.extend(attribute.graphs)
    return found


def body_nodes(graph):
    """Every node inside the subgraphs of ``graph``'s nodes, nested subgraphs included."""
    for node in graph.node:
        for body in bodies(node):
            yield from body.node
            yield from body_nodes(body)


#: ONNX ops that only a quantized model holds, by the form of quantization they belong to
_QUANTIZED_OPS = {
    "QDQ": ("QuantizeLinear", "DequantizeLinear"),
    "QOperator": ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                  "QLinearLeakyRelu", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool",
                  "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QGemm", "QAttention"),
    "dynamic (integer ops)": ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                              "DynamicQuantizeLSTM", "MatMulIntegerToFloat"),
}


def onnx_quantization(model) -> Optional[str]:
    """How an ONNX model is already quantized, e.g. ``"dynamic (integer ops): 12 ConvInteger, 12
    DynamicQuantizeLinear"``; None when its main graph holds none of :data:`_QUANTIZED_OPS`."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    found = []
    for form, ops in _QUANTIZED_OPS.items():
        present = [f"{counts[op]} {op}" for op in ops if op in counts]
        if present:
            found.append(f"{form}: {', '.join(present)}")
    return "; ".join(found) or None


def tflite_quantization(tensors: list[dict]) -> Optional[str]:
    """How a TFLite model is already quantized (``"42 int8 tensors with quantization scales"``), from
    ``Interpreter.get_tensor_details()``; None when no integer tensor carries a scale."""
    counts: dict[str, int] = {}
    for t in tensors:
        scales = (t.get("quantization_parameters") or {}).get("scales")
        dtype = np.dtype(t["dtype"]).name
        if dtype in ("int8", "uint8", "int16") and scales is not None and len(scales):
            counts[dtype] = counts.get(dtype, 0) + 1
    if not counts:
        return None
    return ", ".join(f"{n} {dtype} tensors" for dtype, n in counts.items()) + " with quantization scales"


def model_format(path: Union[str, Path]) -> str:
    """"onnx" or "tflite", from the file's first bytes only (:func:`inspect_model` checks the rest).

    Raises:
        UserError: the file is missing, unreadable or empty.
    """
    return "tflite" if _read(Path(path), 8)[4:8] == _TFLITE_ID else "onnx"


def _read(path: Path, size: int = -1) -> bytes:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a model file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(size)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not data:
        raise UserError(f"{path}: empty file, not an ONNX or TFLite model")
    return data


def parse_onnx(path: Path, data: bytes):
    """Parses ONNX bytes and checks that what parsed is a whole model.

    Protobuf parsing is lenient: text or a file cut at a field boundary can parse into a message with
    unknown fields or missing parts, so a model must also have an IR version, a graph with nodes and
    an opset import.

    Args:
        path: the file, for messages.
        data: its bytes.

    Returns:
        The ``onnx.ModelProto``.

    Raises:
        UserError: not an ONNX model, or a truncated one.
    """
    import onnx  # onnx is heavy; importing it lazily keeps `qbench --help` fast
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"{path}: not an ONNX or TFLite model (protobuf parse failed; truncated or another format)"
        ) from exc
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise UserError(f"{path}: not an ONNX or TFLite model (no IR version or graph)")
    if not model.graph.node:
        raise UserError(f"{path}: ONNX model with an empty graph (truncated?)")
    if not model.opset_import:
        raise UserError(f"{path}: ONNX model without an opset import (truncated?)")
    _check_external_data(path, model)
    return model


def _check_external_data(path: Path, model) -> None:
    from onnx.external_data_helper import uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            if not (path.parent / location).is_file():
                raise UserError(f"{path}: external weights file {location!r} is missing next to the model")


def default_opset(model) -> Optional[int]:
    """The default-domain ("" or "ai.onnx") opset version of an ONNX model, if it imports one."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return None


def onnx_inputs(model) -> list[InputSpec]:
    """The real inputs of an ONNX graph: graph inputs that are not initializers."""
    initializers = {t.name for t in model.graph.initializer}
    return [_value_info_spec(v) for v in model.graph.input if v.name not in initializers]


def _value_info_spec(value_info) -> InputSpec:
    import onnx

    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        return InputSpec(value_info.name, "object", None)
    tensor_type = value_info.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    except (KeyError, TypeError, ValueError):
        dtype = "object"
    if not tensor_type.HasField("shape"):
        return InputSpec(value_info.name, dtype, None)
    return InputSpec(value_info.name, dtype, tuple(_dim(d) for d in tensor_type.shape.dim))


def _dim(dim) -> Dim:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return dim.dim_param
    return None


def _tflite_io(path: Path, data: bytes) -> tuple[list[InputSpec], list[InputSpec], Optional[str]]:
    root_offset = int.from_bytes(data[0:4], "little")
    if len(data) < 8 or root_offset >= len(data):
        raise UserError(f"{path}: truncated TFLite model")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise UserError(
            f"{path}: reading TFLite models needs the LiteRT runtime: pip install 'qbench[tflite]'"
        ) from exc
    try:
        # The interpreter runs the flatbuffer verifier, so a truncated file is an error, not a crash.
        interpreter = Interpreter(model_content=data)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a valid TFLite model (truncated?): {_first_line(exc)}") from exc
    return (
        [_tflite_spec(d) for d in interpreter.get_input_details()],
        [_tflite_spec(d) for d in interpreter.get_output_details()],
        tflite_quantization(interpreter.get_tensor_details()),
    )


def _tflite_spec(detail: dict) -> InputSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return InputSpec(detail["name"], np.dtype(detail["dtype"]).name, shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
