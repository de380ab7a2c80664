"""The report.html section of a sensitivity sweep measured on the device (``qbench sensitivity``,
``qbench fix``): per block, the output PSNR when only it is int8 and the gain when only it is float,
and, after a fix, the Pareto table of the configurations it measured."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go

from qbench.host.report.figures import DROP_COLOUR, FLOAT_COLOUR
from qbench.host.report.page import esc, figure_html, num_cell, table

DEFINITION = (
    "Each block is a run of consecutive ops of the int8 model, in topological order; it owns the activation "
    "tensors its ops write. 'only int8' is the output PSNR with only this block quantized and every other block "
    "in float: the loss it causes alone (lower is worse). 'gain' is the output PSNR with only this block in "
    "float, every other block int8, minus the all-int8 output PSNR. Every figure is a trial model measured by "
    "its outputs on the device. An empty bar is an exact output.")


def section(report: Mapping[str, Any]) -> str:
    """The chart and table of ``report["sensitivity"]`` and the fix's Pareto table; empty without them."""
    sens = report.get("sensitivity")
    fix = report.get("fix") or {}
    parts = []
    if sens and sens.get("blocks"):
        parts += ["<h2>Sensitivity measured on the device</h2>", figure_html(_chart(sens["blocks"]), height=460),
                  f'<p class="muted">{esc(DEFINITION)}</p>', _table(sens["blocks"])]
        found = sens.get("bisect")
        if found:
            parts.append(f'<p>Bisection ({esc(found["direction"])}): {esc(found["ops_float"])} of '
                         f'{esc(found["ops_total"])} ops in float reach {esc(found["target_psnr_db"])} dB.</p>')
    if fix.get("pareto"):
        parts += ["<h2>Fix: configurations measured on the device</h2>", _pareto(fix)]
    return "\n".join(parts)


def _chart(rows: list[Mapping[str, Any]]) -> go.Figure:
    x = [f"{r['block']}: {r['first_op']}" for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=[r["only_int8_psnr_db"] for r in rows], name="only this block int8: output PSNR dB",
                         marker_color=DROP_COLOUR))
    fig.add_trace(go.Bar(x=x, y=[r["gain_db"] for r in rows], name="only this block float: gain dB",
                         marker_color=FLOAT_COLOUR))
    fig.update_layout(barmode="group", title="Sensitivity per block", xaxis_title="block (topological order)",
                      yaxis_title="dB", hovermode="x unified")
    return fig


def _table(rows: list[Mapping[str, Any]]) -> str:
    def figure(r: Mapping[str, Any], name: str) -> tuple:
        return ("non-finite", "-1e9", "num") if name in r.get("nonfinite", ()) else num_cell(r[f"{name}_psnr_db"])

    body = [(r["block"], r["ops"], r["label"], figure(r, "only_int8"), r.get("only_int8_verdict") or "",
             figure(r, "only_int16"), figure(r, "keep_float"), num_cell(r["gain_db"])) for r in rows]
    return table(("block", "ops", "first .. last op", "only int8 dB", "only int8 verdict", "only int16 dB",
                  "keep float dB", "gain dB"), body, sortable=True)


def _pareto(fix: Mapping[str, Any]) -> str:
    chosen = (fix.get("chosen") or {}).get("model")
    body = [(r["family"], r["blocks_moved"], "exact" if r["exact"] else num_cell(r["output_psnr_db"]),
             num_cell(r["predicted_psnr_db"]), num_cell(r.get("top1_agreement"), 3), r.get("verdict") or "",
             num_cell(100 * r["int8_share"], 0, "%"),
             num_cell(r["latency_int8_ms"], 3), ("Pareto" if r["pareto"] else "") + (" · chosen" if r["model"] == chosen
                                                                                     else ""))
            for r in fix["pareto"]]
    return table(("family", "blocks moved", "output PSNR dB", "predicted dB", "top-1", "verdict", "int8 share",
                  "int8 ms", ""),
                 body, sortable=True)
