"""Small .tflite models for the tests, written with the flatbuffer schema that ships with ai-edge-litert.

No TensorFlow: :class:`Graph` assembles a model from the schema's object API. The models:

* :func:`float_convnet`: conv (per-channel int8 in its quantized form) -> depthwise conv -> add ->
  max pool -> reshape -> fully connected -> softmax, with or without a signature def.
* :func:`int8_convnet`: the same net quantized by hand the way the TensorFlow converter does it
  (float interface, QUANTIZE/DEQUANTIZE at the boundary, per-channel conv weights, int32 biases),
  optionally with renamed tensors.
* int16-activation versions come from ai-edge-quantizer (``static_wi8_ai16``) in the tests.
* :func:`transpose_conv_bias`: conv -> MediaPipe's custom ``Convolution2DTransposeBias`` (or
  another custom op name), as in MediaPipe's selfie segmentation models.
* :func:`argmax_unpool`: conv -> MediaPipe's custom MaxPoolingWithArgmax2D -> MaxUnpooling2D -> conv,
  as in MediaPipe's older hair segmentation model (only XNNPACK runs those two ops).
* :func:`sparse_conv`: conv whose float16 weights are stored sparse behind DENSIFY and DEQUANTIZE,
  as in MediaPipe's sparse face and pose detectors.
* :func:`scored_if`: a wake-word head as openwakeword's .tflite heads are: FULLY_CONNECTED ->
  LOGISTIC score, then an IF on score >= 0.5 whose then-branch scores again with a verifier
  (FULLY_CONNECTED -> LOGISTIC) and whose else-branch passes the score through; both branches name
  their arguments ``arg0`` and ``arg1``, which ai-edge-quantizer refuses as repeated names.
* :func:`placeholder_input`: a dynamic input ([1, -1]) whose default shape is a placeholder ([1, 1]) at
  which the model does not prepare (a 1x4 VALID convolution over a 1-sample signal), as in
  openwakeword's melspectrogram.tflite.
* :func:`unfused_block`: ops XNNPACK runs in float only, as MediaPipe's face detector and selfie
  segmentation have them: conv -> separate RELU, depthwise -> separate RELU6 -> HARD_SWISH, a
  whole-map AVERAGE_POOL_2D gating the main path (squeeze-and-excite), and a RELU whose input has a
  second reader (not fusable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils

INPUT_SHAPE = (1, 8, 8, 3)
CHANNELS = 4
CLASSES = 5

#: activation tensors of the float net, in execution order (the input first).
ACTIVATIONS = ["input", "conv1", "dw", "add", "pool", "flatten", "logits", "probs"]

_DTYPES = {
    np.dtype(np.float32): fb.TensorType.FLOAT32,
    np.dtype(np.float16): fb.TensorType.FLOAT16,
    np.dtype(np.int8): fb.TensorType.INT8,
    np.dtype(np.uint8): fb.TensorType.UINT8,
    np.dtype(np.int16): fb.TensorType.INT16,
    np.dtype(np.int32): fb.TensorType.INT32,
    np.dtype(np.int64): fb.TensorType.INT64,
    np.dtype(np.bool_): fb.TensorType.BOOL,
}


class Graph:
    """One subgraph under construction; :meth:`to_bytes` packs it into a model."""

    def __init__(self, legacy_opcodes: bool = False, fp16_weights: bool = False) -> None:
        self.legacy_opcodes = legacy_opcodes  # old schema: only deprecated_builtin_code is set
        self.fp16_weights = fp16_weights  # float weights stored as float16 behind DEQUANTIZE
        self.tensors: list[fb.TensorT] = []
        self.buffers: list[fb.BufferT] = [fb.BufferT()]  # buffer 0: the schema's empty sentinel
        self.operators: list[fb.OperatorT] = []
        self.opcodes: list[fb.OperatorCodeT] = []
        self.opcode_index: dict[int, int] = {}
        self.bodies: list[tuple[Graph, list[int], list[int]]] = []  # subgraphs 1, 2, ...

    def body(self) -> Graph:
        """A new subgraph (an IF branch) sharing this model's buffers and operator codes; give its inputs
        and outputs to :meth:`add_body`."""
        child = Graph(self.legacy_opcodes, self.fp16_weights)
        child.buffers, child.opcodes, child.opcode_index = self.buffers, self.opcodes, self.opcode_index
        return child

    def add_body(self, child: Graph, inputs: list[int], outputs: list[int]) -> int:
        """Adds ``child`` as the next subgraph; returns its subgraph index."""
        self.bodies.append((child, inputs, outputs))
        return len(self.bodies)

    def tensor(self, name: str, shape, dtype=np.float32, data: np.ndarray | None = None, quant=None) -> int:
        """Adds a tensor (a constant when ``data`` is given); returns its index."""
        t = fb.TensorT()
        t.name = name
        t.shape = list(shape)
        t.type = _DTYPES[np.dtype(dtype)]
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data, dtype=dtype).tobytes(), dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        t.quantization = quant
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray, quant=None) -> int:
        if self.fp16_weights and data.dtype == np.float32:
            half = self.tensor(f"{name}_fp16", data.shape, np.float16, data.astype(np.float16))
            out = self.tensor(name, data.shape)
            self.op(fb.BuiltinOperator.DEQUANTIZE, [half], [out])
            return out
        return self.tensor(name, data.shape, data.dtype, data, quant)

    def op(self, code: int, inputs: list[int], outputs: list[int], options=None) -> None:
        """Adds an operator; ``options`` is a schema ``*OptionsT`` object (its union type is inferred)."""
        if code in self.opcode_index:
            index = self.opcode_index[code]
        else:
            opcode = fb.OperatorCodeT()
            opcode.builtinCode = 0 if self.legacy_opcodes else code
            # Codes above 127 live only in builtinCode; the deprecated byte holds the placeholder.
            opcode.deprecatedBuiltinCode = min(code, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            opcode.version = 1
            self.opcodes.append(opcode)
            index = self.opcode_index[code] = len(self.opcodes) - 1
        operator = fb.OperatorT()
        operator.opcodeIndex = index
        operator.inputs = list(inputs)
        operator.outputs = list(outputs)
        if options is not None:
            operator.builtinOptionsType = getattr(fb.BuiltinOptions, type(options).__name__[:-1])
            operator.builtinOptions = options
        self.operators.append(operator)

    def custom_op(self, name: str, inputs: list[int], outputs: list[int], options: bytes) -> None:
        """Adds a custom operator ``name`` with raw ``options`` (custom_options bytes)."""
        opcode = fb.OperatorCodeT()
        opcode.builtinCode = opcode.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
        opcode.customCode = name
        opcode.version = 1
        self.opcodes.append(opcode)
        operator = fb.OperatorT()
        operator.opcodeIndex = len(self.opcodes) - 1
        operator.inputs, operator.outputs = list(inputs), list(outputs)
        operator.customOptions = np.frombuffer(options, dtype=np.uint8)
        self.operators.append(operator)

    def _subgraph(self, inputs: list[int], outputs: list[int], name: str) -> fb.SubGraphT:
        subgraph = fb.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = list(inputs)
        subgraph.outputs = list(outputs)
        subgraph.operators = self.operators
        subgraph.name = name
        return subgraph

    def to_bytes(self, inputs: list[int], outputs: list[int], signature: str | None = "serving_default") -> bytes:
        """Packs the model; ``signature=None`` writes no signature def (like many published models)."""
        model = fb.ModelT()
        model.version = 3
        model.operatorCodes = self.opcodes
        model.subgraphs = [self._subgraph(inputs, outputs, "main"),
                           *(g._subgraph(i, o, f"body{k + 1}") for k, (g, i, o) in enumerate(self.bodies))]
        model.buffers = self.buffers
        model.description = "qbench test model"
        if signature is not None:
            sig = fb.SignatureDefT()
            sig.signatureKey = signature
            sig.subgraphIndex = 0
            sig.inputs = [_tensor_map(self.tensors[i].name, i) for i in inputs]
            sig.outputs = [_tensor_map(self.tensors[i].name, i) for i in outputs]
            model.signatureDefs = [sig]
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _tensor_map(name: str, index: int) -> fb.TensorMapT:
    m = fb.TensorMapT()
    m.name = name
    m.tensorIndex = index
    return m


def qparams(scale, zero_point, axis: int = 0) -> fb.QuantizationParametersT:
    q = fb.QuantizationParametersT()
    q.scale = [float(s) for s in np.atleast_1d(scale)]
    q.zeroPoint = [int(z) for z in np.atleast_1d(zero_point)]
    q.quantizedDimension = axis
    return q


def convnet_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic weights; channels get different magnitudes so per-channel scales differ."""
    rng = np.random.default_rng(seed)
    gain = np.array([0.2, 1.0, 3.0, 0.5], dtype=np.float32)
    return {
        "conv1/weights": (rng.normal(size=(CHANNELS, 3, 3, 3)) * gain[:, None, None, None]).astype(np.float32),
        "conv1/bias": rng.normal(scale=0.1, size=CHANNELS).astype(np.float32),
        "dw/weights": (rng.normal(size=(1, 3, 3, CHANNELS)) * gain[::-1]).astype(np.float32) * 0.3,
        "dw/bias": rng.normal(scale=0.1, size=CHANNELS).astype(np.float32),
        "fc/weights": rng.normal(scale=0.2, size=(CLASSES, 4 * 4 * CHANNELS)).astype(np.float32),
        "fc/bias": rng.normal(scale=0.1, size=CLASSES).astype(np.float32),
    }


