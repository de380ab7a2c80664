"""Rewrites of a float .tflite's object tree (ai-edge-litert's schema) that ai-edge-quantizer needs.

Each one keeps the model's function and its tensor names (float and int8 layers match by name):

* :func:`fold_fp16_weights`: float16 weights behind DEQUANTIZE become float32 constants (the
  quantizer takes DEQUANTIZE outputs for activations).
* :func:`densify_weights`: sparse weights behind DENSIFY become dense constants. The quantizer
  takes a DENSIFY output for an activation too, and gives it an asymmetric int8 range: a CONV_2D
  with a weight zero point of -128, which LiteRT's conv kernel refuses (``zero_point != 0``).
* :func:`unique_tensor_names`: a tensor name that another tensor already holds (the branches of an IF or
  the bodies of a WHILE each name their arguments ``arg0``...) gets its subgraph's index appended; the
  quantizer keys its ranges by name and refuses a model whose names repeat. Names of subgraph 0 are
  kept, bar a repeat within it.
* :func:`default_input_shapes`: a dynamic input's default shape becomes the data's. The quantizer
  allocates its interpreters at the default shapes before it feeds samples of other shapes, and a
  placeholder default ([1, 1] for openwakeword's melspectrogram, whose first convolution needs 400
  samples) fails to prepare; LiteRT cannot resize such an interpreter afterwards.
* :func:`rewrite_custom_ops`: MediaPipe's ``Convolution2DTransposeBias`` becomes the builtin
  TRANSPOSE_CONV with its bias input. Only XNNPACK runs the custom op (plain LiteRT has no kernel
  for it), and the quantizer leaves it in float, unresolved in the int8 model.

The XNNPACK delegate runs none of these in int8, so each one the int8 model keeps splits its
delegate partition and runs on LiteRT's reference kernels (MediaPipe's face detector: 18 partitions,
int8 7x slower than float; selfie segmentation: 37). Rewritten into ops XNNPACK does run in int8,
with the same function in float:

* :func:`fuse_activations`: a RELU, RELU6 or RELU_N1_TO_1 after an op that can apply it itself (a
  convolution, an ADD, ...) becomes that op's fused activation, as the TensorFlow converter writes
  it; the op writes the activation's tensor, and its own pre-activation tensor is gone.
* :func:`global_pools_as_mean`: an AVERAGE_POOL_2D whose window is the whole feature map (the
  squeeze of a squeeze-and-excite block) becomes MEAN over height and width, keeping dimensions.
* :func:`hard_swish_as_gate`: HARD_SWISH(x) = x * relu6(x + 3) / 6 becomes ADD(x, 3) with a fused
  RELU6, MUL by 1/6 (the gate, in [0, 1]) and MUL by x; the gate's tensors are new
  (``<output>/hard_swish_relu6``, ``<output>/hard_swish_gate``), the output keeps its name.

:func:`custom_ops` names the custom ops left, :func:`max_output_difference` checks a rewritten
model against the original.
"""

from __future__ import annotations

import struct
from typing import Mapping, Sequence

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


def unique_tensor_names(obj) -> int:
    """Renames every tensor whose name an earlier tensor (in model order) holds; returns how many."""
    seen: set[str] = set()
    renamed = 0
    for index, subgraph in enumerate(obj.subgraphs):
        for tensor in subgraph.tensors or []:
            name = text(tensor.name)
            if name in seen:
                base, k = f"{name}__subgraph{index}", 1
                name = base
                while name in seen:
                    name, k = f"{base}_{k}", k + 1
                tensor.name = name
                renamed += 1
            seen.add(name)
    return renamed


