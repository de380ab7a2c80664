"""Which convolutions and matrix products of a QDQ int8 model ONNX Runtime runs as int8 kernels.

A QDQ model only marks what may run in int8: ONNX Runtime's graph optimizer fuses each
DequantizeLinear -> Conv -> QuantizeLinear group it accepts into ``QLinearConv`` (likewise
MatMul, Gemm), and leaves the others as a float kernel between DequantizeLinear and
QuantizeLinear. :func:`int8_kernels` loads the model with the host's ONNX Runtime, reads the graph
that it saves after optimization, and says for every convolution and matrix product which kernel
runs it, its multiply-accumulates (from the shapes) and, for those left in float, why. Those in the
bodies of If, Loop and Scan nodes are float (the quantizer leaves bodies alone), with no MACs figure:
how often a body runs is decided at run time (SLANet's decoder Loop: up to 501 steps).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

#: the ops of a QDQ model that ONNX Runtime may run as int8 kernels
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
#: kernel op types (as ONNX Runtime's profiler and optimized graph name them) that compute in float
FLOAT_KERNELS = frozenset({"Conv", "ConvTranspose", "FusedConv", "NhwcFusedConv", "MatMul", "Gemm", "FusedMatMul",
                           "FusedGemm", "TransposeMatMul"})
#: kernel op types that compute in 8-bit integers
INT8_KERNELS = frozenset({"QLinearConv", "NhwcQLinearConv", "QLinearConvTranspose", "QLinearMatMul", "QGemm",
                          "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"})
#: ops already in int8 in the file (a model quantized in QOperator or dynamic form), by their weight's input index
INT8_OPS = {"QLinearConv": 3, "QLinearMatMul": 3, "ConvInteger": 1, "MatMulInteger": 1}
_CONV_LIKE = ("Conv", "QLinearConv", "ConvInteger")
_8BIT = {2: "uint8", 3: "int8"}  # TensorProto element types


def int8_kernels(int8_path: Union[str, Path]) -> dict[str, Any]:
    """The int8 kernel coverage of a QDQ model as the host's ONNX Runtime optimizes it (CPU provider).

    Returns:
        ``{"nodes": [...], "macs_int8", "macs_total", "fraction", "runtime"}``. Each node:
        ``name``, ``op_type``, ``macs`` (None when a shape is unknown), ``kernel`` (the optimized
        graph's op type that runs it) and ``int8``; float ones add ``reason``. ``fraction`` =
        macs_int8 / macs_total over nodes of known MACs (None when there are none).
    """
    import onnx
    import onnxruntime

    model = onnx.load(str(int8_path))
    shapes = _shapes(model)
    kernels = _optimized_kernels(Path(int8_path))
    consumers: dict[str, list] = {}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes = []
    for node in model.graph.node:
        if (node.op_type not in COMPUTE_OPS and node.op_type not in INT8_OPS) or node.domain not in ("", "ai.onnx"):
            continue
        kernel = node.op_type if node.op_type in INT8_OPS else _kernel_of(node, consumers, kernels)
        entry: dict[str, Any] = {"name": node.name, "op_type": node.op_type, "macs": _macs(node, shapes),
                                 "kernel": kernel, "int8": kernel in INT8_KERNELS}
        if not entry["int8"]:
            entry["reason"] = _why_float(node, producers, consumers, model)
        nodes.append(entry)
    nodes += [{"name": node.name, "op_type": node.op_type, "macs": None, "kernel": node.op_type, "int8": False,
               "reason": f"inside the body of {owner.op_type} {owner.name}, which ONNX Runtime's quantizer leaves "
                         "in float"} for owner, node in _body_nodes(model.graph) if node.op_type in COMPUTE_OPS]
    known = [n for n in nodes if n["macs"] is not None]
    total = sum(n["macs"] for n in known)
    int8 = sum(n["macs"] for n in known if n["int8"])
    return {"nodes": nodes, "macs_int8": int8, "macs_total": total, "fraction": int8 / total if total else None,
            "runtime": f"onnxruntime {onnxruntime.__version__} (host, CPUExecutionProvider)"}


def _body_nodes(graph, owner=None):
    """(the top-level control-flow node, node) for every node in the graph attributes of ``graph``'s nodes."""
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                for inner in body.node:
                    yield owner or node, inner
                yield from _body_nodes(body, owner or node)


def _optimized_kernels(path: Path) -> dict[str, str]:
    """Output tensor name, and node name, -> op type of the node, in the graph ONNX Runtime optimizes.

    Extended optimizations (the QDQ fusions) without the layout ones, which rename nodes. A fused
    node keeps the name of the node it replaces; its output may be renamed (the x86 int8 -> uint8
    rewrite renames every converted QuantizeLinear output).
    """
    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="qbench-kernels-") as tmp:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # errors only; no process-wide redirection: this runs in a target's thread
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    kernels = {f"node:{node.name}": node.op_type for node in optimized.graph.node if node.name}
    kernels.update({out: node.op_type for node in optimized.graph.node for out in node.output})
    return kernels