def calibration_samples(n: int = 16, seed: int = 1) -> np.ndarray:
    """``n`` inputs with a leading sample axis: shape ``(n, 1, 8, 8, 3)``."""
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, *INPUT_SHAPE)).astype(np.float32)


def _conv_options() -> fb.Conv2DOptionsT:
    o = fb.Conv2DOptionsT()
    o.padding, o.strideW, o.strideH = fb.Padding.SAME, 1, 1
    o.fusedActivationFunction = fb.ActivationFunctionType.RELU
    return o


def _dw_options() -> fb.DepthwiseConv2DOptionsT:
    o = fb.DepthwiseConv2DOptionsT()
    o.padding, o.strideW, o.strideH, o.depthMultiplier = fb.Padding.SAME, 1, 1, 1
    o.fusedActivationFunction = fb.ActivationFunctionType.RELU6
    return o


def _pool_options() -> fb.Pool2DOptionsT:
    o = fb.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = fb.Padding.VALID, 2, 2, 2, 2
    return o


def _softmax_options() -> fb.SoftmaxOptionsT:
    o = fb.SoftmaxOptionsT()
    o.beta = 1.0
    return o


def float_convnet(
    signature: str | None = "serving_default",
    seed: int = 0,
    head: str = "SOFTMAX",
    probs_name: str = "probs",
    legacy_opcodes: bool = False,
    fp16_weights: bool = False,
) -> bytes:
    """The float net; tensor names are :data:`ACTIVATIONS` plus ``<layer>/weights|bias``.

    ``head`` (``SOFTMAX`` or ``LOGISTIC``) and ``probs_name`` make a variant whose last layer differs;
    ``legacy_opcodes`` and ``fp16_weights`` make it look like older or MediaPipe-style published models.
    """
    w = convnet_weights(seed)
    g = Graph(legacy_opcodes, fp16_weights)
    B = fb.BuiltinOperator
    x = g.tensor("input", INPUT_SHAPE)
    conv1 = g.tensor("conv1", (1, 8, 8, CHANNELS))
    g.op(B.CONV_2D, [x, g.const("conv1/weights", w["conv1/weights"]), g.const("conv1/bias", w["conv1/bias"])],
         [conv1], _conv_options())
    dw = g.tensor("dw", (1, 8, 8, CHANNELS))
    g.op(B.DEPTHWISE_CONV_2D, [conv1, g.const("dw/weights", w["dw/weights"]), g.const("dw/bias", w["dw/bias"])],
         [dw], _dw_options())
    add = g.tensor("add", (1, 8, 8, CHANNELS))
    g.op(B.ADD, [conv1, dw], [add], fb.AddOptionsT())
    pool = g.tensor("pool", (1, 4, 4, CHANNELS))
    g.op(B.MAX_POOL_2D, [add], [pool], _pool_options())
    flat = g.tensor("flatten", (1, 4 * 4 * CHANNELS))
    g.op(B.RESHAPE, [pool, g.const("flatten/shape", np.array([1, 4 * 4 * CHANNELS], dtype=np.int32))], [flat])
    logits = g.tensor("logits", (1, CLASSES))
    g.op(B.FULLY_CONNECTED, [flat, g.const("fc/weights", w["fc/weights"]), g.const("fc/bias", w["fc/bias"])],
         [logits], fb.FullyConnectedOptionsT())
    probs = g.tensor(probs_name, (1, CLASSES))
    if head == "SOFTMAX":
        g.op(B.SOFTMAX, [logits], [probs], _softmax_options())
    else:
        g.op(getattr(B, head), [logits], [probs])
    return g.to_bytes([x], [probs], signature)


