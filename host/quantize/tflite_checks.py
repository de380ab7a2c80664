"""Checks that LiteRT can load (and run) a TFLite model, with one-line reasons when it cannot.

Used around ai-edge-quantizer (:mod:`.tflite`): the float model must load before it is quantized,
and the int8 model it makes is loaded and run once before anything is uploaded, so that a model
the device would refuse fails on the host, with the op and its kernel's reason named.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from qbench.host.errors import UserError
from qbench.host.quantize.tflite_rewrite import text

#: LiteRT's message when an op's kernel refuses it at prepare or invoke time
_NODE = re.compile(r"Node number (\d+) \((\w+)\) failed to (prepare|invoke)")


def first_line(exc: BaseException) -> str:
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def check_float_loads(model: bytes, name: str, custom: list[str]) -> None:
    """Refuses a float model that LiteRT (with its default delegate, XNNPACK) cannot load.

    Custom ops other than the rewritten ones are left in float by the quantizer; XNNPACK runs some
    of MediaPipe's (MaxPoolingWithArgmax2D, MaxUnpooling2D), plain LiteRT none.
    """
    if not custom:
        return
    from ai_edge_litert import interpreter as tfl

    try:
        tfl.Interpreter(model_content=model).allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise UserError(
            f"{name} cannot run on LiteRT: no kernel for its custom op(s) {', '.join(custom)}, and no builtin op "
            f"replaces them (they need their own runtime, such as MediaPipe's): {first_line(exc)}"
        ) from exc


def check_scales(model: bytes, name: str, path: Path) -> None:
    """Refuses scales that are not finite and positive (from NaN or inf weights): LiteRT aborts the
    process loading them (SIGABRT in allocate_tensors), so they are caught before it loads the model."""
    from ai_edge_litert import schema_py_generated as fb

    sg = fb.Model.GetRootAs(model, 0).Subgraphs(0)
    for i in range(sg.TensorsLength()):
        tensor = sg.Tensors(i)
        q = tensor.Quantization()
        scales = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else None
        if scales is not None and not np.all(np.isfinite(scales) & (scales > 0)):
            raise UserError(f"ai-edge-quantizer made a model of {name} ({path}) that LiteRT cannot load: tensor "
                            f"{text(tensor.Name())!r} has scale {scales[~(np.isfinite(scales) & (scales > 0))][0]} "
                            "(NaN or inf in the float model's values)")


def check_loads(model: bytes, name: str, path: Path, sample: Mapping[str, np.ndarray], xnnpack: bool) -> None:
    """Loads and runs the int8 model once in plain LiteRT (with XNNPACK if its custom ops need it),
    so that a model it refuses fails here rather than on the device; the failing op is named with
    its output tensor and the kernel's reason."""
    from ai_edge_litert import interpreter as tfl

    resolver = tfl.OpResolverType.AUTO if xnnpack else tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = tfl.Interpreter(model_content=model, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], _as_input(sample[detail["name"]], detail))
        interpreter.invoke()
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"LiteRT cannot load the int8 model ai-edge-quantizer made of {name} ({path}): "
                        f"{_load_failure(model, str(exc))}") from exc


def _as_input(value: np.ndarray, detail: dict) -> np.ndarray:
    """A float sample as the input takes it: quantized with its scale and zero point if it is an integer one."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind == "f" or not scale:
        return np.asarray(value, dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(np.asarray(value) / scale) + zero, info.min, info.max).astype(dtype)


def _load_failure(model: bytes, message: str) -> str:
    """LiteRT's load error as one line: the op (index, type, output tensor) and the kernel's reason."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    reason = lines[0] if lines else "no reason given"
    node = _NODE.search(message)
    if node is None:
        return reason
    from ai_edge_litert import schema_py_generated as fb

    index, op_type, stage = node.groups()
    # the node number may be glued to the reason ("... (-128 != 0)Node number 7 ..."): keep the reason only
    reason = message[:node.start()].strip().splitlines()[0] if message[:node.start()].strip() else reason
    sg = fb.Model.GetRootAs(model, 0).Subgraphs(0)
    op = sg.Operators(int(index)) if int(index) < sg.OperatorsLength() else None
    out = text(sg.Tensors(op.Outputs(0)).Name()) if op is not None and op.OutputsLength() else "?"
    return f"op {index} {op_type} (writes {out!r}) fails to {stage}: {reason}"
