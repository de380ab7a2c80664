"""Writes a QDQ model's HardSigmoid as an Add that ONNX Runtime runs as ``QLinearAdd``.

ONNX Runtime has no int8 HardSigmoid: its CPU provider fuses DequantizeLinear -> op -> QuantizeLinear
into a QLinear kernel only for AveragePool, GlobalAveragePool, LeakyRelu, Sigmoid and Softmax (unary)
and Add and Mul (binary; ``qdq_selector_action_transformer.cc``). HardSwish, which it inlines as
``x * HardSigmoid(x)`` (as qbench's preparation writes Paddle's ``x * Clip(x + 3, 0, 6) / 6``), so
runs its gate as three float passes, DequantizeLinear, HardSigmoid and QuantizeLinear, where the
float model folds the whole HardSwish into its convolution. On PP-LCNet those passes cost the int8
model more than its int8 convolutions gain.

``HardSigmoid(x) = Clip(alpha * x + beta, 0, 1)``, and its QuantizeLinear clamps too: when the
quantized range is ``[0, R]`` with ``R <= 1`` (the lowest level at zero; what a calibrated range of
HardSigmoid's output is), quantizing ``alpha * x + beta`` gives the same levels as quantizing the
clipped value. ``alpha * x`` is ``x``'s own levels read with ``alpha`` times its scale. So
:func:`gates_as_add` writes the gate as ``Add(DequantizeLinear(x_q, alpha * scale), beta)`` before
the same QuantizeLinear: one ``QLinearAdd`` on 8-bit levels, the same levels up to float rounding.

The rewritten graph is no longer the quantizer's: a second DequantizeLinear of ``x_q`` and a range
that clamps. :func:`restore_gates` puts the HardSigmoid back (from the float model) for edits that
move ranges or remove pairs (:mod:`~qbench.host.quantize.qdq_edit`), which rewrite afterwards.
"""

from __future__ import annotations

import numpy as np

from .graph_maps import producers_of, readers_of, set_nodes

_LEVELS = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


