"""What the terminal and the top of report.html say when the capture did not see the deployed int8 graph as it is.

Each line names one departure and what it means for the figures below it. No line: the per-layer
figures are those of the graph the runtime deploys, captured in the passes the budget planned.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

#: the agent's ``fidelity_max_abs_diff`` for a NaN or infinity on one side only (JSON has no infinity)
NONFINITE_DIFF = sys.float_info.max


def capture_warnings(report: Mapping[str, Any]) -> list[str]:
    """One sentence per departure of ``report["capture"]``; empty when there is none."""
    cap = report.get("capture") or {}
    lines = []
    diff = cap.get("fidelity_max_abs_diff")
    if diff and diff >= NONFINITE_DIFF:
        lines.append("capture fidelity non-finite: an int8 model output of the capture holds NaN or infinity where "
                     "the deployed int8 model's does not (or the other way round), so the layer figures are of a "
                     "graph that computes other values than the deployed one.")
    elif diff:
        lines.append(f"capture fidelity {diff:g}: the int8 model outputs of the capture differ from the deployed "
                     "int8 model's by up to that much (max abs), so the layer figures are of a graph that computes "
                     "other values than the deployed one.")
    altered = cap.get("layers_graph_altered")
    if altered:
        lines.append(f"{altered} layer(s) graph-altered: exposing their tensors changed the runtime's fusions, so "
                     "their figures were captured in a pass whose int8 outputs differ from the deployed model's.")
    fused = cap.get("layers_fused")
    if fused:
        lines.append(f"{fused} layer(s) fused: the deployed graph computes them inside a fused kernel and never "
                     "writes them (their status names the kernel), so they have no figures; the layers around "
                     "them do.")
    passes, planned = cap.get("passes"), cap.get("passes_planned")
    if passes and planned and passes > planned:
        lines.append(f"{passes} capture passes where the memory budget planned {planned}: the capture split its "
                     "groups until each pass reproduced the deployed outputs, which costs time, not accuracy.")
    if cap.get("source_note"):
        lines.append(f"int8 tensors read from the model, not from the deployed graph ({cap['source_note']}): "
                     "exposing them can change the runtime's fusions.")
    return lines