def _kernel_of(node, consumers, kernels: dict[str, str]) -> str:
    """The kernel that runs ``node``: the one computing its output, else its QuantizeLinear's (fused),
    else the optimized node of its name."""
    output = node.output[0]
    if output in kernels:
        return kernels[output]
    for reader in consumers.get(output, []):
        if reader.op_type == "QuantizeLinear" and reader.output[0] in kernels:
            return kernels[reader.output[0]]
    return kernels.get(f"node:{node.name}", "fused away")


def _why_float(node, producers, consumers, model) -> str:
    """Why ONNX Runtime's QDQ selectors left ``node`` in float, read from the QDQ pattern around it."""
    if node.op_type == "ConvTranspose":
        return "ONNX Runtime's CPU provider has no int8 ConvTranspose kernel"
    inputs = [producers.get(name) for name in node.input[:2] if name]
    if not all(p is not None and p.op_type == "DequantizeLinear" for p in inputs):
        return "not quantized: an input has no DequantizeLinear (excluded, or left float by the quantizer)"
    readers = consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        kinds = ", ".join(sorted({r.op_type for r in readers})) or "a graph output"
        return f"its output is not quantized: read by {kinds}, not by one QuantizeLinear"
    types = [_zero_point_type(model, inputs[0]), _zero_point_type(model, readers[0])]
    if types[0] != types[1]:
        return f"input and output are of different types ({types[0]}, {types[1]})"
    if types[0] == "int8":
        return ("int8 activations: ONNX Runtime's x86 kernels take them only after converting each pair to uint8, "
                "which it does not do for a tensor with more than one reader")
    return "ONNX Runtime's QDQ fusion did not take this group"


def _zero_point_type(model, node) -> Optional[str]:
    name = node.input[2] if len(node.input) > 2 else ""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return _8BIT.get(tensor.data_type, str(tensor.data_type))
    return None


def _shapes(model) -> dict[str, list[int]]:
    """Static shapes of every tensor ONNX shape inference finds (dims that are not positive ints are dropped)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - then only the shapes already in the model count
        inferred = model
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
        if info.type.tensor_type.HasField("shape") and all(d > 0 for d in dims):
            shapes[info.name] = dims
    return shapes


def _macs(node, shapes: dict[str, list[int]]) -> Optional[int]:
    """Multiply-accumulates of one run of ``node``, from its shapes; None when one is unknown."""
    weight = INT8_OPS.get(node.op_type, 1)
    a = shapes.get(node.input[0])
    w = shapes.get(node.input[weight]) if len(node.input) > weight else None
    out = shapes.get(node.output[0])
    if a is None or w is None or out is None:
        return None
    if node.op_type in _CONV_LIKE:  # every output element sums C/group x kernel products
        return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if node.op_type == "ConvTranspose":  # every input element scatters into M/group x kernel outputs
        return int(np.prod(a, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if node.op_type == "Gemm":
        trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
        return int(np.prod(out, dtype=np.int64) * a[0 if trans_a else -1])
    return int(np.prod(out, dtype=np.int64) * a[-1])  # MatMul and its int8 forms: K = the last dim of A
