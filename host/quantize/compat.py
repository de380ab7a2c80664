"""Keeps ONNX files loadable by the installed ONNX Runtime and reportable layer by layer.

onnx writes the newest IR version it knows (1.23 writes IR 14) while onnxruntime 1.31 loads up to
IR 13, real exporters leave nodes unnamed although layers are reported by node name, and
onnxruntime's quantizer names the copies of a shared bias into tensor names the graph already has and
fails on a Gemm's 2-D bias.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from qbench.host.errors import UserError


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """The highest ONNX IR version the installed onnxruntime accepts, found by loading a tiny model.

    onnxruntime exposes no such constant; probing is a few milliseconds per IR version and is cached.
    """
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"], name="probe")
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the probe's rejections are expected, not worth a log line
    for ir_version in range(onnx.IR_VERSION, 3, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir_version)
        try:
            onnxruntime.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception:  # noqa: BLE001 - any rejection means "not this IR version"
            continue
        return ir_version
    raise RuntimeError("onnxruntime loads none of the IR versions onnx knows")


def clamp_ir_version(model, name: str) -> Optional[str]:
    """Lowers ``model.ir_version`` to what onnxruntime loads, when the model's opsets allow it.

    Args:
        model: an ``onnx.ModelProto``, changed in place.
        name: the model's file name, for messages.

    Returns:
        A note for the user when the version was lowered, else None.

    Raises:
        UserError: the model's opsets need a newer IR version than onnxruntime loads.
    """
    import onnx
    import onnxruntime

    limit = ort_max_ir_version()
    if model.ir_version <= limit:
        return None
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if needed > limit:
        raise UserError(
            f"{name}: its opsets need ONNX IR version {needed}, but onnxruntime {onnxruntime.__version__} "
            f"loads up to IR {limit}; upgrade onnxruntime"
        )
    old = model.ir_version
    model.ir_version = limit
    return f"IR version {old} lowered to {model.ir_version} so onnxruntime {onnxruntime.__version__} loads it"


def name_nodes(graph) -> int:
    """Gives every node without a name (or with a duplicate one) a unique, deterministic name.

    Names are ``{op_type}_{index}`` with the node's index in its graph, suffixed when that name is
    taken. Subgraphs (If/Loop/Scan bodies) are named too, with their own indices.

    Args:
        graph: an ``onnx.GraphProto``, changed in place.

    Returns:
        How many nodes were (re)named, subgraphs included.
    """
    from onnx import AttributeProto

    taken = {node.name for node in graph.node if node.name}
    seen: set[str] = set()
    renamed = 0
    for index, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            base = f"{node.op_type}_{index}"
            candidate, suffix = base, 1
            while candidate in taken or candidate in seen:
                candidate, suffix = f"{base}_{suffix}", suffix + 1
            node.name = candidate
            renamed += 1
        seen.add(node.name)
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                renamed += name_nodes(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                renamed += sum(name_nodes(g) for g in attribute.graphs)
    return renamed


def unshare_biases(graph) -> int:
    """Gives every Conv/ConvTranspose/Gemm that shares its bias initializer with another node a copy of its own.

    A bias's int32 scale is its node's input scale times its weight scale, so onnxruntime's QDQ
    quantizer copies a shared bias per node, naming the copy ``{bias}{n}`` after the initializers
    only. When another tensor already has that name, the int8 model does not load: basic-pitch's
    CQT convolutions share one bias ``.../conv1d_25`` beside a conv output ``.../conv1d_252``. The
    copies made here take names no tensor of the graph has. Returns how many copies were made.
    """
    initializers = {t.name: t for t in graph.initializer}
    taken = set(initializers) | {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output)}
    seen: set[str] = set()
    copies = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3:
            continue
        bias = node.input[2]
        if bias not in initializers:
            continue
        if bias not in seen:
            seen.add(bias)
            continue
        node.input[2] = _copy(graph, initializers[bias], f"{bias}_bias", taken).name
        copies += 1
    return copies


def _copy(graph, tensor, stem: str, taken: set[str]):
    """A copy of initializer ``tensor`` added to ``graph`` under ``{stem}{n}``, the first such name not in ``taken``."""
    suffix = 1
    while f"{stem}{suffix}" in taken:
        suffix += 1
    copy = type(tensor)()
    copy.CopyFrom(tensor)
    copy.name = f"{stem}{suffix}"
    taken.add(copy.name)
    graph.initializer.append(copy)
    return copy


def flatten_gemm_biases(graph) -> int:
    """Writes every Gemm bias initializer of shape ``[1, N]`` as ``[N]``, the same broadcast; returns how many.

    onnxruntime's quantizer checks a per-channel bias's int32 range channel by channel with ``bias[i]``,
    which is a row of a 2-D bias: magika's final Gemm (bias ``[1, 214]``) stopped the quantization with
    "The truth value of an array with more than one element is ambiguous". A bias that other nodes read
    too gets a reshaped copy of its own.
    """
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    taken = set(initializers) | set(readers) | {name for node in graph.node for name in node.output}
    flattened = 0
    for node in graph.node:
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        tensor = initializers.get(bias)
        if tensor is None or len(tensor.dims) != 2 or tensor.dims[0] != 1:
            continue
        if readers[bias] > 1:
            tensor = _copy(graph, tensor, f"{bias}_flat", taken)
            node.input[2] = tensor.name
        tensor.dims[:] = [tensor.dims[1]]
        flattened += 1
    return flattened


def load_error(model) -> Optional[str]:
    """Why onnxruntime refuses a model (a path or an ``onnx.ModelProto``), or None if it loads it.

    The session is built with onnxruntime's default (full) graph optimizations, as the model will be
    deployed: some models only fail once shapes are propagated through their subgraphs.
    """
    import onnxruntime

    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    try:
        onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        return first_line(exc)
    return None


def check_loads(path: Path, what: str) -> None:
    """Fails here, clearly, on a model onnxruntime cannot load (see :func:`load_error`).

    Raises:
        UserError: onnxruntime refuses the model.
    """
    error = load_error(path)
    if error:
        raise UserError(f"{what}: onnxruntime cannot load it: {error}")


def first_line(exc: BaseException) -> str:
    """The exception's type and the first non-empty line of its message (which can be pages long)."""
    for line in str(exc).splitlines():
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()}"
    return type(exc).__name__
