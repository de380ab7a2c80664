"""Rewrites of a float .tflite's object tree (ai-edge-litert's schema) that ai-edge-quantizer needs.

Each one keeps the model's function and its tensor names (float and int8 layers match by name):

* :func:`fold_fp16_weights`: float16 weights behind DEQUANTIZE become float32 constants (the
  quantizer takes DEQUANTIZE outputs for activations).
* :func:`densify_weights`: sparse weights behind DENSIFY become dense constants. The quantizer
  takes a DENSIFY output for an activation too, and gives it an asymmetric int8 range: a CONV_2D
  with a weight zero point of -128, which LiteRT's conv kernel refuses (``zero_point != 0``).
* :func:`rewrite_custom_ops`: MediaPipe's ``Convolution2DTransposeBias`` becomes the builtin
  TRANSPOSE_CONV with its bias input. Only XNNPACK runs the custom op (plain LiteRT has no kernel
  for it), and the quantizer leaves it in float, unresolved in the int8 model.

:func:`custom_ops` names the custom ops left, :func:`max_output_difference` checks a rewritten
model against the original.
"""

from __future__ import annotations

import struct
from typing import Mapping

import numpy as np

#: MediaPipe custom ops that a builtin op replaces -> the builtin that replaces them
REPLACEABLE = {"Convolution2DTransposeBias": "TRANSPOSE_CONV"}
#: TfLitePadding (the custom op's options hold the C struct TfLiteTransposeConvParams) -> schema Padding
_PADDING = {1: "SAME", 2: "VALID"}


def _builtin(code) -> int:
    # the old schema sets only deprecated_builtin_code; codes above 127 live only in builtin_code
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def text(value) -> str:
    """A flatbuffer string (bytes or None) as str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def _constant(obj, fb, data: np.ndarray) -> int:
    """Appends a buffer holding ``data``; returns its index."""
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    obj.buffers.append(buffer)
    return len(obj.buffers) - 1


def _opcode(obj, fb, builtin: int, version: int) -> int:
    """The index of ``builtin``'s operator code, added when the model has none."""
    for i, code in enumerate(obj.operatorCodes):
        if _builtin(code) == builtin and code.version >= version:
            return i
    code = fb.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    code.version = version
    obj.operatorCodes.append(code)
    return len(obj.operatorCodes) - 1


def custom_ops(obj, fb) -> list[str]:
    """The custom op names the model's operators use, sorted, no repeats."""
    codes = obj.operatorCodes or []
    used = {op.opcodeIndex for sg in obj.subgraphs for op in sg.operators or []}
    return sorted({text(codes[i].customCode) for i in used if _builtin(codes[i]) == fb.BuiltinOperator.CUSTOM})


def fold_fp16_weights(obj, fb) -> int:
    """Replaces DEQUANTIZE(float16 constant) by a float32 constant; returns how many were folded."""
    codes = obj.operatorCodes or []
    folded = 0
    for subgraph in obj.subgraphs:
        kept = []
        for op in subgraph.operators or []:
            source = subgraph.tensors[op.inputs[0]] if op.inputs else None
            if (
                _builtin(codes[op.opcodeIndex]) == fb.BuiltinOperator.DEQUANTIZE
                and source is not None
                and source.type == fb.TensorType.FLOAT16
                and obj.buffers[source.buffer].data is not None
            ):
                values = np.frombuffer(bytes(obj.buffers[source.buffer].data), dtype="<f2").astype("<f4")
                subgraph.tensors[op.outputs[0]].buffer = _constant(obj, fb, values)
                folded += 1
            else:
                kept.append(op)
        subgraph.operators = kept
    return folded


