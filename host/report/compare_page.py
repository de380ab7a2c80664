"""The parts of compare.html that only `qbench compare` has: its one table and the figures across targets.

Each figure builder returns ``None`` when there is nothing to draw, as in
:mod:`qbench.host.report.figures`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import plotly.graph_objects as go

from qbench.host.report.compare import reference_text, table as compare_table
from qbench.host.report.exports import AMBER, AMBER_BELOW_DB, RED, RED_BELOW_DB
from qbench.host.report import marks
from qbench.host.report.page import breakable, esc, marked, num_cell, table

HEADERS = ("target", "device", "status", "median float", "median int8", "speedup", "peak float", "peak int8",
           "output PSNR dB", "int8 vs reference", "float vs reference", "ran", "worst layers", "gates")


def targets_table(doc: Mapping[str, Any]) -> str:
    """The comparison table, one row per target (the rows of :func:`qbench.host.report.compare.table`)."""
    rows = []
    for row in compare_table(doc):
        failed = row["status"] != "ok"
        status = f"failed: {row.get('error') or 'unknown error'}" if failed else "ok"
        versus = row.get("vs_reference")
        psnr = row.get("output_psnr_db")
        gates = "FAIL: " + "; ".join(row["gates_failed"]) if row.get("gates_failed") else "-"
        device = row["device"]
        where = f"{device['name'] or '-'} ({device['arch'] or '?'}{', emulated' if device['emulated'] else ''})"
        rows.append((
            row["target"], f"{where} {device['runtime'] or ''}".strip(),
            (f'<span class="fail">{esc(status)}</span>' if failed else esc(status), status),
            num_cell(row["latency_ms"]["float"], 3, " ms"), num_cell(row["latency_ms"]["int8"], 3, " ms"),
            marked(num_cell(row.get("speedup"), 2, "\u00d7"), marks.speedup(row.get("speedup"))),
            num_cell(row["peak_mb"]["float"], 1, " MB"), num_cell(row["peak_mb"]["int8"], 1, " MB"),
            ("exact", "1e9", "num") if psnr is None and row.get("outputs_exact") else num_cell(psnr),
            reference_text(versus, "int8") if versus is not None else row.get("outputs_note") or "-",
            reference_text(versus, "float") if versus is not None else "-",
            row.get("ran") or "-", _names_cell(row.get("worst_layers") or []), gates,
        ))
    return table(HEADERS, rows, sortable=True) + divergence_tables(doc)


def _names_cell(names: Sequence[str]) -> tuple:
    text = ", ".join(names) or "-"
    return ", ".join(map(breakable, names)) or "-", text, "name"  # a column wide enough to read long TFLite names in


def divergence_tables(doc: Mapping[str, Any]) -> str:
    """Per target, the layers whose int8-vs-float PSNR differs most from the reference's."""
    parts = []
    for row in compare_table(doc):
        layers = row.get("layers_vs_reference") or []
        if not layers:
            continue
        cells = [(layer["name"], layer.get("op_type") or "-", num_cell(layer.get("reference_psnr_db")),
                  num_cell(layer.get("psnr_db")),
                  num_cell(layer["delta_db"]) if layer["delta_db"] is not None else f"exact on {layer['exact_on']}")
                 for layer in layers]
        parts.append(f"<h3>{esc(row['target'])}: layers that differ most from {esc(doc.get('reference') or '')}</h3>"
                     + table(("layer", "op", "reference PSNR dB", "PSNR dB", "\u0394 dB"), cells, sortable=True))
    return "\n".join(parts)


def cross_table(cross: Sequence[Mapping[str, Any]]) -> str:
    """Every output of every target against the reference's, one row each."""
    if not cross:
        return ""
    rows = []
    for row in cross:
        if row.get("error"):
            verdict = row["error"]
        elif row.get("kind") == "exact":
            verdict = "identical" if row.get("exact") else f"{row.get('mismatches')} mismatches"
        else:
            verdict = "identical" if row.get("exact") else ""
        rows.append((row.get("target"), row.get("model"), row.get("output"), num_cell(row.get("psnr_db")),
                     num_cell(row.get("max_abs_diff"), 4), verdict))
    return table(("target", "model", "output", "PSNR dB vs reference", "max abs diff", ""), rows, sortable=True)


def output_psnr(targets: Sequence[tuple[str, Mapping[str, Any]]]) -> Optional[go.Figure]:
    """Output PSNR (int8 against float on the same target), one bar per target and float output."""
    fig = go.Figure()
    names = dict.fromkeys(o["name"] for _, report in targets for o in report.get("outputs") or []
                          if o.get("kind", "float") == "float" and o.get("psnr_db") is not None)
    for name in names:
        values = [next((o.get("psnr_db") for o in report.get("outputs") or [] if o.get("name") == name), None)
                  for _, report in targets]
        fig.add_trace(go.Bar(x=[label for label, _ in targets], y=values, name=str(name),
                             hovertemplate="%{x}<br>%{y:.2f} dB<extra>" + esc(name) + "</extra>"))
    if not fig.data:
        return None
    _thresholds(fig)
    fig.update_layout(title="Output PSNR (int8 vs float), per target", barmode="group", yaxis_title="PSNR (dB)")
    return fig


def cross_target(cross: Sequence[Mapping[str, Any]]) -> Optional[go.Figure]:
    """Each target's outputs against the reference target's: PSNR per model and output."""
    rows = [row for row in cross if row.get("psnr_db") is not None]
    if not rows:
        return None
    fig = go.Figure()
    for model, output in dict.fromkeys((row["model"], row["output"]) for row in rows):
        picked = [row for row in rows if row["model"] == model and row["output"] == output]
        fig.add_trace(go.Bar(x=[row["target"] for row in picked], y=[row["psnr_db"] for row in picked],
                             name=f"{model} · {output}",
                             hovertemplate="%{x}<br>%{y:.2f} dB<extra>" + esc(f"{model} · {output}") + "</extra>"))
    _thresholds(fig)
    fig.update_layout(title="Outputs against the reference target's (same model, same inputs)", barmode="group",
                      yaxis_title="PSNR (dB)")
    return fig


def _thresholds(fig: go.Figure) -> None:
    fig.add_hline(y=RED_BELOW_DB, line=dict(color=RED, dash="dash", width=1))
    fig.add_hline(y=AMBER_BELOW_DB, line=dict(color=AMBER, dash="dash", width=1))