def gates_as_add(model) -> int:
    """Rewrites, in place, every quantized HardSigmoid whose output range clamps at [0, 1] as a quantized Add.

    Taken: a default-domain HardSigmoid with ``alpha > 0`` that reads a DequantizeLinear of an 8-bit
    activation and whose output only a QuantizeLinear reads, both per tensor and of one type, that
    quantizer's lowest level being 0 and its highest at most 1. The Add keeps the HardSigmoid's name
    and output. Returns how many were rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = producers_of(graph)
    readers = readers_of(graph)
    outputs = {o.name for o in graph.output}
    rewritten: dict[int, list] = {}
    for node in graph.node:
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        alpha, beta = _attributes(node)
        dq = producer.get(node.input[0])
        after = readers.get(node.output[0], [])
        if alpha <= 0 or dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1:
            continue
        q = after[0]
        x_params, gate_params = _params(dq, inits), _params(q, inits)
        if q.op_type != "QuantizeLinear" or dq.domain != q.domain or dq.input[0] in inits or None in (x_params,
                                                                                                      gate_params):
            continue
        (x_scale, x_zero), (gate_scale, gate_zero) = x_params, gate_params
        lo, hi = _LEVELS[gate_zero.dtype]
        # 0 is the lowest level, and 1 quantizes to the highest: the quantizer clamps as the Clip does
        if x_zero.dtype != gate_zero.dtype or int(gate_zero) != lo or float(gate_scale) * (hi - lo - 0.5) > 1.0:
            continue
        name = node.name or node.output[0]
        beta_level, beta_zero = (1, 0) if beta >= 0 else (0, 1)
        constants = [
            numpy_helper.from_array(np.array(x_scale * alpha, np.float32), f"{name}_x_scale"),
            numpy_helper.from_array(np.array(beta_level, x_zero.dtype), f"{name}_beta_quantized"),
            numpy_helper.from_array(np.array(abs(beta) or 1.0, np.float32), f"{name}_beta_scale"),
            numpy_helper.from_array(np.array(beta_zero, x_zero.dtype), f"{name}_beta_zero_point"),
        ]
        graph.initializer.extend(constants)
        rewritten[id(node)] = [
            helper.make_node("DequantizeLinear", [dq.input[0], f"{name}_x_scale", dq.input[2]], [f"{name}_x"],
                             name=f"{name}_x_DequantizeLinear", domain=dq.domain),
            helper.make_node("DequantizeLinear", [f"{name}_beta_quantized", f"{name}_beta_scale",
                                                  f"{name}_beta_zero_point"], [f"{name}_beta"],
                             name=f"{name}_beta_DequantizeLinear", domain=dq.domain),
            helper.make_node("Add", [f"{name}_x", f"{name}_beta"], list(node.output), name=name),
        ]
    if rewritten:
        nodes = [n for node in graph.node for n in rewritten.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(_without_unread_dequantize(nodes, outputs))
    return len(rewritten)


def restore_gates(model, float_model) -> int:
    """Undoes :func:`gates_as_add` in place: each Add named like a HardSigmoid of ``float_model`` is
    that HardSigmoid again, reading a DequantizeLinear of ``x_q`` at its own scale. Returns how many."""
    from onnx import NodeProto, numpy_helper

    graph = model.graph
    hard_sigmoids = {n.name: n for n in float_model.graph.node if n.op_type == "HardSigmoid" and n.name}
    inits = {t.name: t for t in graph.initializer}
    producer = producers_of(graph)
    removed: set[int] = set()
    replaced: dict[int, list] = {}
    for node in graph.node:
        original = hard_sigmoids.get(node.name)
        if node.op_type != "Add" or original is None:
            continue
        x_dq, beta_dq = (producer.get(name) for name in node.input)
        if x_dq is None or beta_dq is None or x_dq.op_type != "DequantizeLinear":
            continue
        alpha, _ = _attributes(original)
        scale = numpy_helper.to_array(inits[x_dq.input[1]]) / np.float32(alpha)
        twin = next((n for n in graph.node if n is not x_dq and _reads_at_scale(n, x_dq, scale, inits)), None)
        restored = NodeProto()
        restored.CopyFrom(original)
        del restored.input[:], restored.output[:]
        restored.output.extend(node.output)
        if twin is None:  # the HardSigmoid was x's only reader: its DequantizeLinear at x's scale again
            graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), f"{node.name}_x_scale_restored"))
            inits[graph.initializer[-1].name] = graph.initializer[-1]
            x_dq.input[1] = graph.initializer[-1].name
            # the names gates_as_add gives are free again (x_dq was the Add's alone)
            x_dq.name, x_dq.output[0] = f"{node.name}_x_restored_DequantizeLinear", f"{node.name}_x_restored"
            restored.input.append(x_dq.output[0])
        else:
            removed.add(id(x_dq))
            restored.input.append(twin.output[0])
        removed.add(id(beta_dq))
        replaced[id(node)] = [restored]
    if replaced:
        set_nodes(graph, [n for node in graph.node if id(node) not in removed for n in replaced.get(id(node), [node])])
    return len(replaced)


def _reads_at_scale(node, x_dq, scale: np.ndarray, inits) -> bool:
    """Whether ``node`` dequantizes what ``x_dq`` does (same levels and zero point) at ``scale``."""
    from onnx import numpy_helper

    if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[1] not in inits:
        return False
    same = node.input[0] == x_dq.input[0] and node.input[2] == x_dq.input[2]
    return same and bool(np.isclose(numpy_helper.to_array(inits[node.input[1]]), scale, rtol=1e-6, atol=0))


def _attributes(node) -> tuple[float, float]:
    """HardSigmoid's (alpha, beta), with ONNX's defaults."""
    values = {a.name: a.f for a in node.attribute}
    return values.get("alpha", 0.2), values.get("beta", 0.5)


def _params(node, inits):
    """A Q/DQ node's (scale, zero point) when both are 8-bit per-tensor initializers, else None."""
    from onnx import numpy_helper

    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    scale, zero = (numpy_helper.to_array(inits[name]) for name in node.input[1:3])
    if scale.size != 1 or zero.size != 1 or zero.dtype not in _LEVELS:
        return None
    return scale.reshape(()).astype(np.float32), zero.reshape(())


def _without_unread_dequantize(nodes: list, outputs: set[str]) -> list:
    """``nodes`` without the DequantizeLinear nodes that nothing reads any more."""
    read = {name for n in nodes for name in n.input} | outputs
    return [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in read]
