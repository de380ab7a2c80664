"""Rewrites float ONNX ops that ONNX Runtime has no int8 kernel for into ops it has one for.

ONNX Runtime's CPU provider runs a quantized ConvTranspose as a float kernel between
DequantizeLinear and QuantizeLinear. The upsampling ConvTranspose of detection heads (PaddleOCR's
DB head: kernel 2, stride 2, no padding) computes every output pixel from exactly one input
pixel, so it is a 1x1 Conv with ``k*k`` times the output channels followed by DepthToSpace
(CRD order): the same sums, which ONNX Runtime runs as ``QLinearConv`` when quantized.
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
