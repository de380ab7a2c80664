"""report.json ``int8_coverage``: how much of the int8 model's convolution and matmul work runs in int8 kernels.

The ONNX counterpart of a TFLite delegate's coverage. A QDQ model only marks what may run in
int8; ONNX Runtime fuses what its QDQ selectors accept and runs the rest as float kernels between
DequantizeLinear and QuantizeLinear. The figure is the int8 kernels' share of the convolution
and matmul kernel time in the int8 model's profile on the device, or, when no profile ran, their
share of the multiply-accumulates as the host's ONNX Runtime fuses the model
(:func:`qbench.host.quantize.kernels.int8_kernels`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

from ..quantize.kernels import FLOAT_KERNELS, INT8_KERNELS
from ..run_state import RunState

#: below this share a note names the convolutions and matmuls left in float, and why
LOW = 0.9


def kernel_time_share(profile: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """``{fraction, int8_ms, float_ms, by_op}`` from a profile's entries (op_type, total_ms); None without any."""
    by_op: dict[str, float] = defaultdict(float)
    for entry in profile:
        if entry["op_type"] in INT8_KERNELS or entry["op_type"] in FLOAT_KERNELS:
            by_op[entry["op_type"]] += entry["total_ms"]
    int8_ms = sum(ms for op, ms in by_op.items() if op in INT8_KERNELS)
    float_ms = sum(ms for op, ms in by_op.items() if op in FLOAT_KERNELS)
    if int8_ms + float_ms <= 0:
        return None
    return {"fraction": int8_ms / (int8_ms + float_ms), "int8_ms": int8_ms, "float_ms": float_ms,
            "by_op": dict(sorted(by_op.items(), key=lambda item: -item[1]))}


def coverage_section(state: RunState) -> Optional[dict[str, Any]]:
    """``int8_coverage``: ``fraction`` and its ``basis`` ("kernel time" or "MACs"), ``kernel_time``
    (from the device's profile), ``macs`` ({int8, total, fraction}, as the host's ONNX Runtime fuses
    the model), ``float_nodes`` (name, op_type, macs, kernel, reason) and, below :data:`LOW` or when
    the MACs basis leaves out float ops of unknown MACs (those in control-flow bodies), a ``note``.
    None for TFLite or when neither source is there."""
    kernels = state.int8_kernels.result() if state.int8_kernels is not None else None
    bench = state.benchmarks.get("int8")
    timed = kernel_time_share(bench.profile) if bench is not None and bench.profile else None
    if kernels is None and timed is None:
        return None
    section: dict[str, Any] = {}
    if timed is not None:
        section.update(fraction=timed["fraction"], basis="kernel time", kernel_time=timed)
    if kernels is not None:
        section["macs"] = {"int8": kernels["macs_int8"], "total": kernels["macs_total"],
                           "fraction": kernels["fraction"], "analyzed_by": kernels["runtime"]}
        section["float_nodes"] = [{k: n.get(k) for k in ("name", "op_type", "macs", "kernel", "reason")}
                                  for n in kernels["nodes"] if not n["int8"]]
        if timed is None:
            section.update(fraction=kernels["fraction"], basis="MACs")
    uncounted = section["basis"] == "MACs" and any(n["macs"] is None for n in section.get("float_nodes", []))
    if section.get("fraction") is not None and (section["fraction"] < LOW or uncounted):
        section["note"] = low_coverage_note(section)
    return section


def low_coverage_note(section: dict[str, Any]) -> str:
    """One sentence: the share, and the ops that stayed float grouped by reason (a few names each)."""
    share = f"{section['fraction']:.0%} of convolution/matmul {section['basis']}"
    head = (f"only {share} runs in int8 kernels" if section["fraction"] < LOW
            else f"{share} runs in int8 kernels, counting only the ops whose MACs are known")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for node in section.get("float_nodes", []):
        groups[node["reason"]].append(node)
    if not groups:
        return head + " (the float kernels' nodes are not known: no host analysis)"
    parts = []
    for reason, nodes in sorted(groups.items(), key=lambda item: -sum(n["macs"] or 0 for n in item[1])):
        names = ", ".join(n["name"] for n in nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        parts.append(f"{len(nodes)} {'/'.join(sorted({n['op_type'] for n in nodes}))} ({names}): {reason}")
    return head + "; float: " + "; ".join(parts)


def coverage_line(report: dict[str, Any]) -> Optional[str]:
    """What the terminal says: the share, its basis, and the note when it is low."""
    section = report.get("int8_coverage")
    if not section or section.get("fraction") is None:
        return None
    if section.get("note"):  # it says the share too
        return f"int8 coverage: {section['note']}"
    return f"int8 coverage: {section['fraction']:.0%} of convolution/matmul {section['basis']} in int8 kernels"