def default_input_shapes(obj, shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Sets the default shape of each input of subgraph 0 with a dynamic dim to ``shapes[name]``
    (one sample's shape); returns the names of the inputs changed."""
    subgraph = obj.subgraphs[0]
    changed = []
    for index in subgraph.inputs:
        tensor = subgraph.tensors[index]
        name, signature = text(tensor.name), list(tensor.shapeSignature if tensor.shapeSignature is not None else [])
        shape = [int(d) for d in shapes.get(name, ())]
        if -1 in signature and len(shape) == len(signature) and shape != list(tensor.shape):
            tensor.shape = shape
            changed.append(name)
    return changed


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


def _activations(fb) -> dict[int, int]:
    """Activation ops -> the fused activation that does the same."""
    B, A = fb.BuiltinOperator, fb.ActivationFunctionType
    return {B.RELU: A.RELU, B.RELU6: A.RELU6, B.RELU_N1_TO_1: A.RELU_N1_TO_1}


def _fusing_ops(fb) -> set[int]:
    """Ops with a fused activation that XNNPACK applies in int8 as in float."""
    B = fb.BuiltinOperator
    return {B.CONV_2D, B.DEPTHWISE_CONV_2D, B.ADD, B.SUB, B.MUL, B.FULLY_CONNECTED, B.AVERAGE_POOL_2D,
            B.MAX_POOL_2D}


def fuse_activations(obj, fb) -> int:
    """Fuses each activation op into the op before it where that op can apply it; returns how many.

    Only where the activation is the pre-activation tensor's one reader and that tensor is no
    subgraph output, so no one else sees the values the fusion removes.
    """
    codes = obj.operatorCodes or []
    activations, fusing = _activations(fb), _fusing_ops(fb)
    fused = 0
    for index, subgraph in enumerate(obj.subgraphs):
        operators = subgraph.operators or []
        producer = {t: op for op in operators for t in op.outputs}
        readers: dict[int, int] = {}
        for op in operators:
            for t in op.inputs:
                readers[t] = readers.get(t, 0) + 1
        outputs, gone, kept = set(subgraph.outputs), set(), []
        for op in operators:
            source = op.inputs[0] if op.inputs else -1
            before = producer.get(source)
            if (
                _builtin(codes[op.opcodeIndex]) in activations
                and before is not None
                and _builtin(codes[before.opcodeIndex]) in fusing
                and readers.get(source) == 1 and source not in outputs
                and getattr(before.builtinOptions, "fusedActivationFunction", None) == fb.ActivationFunctionType.NONE
            ):
                before.builtinOptions.fusedActivationFunction = activations[_builtin(codes[op.opcodeIndex])]
                before.outputs = [op.outputs[0]]
                gone.add(source)
            else:
                kept.append(op)
        subgraph.operators = kept
        _drop_tensors(obj, index, gone)
        fused += len(gone)
    return fused


def global_pools_as_mean(obj, fb) -> int:
    """Rewrites whole-map AVERAGE_POOL_2D (no fused activation) as MEAN over axes 1, 2; returns how many."""
    codes = obj.operatorCodes or []
    done = 0
    for subgraph in obj.subgraphs:
        for op in subgraph.operators or []:
            options = op.builtinOptions
            if _builtin(codes[op.opcodeIndex]) != fb.BuiltinOperator.AVERAGE_POOL_2D:
                continue
            x, y = subgraph.tensors[op.inputs[0]], subgraph.tensors[op.outputs[0]]
            if (len(x.shape) != 4 or (options.filterHeight, options.filterWidth) != tuple(x.shape[1:3])
                    or tuple(y.shape[1:3]) != (1, 1)
                    or options.fusedActivationFunction != fb.ActivationFunctionType.NONE):
                continue
            axes = _tensor(fb, subgraph, f"{text(y.name)}/mean_axes", [2], fb.TensorType.INT32,
                           _constant(obj, fb, np.array([1, 2], dtype="<i4")))
            reducer = fb.ReducerOptionsT()
            reducer.keepDims = True
            op.opcodeIndex = _opcode(obj, fb, fb.BuiltinOperator.MEAN, 1)
            op.inputs = [op.inputs[0], axes]
            op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.ReducerOptions, reducer
            done += 1
    return done


def hard_swish_as_gate(obj, fb) -> int:
    """Rewrites float HARD_SWISH as x * (relu6(x + 3) * 1/6) in builtin ops; returns how many."""
    codes = obj.operatorCodes or []
    B, done = fb.BuiltinOperator, 0
    for subgraph in obj.subgraphs:
        operators = []
        for op in subgraph.operators or []:
            x = subgraph.tensors[op.inputs[0]] if op.inputs else None
            if _builtin(codes[op.opcodeIndex]) != B.HARD_SWISH or x.type != fb.TensorType.FLOAT32:
                operators.append(op)
                continue
            name = text(subgraph.tensors[op.outputs[0]].name)
            three = _tensor(fb, subgraph, f"{name}/hard_swish_three", [1], fb.TensorType.FLOAT32,
                            _constant(obj, fb, np.array([3.0], dtype="<f4")))
            sixth = _tensor(fb, subgraph, f"{name}/hard_swish_sixth", [1], fb.TensorType.FLOAT32,
                            _constant(obj, fb, np.array([1 / 6], dtype="<f4")))
            relu6 = _tensor(fb, subgraph, f"{name}/hard_swish_relu6", list(x.shape), fb.TensorType.FLOAT32)
            gate = _tensor(fb, subgraph, f"{name}/hard_swish_gate", list(x.shape), fb.TensorType.FLOAT32)
            add = fb.AddOptionsT()
            add.fusedActivationFunction = fb.ActivationFunctionType.RELU6
            operators += [_operator(obj, fb, B.ADD, [op.inputs[0], three], [relu6], add),
                          _operator(obj, fb, B.MUL, [relu6, sixth], [gate], fb.MulOptionsT()),
                          _operator(obj, fb, B.MUL, [op.inputs[0], gate], [op.outputs[0]], fb.MulOptionsT())]
            done += 1
        subgraph.operators = operators
    return done


def _tensor(fb, subgraph, name: str, shape: list[int], dtype: int, buffer: int = 0) -> int:
    """Appends a tensor (a constant when ``buffer`` holds its data); returns its index."""
    tensor = fb.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name, shape, dtype, buffer
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _operator(obj, fb, builtin: int, inputs: list[int], outputs: list[int], options):
    op = fb.OperatorT()
    op.opcodeIndex = _opcode(obj, fb, builtin, 1)
    op.inputs, op.outputs = inputs, outputs
    op.builtinOptionsType = getattr(fb.BuiltinOptions, type(options).__name__[:-1])
    op.builtinOptions = options
    return op


def _drop_tensors(obj, index: int, gone: set[int]) -> None:
    """Removes tensors no op reads or writes any more from subgraph ``index``, renumbering the rest.

    ai-edge-quantizer reads every non-constant tensor of a subgraph while it calibrates, and one
    no op writes has no data.
    """
    if not gone:
        return
    subgraph = obj.subgraphs[index]
    kept = [i for i in range(len(subgraph.tensors)) if i not in gone]
    new = {old: k for k, old in enumerate(kept)}
    new[-1] = -1  # an omitted optional input
    subgraph.tensors = [subgraph.tensors[i] for i in kept]
    for op in subgraph.operators or []:
        op.inputs = [new[i] for i in op.inputs]
        op.outputs = [new[i] for i in op.outputs]
        if op.intermediates is not None:
            op.intermediates = [new[i] for i in op.intermediates]
    subgraph.inputs = [new[i] for i in subgraph.inputs]
    subgraph.outputs = [new[i] for i in subgraph.outputs]
    for sig in obj.signatureDefs or []:
        if sig.subgraphIndex == index:
            for entry in [*(sig.inputs or []), *(sig.outputs or [])]:
                entry.tensorIndex = new[entry.tensorIndex]


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
