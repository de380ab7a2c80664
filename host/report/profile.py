"""report.json ``profile``: the per-op kernel times the agent measured for each model.

``families`` sets the two models' kernel times side by side by what each kernel computes
(:func:`op_family`): an int8 ``QLinearConv`` and a float ``FusedConv`` are both ``Conv``, every
QuantizeLinear/DequantizeLinear is ``quantize/dequantize``, and the transposes and NCHWc reorders
that ONNX Runtime inserts around layout-changed kernels are ``layout``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from qbench.protocols.messages import BenchmarkReply


def profile_section(profile_runs: int, benchmarks: Mapping[str, BenchmarkReply]) -> Optional[dict[str, Any]]:
    """``{"float": [...], "int8": [...], "runs": N}`` plus ``notes`` {model: why empty}; None when not asked.

    Each entry: ``op_type``, ``provider``, ``total_ms`` (over the ``runs`` profiled runs),
    ``calls``, ``mean_ms`` (per run) and ``share`` (of the model's summed kernel time).
    """
    if profile_runs <= 0 or not benchmarks:
        return None
    section: dict[str, Any] = {kind: list(reply.profile) for kind, reply in benchmarks.items()}
    section["runs"] = profile_runs
    notes = {kind: reply.profile_note for kind, reply in benchmarks.items() if reply.profile_note}
    if notes:
        section["notes"] = notes
    if section.get("float") and section.get("int8"):
        section["families"] = families(section["float"], section["int8"])
    return section


QUANTIZE_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
#: a control-flow node's time holds its bodies' kernels, which the profile lists on their own
CONTROL_FLOW_OPS = {"If", "Loop", "Scan"}
LAYOUT_OPS = {"Transpose", "ReorderInput", "ReorderOutput"}
# prefixes and suffixes of ONNX Runtime's fused, layout-changed and quantized kernels of one computation
_AFFIXES = re.compile(r"^(?:QLinear|Nhwc|Fused|Q(?=[A-Z][a-z]))+|(?:Integer(?:ToFloat)?)$")


def op_family(op_type: str) -> str:
    """What a kernel computes, whatever its precision and layout: ``QLinearConv``, ``NhwcQLinearConv``,
    ``FusedConv``, ``ConvInteger`` -> ``Conv``; ``QGemm`` -> ``Gemm``; ``NhwcMaxPool`` -> ``MaxPool``."""
    if op_type in QUANTIZE_OPS:
        return "quantize/dequantize"
    if op_type in LAYOUT_OPS:
        return "layout"
    return _AFFIXES.sub("", op_type) or op_type


def families(float_ops: list[Mapping[str, Any]], int8_ops: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{family, float_ms, int8_ms}]``: kernel time per inference, the sum over the family's op types of each
    one's ``median_ms`` over the profiled runs (``mean_ms`` from an agent older than protocol 2.2), the most
    int8 time added first. Control-flow nodes (:data:`CONTROL_FLOW_OPS`) are left out: their bodies' kernels count."""
    totals: dict[str, dict[str, float]] = {}
    for kind, ops in (("float_ms", float_ops), ("int8_ms", int8_ops)):
        for op in ops:
            if op["op_type"] in CONTROL_FLOW_OPS:
                continue
            entry = totals.setdefault(op_family(op["op_type"]), {"float_ms": 0.0, "int8_ms": 0.0})
            per_run = op.get("median_ms")
            entry[kind] += float(op.get("mean_ms") or 0.0) if per_run is None else float(per_run)
    rows = [{"family": name, "float_ms": round(t["float_ms"], 4), "int8_ms": round(t["int8_ms"], 4)}
            for name, t in totals.items()]
    return sorted(rows, key=lambda r: (-(r["int8_ms"] - r["float_ms"]), r["family"]))