def densify_weights(obj, fb, model: bytes) -> int:
    """Replaces DENSIFY(sparse constant) in subgraph 0 by a dense constant; returns how many.

    The dense values are LiteRT's own: ``model`` (the serialized ``obj``) is run once on zeros with
    every tensor kept, and each DENSIFY output read back (DENSIFY fills it on the first invoke).
    Without delegates: XNNPACK densifies sparse weights inside itself and leaves the outputs empty.
    """
    from ai_edge_litert import interpreter as tfl

    codes = obj.operatorCodes or []
    subgraph = obj.subgraphs[0]
    ops = [op for op in subgraph.operators or [] if _builtin(codes[op.opcodeIndex]) == fb.BuiltinOperator.DENSIFY]
    if not ops:
        return 0
    interpreter = tfl.Interpreter(
        model_content=model, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    for op in ops:
        subgraph.tensors[op.outputs[0]].buffer = _constant(obj, fb, interpreter.get_tensor(op.outputs[0]))
    subgraph.operators = [op for op in subgraph.operators if op not in ops]
    return len(ops)


def rewrite_custom_ops(obj, fb) -> dict[str, int]:
    """Rewrites the custom ops of :data:`REPLACEABLE` into builtins; returns name -> how many."""
    codes = obj.operatorCodes or []
    done: dict[str, int] = {}
    for subgraph in obj.subgraphs:
        for op in subgraph.operators or []:
            code = codes[op.opcodeIndex]
            name = text(code.customCode) if _builtin(code) == fb.BuiltinOperator.CUSTOM else ""
            if name == "Convolution2DTransposeBias":
                _as_transpose_conv(obj, fb, subgraph, op)
                done[name] = done.get(name, 0) + 1
    return done


def _as_transpose_conv(obj, fb, subgraph, op) -> None:
    """Convolution2DTransposeBias(input, weights OHWI, bias) -> TRANSPOSE_CONV(shape, weights, input, bias).

    MediaPipe's op reads its options as TfLiteTransposeConvParams: padding, stride_width,
    stride_height (int32 each). TRANSPOSE_CONV takes its output shape as a constant input: the
    custom op's output tensor shape. Version 3 is the one with the bias input.
    """
    padding, stride_w, stride_h = struct.unpack_from("<3i", bytes(op.customOptions))
    if padding not in _PADDING:
        raise ValueError(f"Convolution2DTransposeBias with padding {padding} (neither SAME nor VALID)")
    output = subgraph.tensors[op.outputs[0]]
    shape = fb.TensorT()
    shape.name = f"{text(output.name)}/output_shape"
    shape.shape = [4]
    shape.type = fb.TensorType.INT32
    shape.buffer = _constant(obj, fb, np.asarray(output.shape, dtype="<i4"))
    subgraph.tensors.append(shape)
    options = fb.TransposeConvOptionsT()
    options.padding = getattr(fb.Padding, _PADDING[padding])
    options.strideW, options.strideH = stride_w, stride_h
    options.fusedActivationFunction = fb.ActivationFunctionType.NONE
    data, weights, bias = op.inputs[:3]
    op.opcodeIndex = _opcode(obj, fb, fb.BuiltinOperator.TRANSPOSE_CONV, 3)
    op.inputs = [len(subgraph.tensors) - 1, weights, data, bias]
    op.builtinOptionsType = fb.BuiltinOptions.TransposeConvOptions
    op.builtinOptions = options
    op.customOptions = None
    op.customOptionsFormat = fb.CustomOptionsFormat.FLEXBUFFERS


def max_output_difference(original: bytes, rewritten: bytes, sample: Mapping[str, np.ndarray]) -> float:
    """The largest |output difference| / max|original output| over the outputs, on one sample.

    Both run with LiteRT's default delegate, XNNPACK, the only one that runs MediaPipe's transposed
    convolution: a rewrite that keeps the function gives the same figures (on selfie_segmentation
    exactly the same; LiteRT's builtin kernels differ from XNNPACK's by 2e-4 of the peak there).
    """
    from ai_edge_litert import interpreter as tfl

    def outputs(model: bytes) -> list[np.ndarray]:
        interpreter = tfl.Interpreter(model_content=model)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.asarray(sample[detail["name"]], detail["dtype"]))
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]).astype(np.float64) for d in interpreter.get_output_details()]

    ref, got = outputs(original), outputs(rewritten)
    return max(float(np.max(np.abs(r - g))) / max(float(np.max(np.abs(r))), 1e-12) for r, g in zip(ref, got))
