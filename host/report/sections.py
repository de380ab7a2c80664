"""The report.html sections drawn from the device's profiler and from value histograms."""

from __future__ import annotations

from typing import Any, Mapping

from qbench.host.report import figures, histograms
from qbench.host.report.page import esc, figure_html, note, num_cell, table

PROFILE_OFF = ("Per-operator profiling was not collected for this run (it is on by default; "
               "`--profile-runs 0` turns it off).")
HISTOGRAMS_OFF = "Histograms were not collected for this run."


def op_profile(report: Mapping[str, Any]) -> str:
    """Kernel time per op type, float vs int8: chart, definition, table; or why there is none."""
    profile = report.get("profile") or {}
    notes = profile.get("notes") or {}
    why = "".join(f"<li>{esc(model)}: {esc(text)}</li>" for model, text in notes.items())
    fig = figures.op_breakdown(profile)
    if fig is None:
        return note(PROFILE_OFF) if not why else f'<div class="note">No per-operator profile.<ul>{why}</ul></div>'
    runs = int(profile.get("runs") or 1)
    definition = (
        f"A bar is one op type's kernel time per inference: the sum of its kernel times over {runs} profiled "
        "runs, divided by the runs, the first run dropped (ONNX Runtime: profiler events of category Node whose "
        "name ends in _kernel_time, grouped by op_name and provider). The profiled runs come from a second "
        "session: profiling adds overhead to each kernel, so the sum per run can exceed the latency above; "
        "compare op types and models with each other, not with the latency.")
    parts = [figure_html(fig), f'<p class="muted">{esc(definition)}</p>']
    if why:
        parts.append(f'<div class="note">Not profiled:<ul>{why}</ul></div>')
    parts.append(_op_table(profile, runs))
    return "\n".join(parts)


def _op_table(profile: Mapping[str, Any], runs: int) -> str:
    totals = {model: figures.op_totals(profile.get(model) or []) for model in ("float", "int8")}
    ops = sorted({op for model in totals.values() for op in model},
                 key=lambda op: -max(totals[m].get(op, {"mean_ms": 0.0})["mean_ms"] for m in totals))
    rows = []
    for op in ops:
        f, q = totals["float"].get(op), totals["int8"].get(op)
        providers = sorted({p for slot in (f, q) if slot for p in slot["providers"]})
        rows.append((op, ", ".join(providers),
                     *(num_cell(slot["mean_ms"] if slot else None, 4) for slot in (f, q)),
                     *(num_cell(100 * slot["share"] if slot else None, 1) for slot in (f, q)),
                     *(num_cell(slot["calls"] / runs if slot else None, 0) for slot in (f, q))))
    return table(("op type", "provider", "float ms/run", "int8 ms/run", "float %", "int8 %", "float calls/run",
                  "int8 calls/run"), rows, sortable=True, wrap=True)


def value_histograms(report: Mapping[str, Any]) -> str:
    """Float vs int8 histograms of the worst layers' activations and weights, with their clipped counts."""
    rows, missing = histograms.panels(report)
    fig = histograms.figure(rows)
    if fig is None:
        return note(HISTOGRAMS_OFF)
    parts = [figure_html(fig)]
    parts.append(table(("layer", "tensor", "name", "float values outside the int8 range"),
                       histograms.clipped_rows(rows)))
    if missing:
        parts.append(f'<p class="muted">No histogram for: {esc(", ".join(missing))}</p>')
    return "\n".join(parts)