def uint8_roundtrip(scale: float = 0.02, zero_point: int = 100) -> bytes:
    """``x`` -> QUANTIZE -> uint8 ``x_uint8`` -> DEQUANTIZE -> ``y``: a uint8 tensor to capture."""
    g = Graph()
    x = g.tensor("x", (1, 16))
    xq = g.tensor("x_uint8", (1, 16), np.uint8, quant=qparams(scale, zero_point))
    y = g.tensor("y", (1, 16))
    g.op(fb.BuiltinOperator.QUANTIZE, [x], [xq])
    g.op(fb.BuiltinOperator.DEQUANTIZE, [xq], [y])
    return g.to_bytes([x], [y], signature=None)


def activation_ranges(model: bytes, samples: np.ndarray) -> dict[str, tuple[float, float]]:
    """Min/max of every float activation of ``model`` over ``samples`` (LiteRT, no delegate)."""
    from ai_edge_litert import interpreter as tfl

    interp = tfl.Interpreter(
        model_content=model,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interp.allocate_tensors()
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    ranges: dict[str, tuple[float, float]] = {}
    for sample in samples:
        interp.set_tensor(index["input"], sample)
        interp.invoke()
        for name in ACTIVATIONS:
            value = interp.get_tensor(index[name])
            lo, hi = ranges.get(name, (0.0, 0.0))  # the range always holds 0 so that 0 is exact
            ranges[name] = (min(lo, float(value.min())), max(hi, float(value.max())))
    return ranges


def _asymmetric(lo: float, hi: float) -> tuple[float, int]:
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def _per_channel(weights: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 along ``axis`` (zero point 0, range [-127, 127]) as TFLite requires for weights."""
    reduce = tuple(i for i in range(weights.ndim) if i != axis)
    scale = np.maximum(np.abs(weights).max(axis=reduce), 1e-8) / 127.0
    shape = [1] * weights.ndim
    shape[axis] = -1
    q = np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def int8_convnet(
    ranges: Mapping[str, tuple[float, float]],
    rename: Mapping[str, str] | None = None,
    signature: str | None = "serving_default",
    seed: int = 0,
) -> bytes:
    """The float net quantized as the TF converter does; ``rename`` changes int8 activation names.

    The interface stays float: ``input`` -> QUANTIZE -> ``input_int8`` ... ``probs_int8`` ->
    DEQUANTIZE -> ``probs``. Conv and depthwise weights are per-channel, FC weights per-tensor.
    """
    rename = dict(rename or {})
    name = lambda n: rename.get(n, n)  # noqa: E731
    w = convnet_weights(seed)
    act = {n: _asymmetric(*ranges[n]) for n in ACTIVATIONS if n not in ("pool", "flatten", "probs")}
    act["pool"] = act["flatten"] = act["add"]  # max pool and reshape keep their input's scale
    act["probs"] = (1.0 / 256.0, -128)  # the int8 softmax kernel requires exactly this
    g = Graph()
    B = fb.BuiltinOperator

    def activation(n: str, shape) -> int:
        scale, zp = act[n]
        return g.tensor(name(n), shape, np.int8, quant=qparams(scale, zp))

    def weights_and_bias(layer: str, axis: int, in_scale: float, per_channel: bool) -> tuple[int, int]:
        wf = w[f"{layer}/weights"]
        if per_channel:
            wq, ws = _per_channel(wf, axis)
        else:
            ws = np.float32(np.abs(wf).max() / 127.0)
            wq = np.clip(np.round(wf / ws), -127, 127).astype(np.int8)
        bias_scale = in_scale * np.atleast_1d(ws)
        bq = np.round(w[f"{layer}/bias"] / bias_scale).astype(np.int32)
        wt = g.const(f"{layer}/weights", wq, qparams(ws, np.zeros_like(np.atleast_1d(ws), dtype=int), axis))
        bt = g.const(f"{layer}/bias", bq, qparams(bias_scale, np.zeros_like(bias_scale, dtype=int), 0))
        return wt, bt

    x = g.tensor("input", INPUT_SHAPE)
    xq = activation("input", INPUT_SHAPE)
    g.tensors[xq].name = name("input_int8")
    g.op(B.QUANTIZE, [x], [xq])
    conv1 = activation("conv1", (1, 8, 8, CHANNELS))
    g.op(B.CONV_2D, [xq, *weights_and_bias("conv1", 0, act["input"][0], True)], [conv1], _conv_options())
    dw = activation("dw", (1, 8, 8, CHANNELS))
    g.op(B.DEPTHWISE_CONV_2D, [conv1, *weights_and_bias("dw", 3, act["conv1"][0], True)], [dw], _dw_options())
    add = activation("add", (1, 8, 8, CHANNELS))
    g.op(B.ADD, [conv1, dw], [add], fb.AddOptionsT())
    pool = activation("pool", (1, 4, 4, CHANNELS))
    g.op(B.MAX_POOL_2D, [add], [pool], _pool_options())
    flat = activation("flatten", (1, 4 * 4 * CHANNELS))
    g.op(B.RESHAPE, [pool, g.const("flatten/shape", np.array([1, 4 * 4 * CHANNELS], dtype=np.int32))], [flat])
    logits = activation("logits", (1, CLASSES))
    g.op(B.FULLY_CONNECTED, [flat, *weights_and_bias("fc", 0, act["flatten"][0], False)], [logits],
         fb.FullyConnectedOptionsT())
    probs_q = activation("probs", (1, CLASSES))
    g.tensors[probs_q].name = name("probs_int8")
    g.op(B.SOFTMAX, [logits], [probs_q], _softmax_options())
    probs = g.tensor("probs", (1, CLASSES))
    g.op(B.DEQUANTIZE, [probs_q], [probs])
    return g.to_bytes([x], [probs], signature)


#: the transposed convolution of :func:`transpose_conv_bias`: (1, 4, 4, CHANNELS) -> (1, 8, 8, 3)
TRANSPOSE_KERNEL, TRANSPOSE_STRIDE, TRANSPOSE_OUT = 2, 2, 3


def transpose_conv_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """OHWI weights and bias of :func:`transpose_conv_bias`'s custom op."""
    rng = np.random.default_rng(seed + 7)
    k = TRANSPOSE_KERNEL
    return (rng.normal(scale=0.5, size=(TRANSPOSE_OUT, k, k, CHANNELS)).astype(np.float32),
            rng.normal(scale=0.1, size=TRANSPOSE_OUT).astype(np.float32))


def transpose_conv_bias(custom: str = "Convolution2DTransposeBias", fp16_weights: bool = True) -> bytes:
    """``input`` (1, 4, 4, 3) -> CONV_2D+RELU ``conv1`` -> custom ``up`` (1, 8, 8, 3); no signature def.

    The custom op's options are MediaPipe's TfLiteTransposeConvParams: padding SAME (1), stride 2, 2.
    """
    w = convnet_weights()
    g = Graph(fp16_weights=fp16_weights)
    x = g.tensor("input", (1, 4, 4, 3))
    conv1 = g.tensor("conv1", (1, 4, 4, CHANNELS))
    g.op(fb.BuiltinOperator.CONV_2D, [x, g.const("conv1/weights", w["conv1/weights"]),
                                      g.const("conv1/bias", w["conv1/bias"])], [conv1], _conv_options())
    kernel, bias = transpose_conv_weights()
    up = g.tensor("up", (1, 8, 8, TRANSPOSE_OUT))
    options = np.array([1, TRANSPOSE_STRIDE, TRANSPOSE_STRIDE], dtype="<i4").tobytes()
    g.custom_op(custom, [conv1, g.const("up/kernel", kernel), g.const("up/bias", bias)], [up], options)
    return g.to_bytes([x], [up], signature=None)


def transposed_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """NHWC transposed convolution, OHWI kernel, no padding (kernel size == stride): the known answer."""
    n, h, w, _ = x.shape
    o, k, _, _ = kernel.shape
    out = np.zeros((n, h * stride + k - stride, w * stride + k - stride, o))
    for i in range(h):
        for j in range(w):
            out[:, i * stride:i * stride + k, j * stride:j * stride + k, :] += np.einsum(
                "nc,oyxc->nyxo", x[:, i, j, :], kernel)
    return out + bias


def argmax_unpool() -> bytes:
    """``input`` (1, 8, 8, 3) -> CONV_2D ``conv1`` -> MaxPoolingWithArgmax2D ``pool``, ``pool/indices``
    (float, as MediaPipe's) -> MaxUnpooling2D ``unpool`` -> CONV_2D 1x1 ``y``; no signature def.

    Both custom ops read TfLitePoolParams: padding VALID (2), stride 2, 2, filter 2, 2, no activation.
    """
    w = convnet_weights()
    g = Graph()
    x = g.tensor("input", INPUT_SHAPE)
    conv1 = g.tensor("conv1", (1, 8, 8, CHANNELS))
    g.op(fb.BuiltinOperator.CONV_2D, [x, g.const("conv1/weights", w["conv1/weights"]),
                                      g.const("conv1/bias", w["conv1/bias"])], [conv1], _conv_options())
    pooled, indices = g.tensor("pool", (1, 4, 4, CHANNELS)), g.tensor("pool/indices", (1, 4, 4, CHANNELS))
    options = np.array([2, 2, 2, 2, 2, 0, 0, 0, 0, 0], dtype="<i4").tobytes()
    g.custom_op("MaxPoolingWithArgmax2D", [conv1], [pooled, indices], options)
    up = g.tensor("unpool", (1, 8, 8, CHANNELS))
    g.custom_op("MaxUnpooling2D", [pooled, indices], [up], options)
    y = g.tensor("y", (1, 8, 8, CHANNELS))
    mix = np.random.default_rng(0).normal(size=(CHANNELS, 1, 1, CHANNELS)).astype(np.float32)
    g.op(fb.BuiltinOperator.CONV_2D, [up, g.const("y/weights", mix), g.const("y/bias", w["conv1/bias"])], [y],
         _conv_options())
    return g.to_bytes([x], [y], signature=None)


def sparse_conv(seed: int = 0) -> tuple[bytes, np.ndarray]:
    """``input`` (1, 8, 8, 3) -> CONV_2D 1x1 ``conv`` (1, 8, 8, 4), weights sparse float16 -> DENSIFY -> DEQUANTIZE.

    The weights (4, 1, 1, 3) keep half their values (the rest zero), stored CSR over the last axis.

    Returns:
        The model and its dense float32 weights (OHWI).
    """
    rng = np.random.default_rng(seed + 11)
    dense = rng.normal(size=(CHANNELS, 1, 1, 3)).astype(np.float16)
    dense[rng.uniform(size=dense.shape) < 0.5] = 0
    rows = dense.reshape(CHANNELS, 3)
    sparsity = fb.SparsityParametersT()
    sparsity.traversalOrder = [0, 1, 2, 3]
    sparsity.dimMetadata = [_dense_dim(CHANNELS), _dense_dim(1), _dense_dim(1), _csr_dim(rows)]
    g = Graph()
    x = g.tensor("input", INPUT_SHAPE)
    packed = g.tensor("conv/weights_sparse", dense.shape, np.float16, rows[rows != 0])
    g.tensors[packed].sparsity = sparsity
    half = g.tensor("conv/weights_fp16", dense.shape, np.float16)
    g.op(fb.BuiltinOperator.DENSIFY, [packed], [half])
    weights = g.tensor("conv/weights", dense.shape)
    g.op(fb.BuiltinOperator.DEQUANTIZE, [half], [weights])
    out = g.tensor("conv", (1, 8, 8, CHANNELS))
    bias = g.const("conv/bias", np.linspace(-0.1, 0.1, CHANNELS, dtype=np.float32))
    g.op(fb.BuiltinOperator.CONV_2D, [x, weights, bias], [out], _conv_options())
    return g.to_bytes([x], [out], signature=None), dense.astype(np.float32)


def _dense_dim(size: int) -> fb.DimensionMetadataT:
    d = fb.DimensionMetadataT()
    d.format, d.denseSize = fb.DimensionType.DENSE, size
    return d


def _csr_dim(rows: np.ndarray) -> fb.DimensionMetadataT:
    d = fb.DimensionMetadataT()
    d.format = fb.DimensionType.SPARSE_CSR
    segments, indices = fb.Int32VectorT(), fb.Int32VectorT()
    segments.values = [0, *np.cumsum((rows != 0).sum(axis=1)).tolist()]
    indices.values = [int(j) for row in rows for j in np.flatnonzero(row)]
    d.arraySegmentsType = d.arrayIndicesType = fb.SparseIndexVector.Int32Vector
    d.arraySegments, d.arrayIndices = segments, indices
    return d


def write_models(directory: Path) -> dict[str, Path]:
    """Writes the hand-built models; returns their paths by role.

    Roles: ``float`` (with signature), ``float_nosig``, ``int8`` (converter style, per-channel, with
    ``conv1`` and ``logits`` renamed so that only their position matches), ``uint8`` (round trip).
    """
    directory = Path(directory)
    float_bytes = float_convnet()
    ranges = activation_ranges(float_bytes, calibration_samples())
    models = {
        "float": float_bytes,
        "float_nosig": float_convnet(signature=None),
        "int8": int8_convnet(ranges, rename=RENAMED),
        "uint8": uint8_roundtrip(),
    }
    paths = {}
    for role, data in models.items():
        paths[role] = directory / f"{role}.tflite"
        paths[role].write_bytes(data)
    return paths


#: float name -> int8 name in :func:`write_models`' converter-style int8 model
RENAMED = {"conv1": "model/conv1;Relu", "logits": "model/fc/BiasAdd"}


UNFUSED_SHAPE = (1, 16, 16, 8)


def _fc_options() -> fb.FullyConnectedOptionsT:
    return fb.FullyConnectedOptionsT()


def scored_if(seed: int = 0, features: int = 16) -> bytes:
    """:func:`scored_if` of the module doc: input ``x`` [1, features], output ``score`` [1, 1]."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.tensor("x", (1, features))
    w1 = g.const("head/w", rng.normal(0, 0.5, (1, features)).astype(np.float32))
    b1 = g.const("head/b", np.array([-1.0], np.float32))
    logit = g.tensor("head/logit", (1, 1))
    g.op(fb.BuiltinOperator.FULLY_CONNECTED, [x, w1, b1], [logit], _fc_options())
    p1 = g.tensor("head/score", (1, 1))
    g.op(fb.BuiltinOperator.LOGISTIC, [logit], [p1])
    half = g.const("half", np.array([0.5], np.float32))
    cond = g.tensor("high", (1,), np.bool_)
    g.op(fb.BuiltinOperator.GREATER_EQUAL, [p1, half], [cond])
    branches = []
    for verifier in (True, False):
        b = g.body()
        args = [b.tensor("arg0", (1, features)), b.tensor("arg1", (1, 1))]
        out = b.tensor("out", (1, 1))
        if verifier:
            w2 = b.const("verifier/w", rng.normal(0, 0.5, (1, features)).astype(np.float32))
            b2 = b.const("verifier/b", np.array([0.5], np.float32))
            logit2 = b.tensor("verifier/logit", (1, 1))
            b.op(fb.BuiltinOperator.FULLY_CONNECTED, [args[0], w2, b2], [logit2], _fc_options())
            b.op(fb.BuiltinOperator.LOGISTIC, [logit2], [out])
        else:
            shape = b.const("shape", np.array([1, 1], np.int32))
            b.op(fb.BuiltinOperator.RESHAPE, [args[1], shape], [out])
        branches.append(g.add_body(b, args, [out]))
    options = fb.IfOptionsT()
    options.thenSubgraphIndex, options.elseSubgraphIndex = branches
    score = g.tensor("score", (1, 1))
    g.op(fb.BuiltinOperator.IF, [cond, x, p1], [score], options)
    return g.to_bytes([x], [score])


def placeholder_input(seed: int = 0) -> bytes:
    """:func:`placeholder_input` of the module doc: input ``audio`` [1, -1] (default [1, 1]), output
    ``frames`` [1, 1, -1, 2]."""
    rng = np.random.default_rng(seed)
    g = Graph()
    audio = g.tensor("audio", (1, 1))
    g.tensors[audio].shapeSignature = [1, -1]
    shape = g.const("image_shape", np.array([1, 1, -1, 1], np.int32))
    image = g.tensor("image", (1, 1, 1, 1))
    g.tensors[image].shapeSignature = [1, 1, -1, 1]
    g.op(fb.BuiltinOperator.RESHAPE, [audio, shape], [image])
    w = g.const("filters", rng.normal(0, 0.5, (2, 1, 4, 1)).astype(np.float32))
    b = g.const("filters_bias", np.zeros(2, np.float32))
    frames = g.tensor("frames", (1, 1, 1, 2))
    g.tensors[frames].shapeSignature = [1, 1, -1, 2]
    options = fb.Conv2DOptionsT()
    options.padding, options.strideH, options.strideW = fb.Padding.VALID, 1, 1
    g.op(fb.BuiltinOperator.CONV_2D, [image, w, b], [frames], options)
    return g.to_bytes([audio], [frames])


def unfused_block(seed: int = 0) -> bytes:
    """See the module doc; input ``input`` :data:`UNFUSED_SHAPE`, output ``out`` of the same shape."""
    rng = np.random.default_rng(seed)
    c = UNFUSED_SHAPE[-1]
    g = Graph()
    B = fb.BuiltinOperator
    shape = UNFUSED_SHAPE
    x = g.tensor("input", shape)
    conv_opts = _conv_options()
    conv_opts.fusedActivationFunction = fb.ActivationFunctionType.NONE
    conv = g.tensor("conv", shape)
    g.op(B.CONV_2D, [x, g.const("conv/weights", rng.normal(0, 0.3, (c, 3, 3, c)).astype(np.float32)),
                     g.const("conv/bias", rng.normal(0, 0.1, c).astype(np.float32))], [conv], conv_opts)
    relu = g.tensor("relu", shape)
    g.op(B.RELU, [conv], [relu])
    dw_opts = _dw_options()
    dw_opts.fusedActivationFunction = fb.ActivationFunctionType.NONE
    dw = g.tensor("dw", shape)
    g.op(B.DEPTHWISE_CONV_2D, [relu, g.const("dw/weights", rng.normal(0, 0.5, (1, 3, 3, c)).astype(np.float32)),
                               g.const("dw/bias", rng.normal(0, 0.1, c).astype(np.float32))], [dw], dw_opts)
    relu6 = g.tensor("relu6", shape)
    g.op(B.RELU6, [dw], [relu6])
    swish = g.tensor("hard_swish", shape)
    g.op(B.HARD_SWISH, [relu6], [swish])
    pool_opts = fb.Pool2DOptionsT()
    pool_opts.padding, pool_opts.strideW, pool_opts.strideH = fb.Padding.VALID, 1, 1
    pool_opts.filterHeight, pool_opts.filterWidth = shape[1], shape[2]
    squeeze = g.tensor("squeeze", (1, 1, 1, c))
    g.op(B.AVERAGE_POOL_2D, [swish], [squeeze], pool_opts)
    gated = g.tensor("gated", shape)
    g.op(B.MUL, [swish, squeeze], [gated], fb.MulOptionsT())
    summed = g.tensor("summed", shape)
    g.op(B.ADD, [gated, x], [summed], fb.AddOptionsT())
    out = g.tensor("out", shape)
    g.op(B.RELU, [summed], [out])
    tail = g.tensor("tail", shape)  # a second reader of ``summed``: that RELU stays an op
    g.op(B.ADD, [summed, out], [tail], fb.AddOptionsT())
    return g.to_bytes([x], [tail])
