"""Rewrites float ONNX patterns that cost an int8 model float kernels, into the same function in ops that do not.

* ONNX Runtime's CPU provider runs a quantized ConvTranspose as a float kernel between
  DequantizeLinear and QuantizeLinear. The upsampling ConvTranspose of detection heads (PaddleOCR's
  DB head: kernel 2, stride 2, no padding) computes every output pixel from exactly one input
  pixel, so it is a 1x1 Conv with ``k*k`` times the output channels followed by DepthToSpace
  (CRD order): the same sums, which ONNX Runtime runs as ``QLinearConv`` when quantized
  (:func:`conv_transpose_as_conv`).
* Paddle exports HardSwish as ``x * Clip(x + 3, 0, 6) / 6``: four elementwise ops, each with its
  own QuantizeLinear/DequantizeLinear in a QDQ model, the Add with a scalar and the Div in float
  between them. :func:`fuse_hardswish` writes it as ONNX Runtime runs HardSwish itself (it inlines
  the opset-14 op as ``x * HardSigmoid(x)``, alpha 1/6, beta 1/2): two ops, the same values up to
  float rounding.
"""

from __future__ import annotations

import numpy as np


def conv_transpose_as_conv(model) -> int:
    """Replaces every ConvTranspose whose kernel equals its stride (square, group 1, no padding, no
    dilation, no output padding or shape) and whose weights and bias are initializers by
    ``DepthToSpace(Conv1x1(x))``, in place. Returns how many were replaced.

    ``ConvTranspose`` gives ``y[n, o, h*k+i, w*k+j] = sum_c x[n, c, h, w] * W[c, o, i, j] + b[o]``;
    the Conv's output channel ``o*k*k + i*k + j`` holds that sum, which DepthToSpace's CRD mode
    moves to ``(o, h*k+i, w*k+j)``.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    rebuilt, replaced = [], 0
    for node in graph.node:
        block = _block(node, initializers)
        if block is None:
            rebuilt.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])  # (C_in, C_out, k, k)
        c_in, c_out = weight.shape[:2]
        name = node.name or node.output[0]
        conv_weight = weight.transpose(1, 2, 3, 0).reshape(c_out * block * block, c_in, 1, 1)
        inputs = [node.input[0], f"{name}_as_conv_w"]
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(conv_weight), inputs[1]))
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(initializers[node.input[2]])
            inputs.append(f"{name}_as_conv_b")
            graph.initializer.append(numpy_helper.from_array(np.repeat(bias, block * block), inputs[2]))
        rebuilt.append(helper.make_node("Conv", inputs, [f"{name}_as_conv"], name=name, kernel_shape=[1, 1]))
        rebuilt.append(helper.make_node("DepthToSpace", [f"{name}_as_conv"], list(node.output),
                                        name=f"{name}_depth_to_space", blocksize=block, mode="CRD"))
        replaced += 1
    if replaced:
        del graph.node[:]
        graph.node.extend(rebuilt)
        _drop_unused_initializers(model)
    return replaced


def _block(node, initializers) -> int | None:
    """The block size k when ``node`` is a ConvTranspose that :func:`conv_transpose_as_conv` takes, else None."""
    from onnx import helper

    if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or node.input[1] not in initializers:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in initializers:
        return None
    weight = initializers[node.input[1]]
    if len(weight.dims) != 4 or weight.dims[2] != weight.dims[3]:
        return None
    k = int(weight.dims[2])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", "NOTSET") or "output_shape" in attrs:
        return None
    expected = {"strides": [k, k], "group": 1, "kernel_shape": [k, k], "dilations": [1, 1], "pads": [0, 0, 0, 0],
                "output_padding": [0, 0]}
    for key, value in expected.items():
        if key in attrs and list(np.atleast_1d(attrs[key])) != list(np.atleast_1d(value)):
            return None
    if list(attrs.get("strides", [1, 1])) != [k, k] or k < 2:
        return None
    return k


def fuse_hardswish(model) -> int:
    """Replaces every ``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` by ``Mul(x, HardSigmoid(x))`` in place.

    The inner tensors must have no other reader and not be graph outputs; the constants may be
    initializers or Constant nodes. The Mul keeps the Div's name and output. Returns how many.
    """
    from onnx import helper

    graph = model.graph
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}

    def inner(name: str) -> bool:
        return readers.get(name) == 1 and name not in outputs

    replacements, removed = {}, set()
    for div in graph.node:
        if div.op_type != "Div" or not _equals(constants, div.input[1], 6.0):
            continue
        mul = producers.get(div.input[0])
        if mul is None or mul.op_type != "Mul" or not inner(mul.output[0]):
            continue
        for x, gate in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            clip = producers.get(gate)
            if clip is None or clip.op_type != "Clip" or len(clip.input) < 3 or not inner(gate):
                continue
            if not (_equals(constants, clip.input[1], 0.0) and _equals(constants, clip.input[2], 6.0)):
                continue
            add = producers.get(clip.input[0])
            if add is None or add.op_type != "Add" or not inner(add.output[0]) or x not in add.input:
                continue
            if not _equals(constants, add.input[1] if add.input[0] == x else add.input[0], 3.0):
                continue
            name = div.name or div.output[0]
            replacements[id(div)] = [
                helper.make_node("HardSigmoid", [x], [f"{name}_gate"], name=f"{name}_gate", alpha=1.0 / 6.0, beta=0.5),
                helper.make_node("Mul", [x, f"{name}_gate"], list(div.output), name=name),
            ]
            removed.update({id(add), id(clip), id(mul)})
            break
    if replacements:
        rebuilt = [n for node in graph.node if id(node) not in removed for n in replacements.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(rebuilt)
        _drop_unused_initializers(model)
    return len(replacements)


def _drop_unused_initializers(model) -> None:
    """Removes the main graph's initializers (and Constant nodes) that no node reads, subgraphs included."""
    from onnx import AttributeProto

    def reads(graph) -> set[str]:
        names = set()
        for node in graph.node:
            names.update(node.input)
            for attribute in node.attribute:
                if attribute.type == AttributeProto.GRAPH:
                    names |= reads(attribute.g)
                elif attribute.type == AttributeProto.GRAPHS:
                    for sub in attribute.graphs:
                        names |= reads(sub)
        return names

    graph = model.graph
    used = reads(graph) | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _equals(constants: dict[str, np.ndarray], name: str, value: float) -> bool:
    array = constants.get(name)
    return array is not None and array.size == 1 and array.dtype.kind == "f" and float(array.reshape(-1)[0]) == value
