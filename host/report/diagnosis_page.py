"""The report.html diagnosis section: ranked sensitive layers, worst weights, equalized channel ranges."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import plotly.graph_objects as go

from qbench.host.compare.weights import worst_psnr_db

from qbench.host.report.figures import FLOAT_COLOUR, INT8_COLOUR
from qbench.host.report.page import figure_html, note, num_cell, table

MAX_ROWS = 20
MAX_EQUALIZED = 6  # conv pairs drawn; report.json has them all


def section(report: Mapping[str, Any]) -> str:
    """Sensitive layers with their reasons, the worst weight tensors, and equalization when it ran."""
    parts = [_sensitive(report.get("sensitive_layers")), _weights(report.get("weights"))]
    equalization = report.get("equalization")
    if equalization:
        fig = equalized_ranges(equalization)
        parts.append(figure_html(fig) if fig is not None else note("Equalization changed no conv pair."))
    return "\n".join(parts)


def _sensitive(ranked: Optional[Sequence[Mapping[str, Any]]]) -> str:
    if not ranked:
        return note("No sensitive layers: no layer adds error of its own (see the Diagnosis section of the README).")
    rows = [(x["name"], x.get("op_type") or "", num_cell(x.get("psnr_db")), num_cell(x.get("sqnr_db")),
             num_cell(x.get("score")), "; ".join(x.get("reasons") or [])) for x in ranked[:MAX_ROWS]]
    caption = (f'<p class="muted">{len(ranked)} layers, worst first; score (dB) = SQNR drop below the inputs\' + '
               "shortfall of local SQNR under 35 dB (where its own rounding is the larger noise) and of the worst "
               "live weight channel under 40 dB (+3 for softmax and squeeze-and-excite gates); 0 when the layer's "
               "SQNR is less than 1 dB below its inputs'.</p>")
    return caption + table(("layer", "op", "cumulative PSNR dB", "cumulative SQNR dB", "score", "why"), rows,
                           sortable=True, wrap=True)


def _weights(weights: Optional[Sequence[Mapping[str, Any]]]) -> str:
    if not weights:
        return ""
    ranked = sorted(weights, key=lambda w: (worst_psnr_db(w) is None, worst_psnr_db(w) or 0.0))[:MAX_ROWS]
    rows = [(str(w.get("name")), w.get("layer") or "", num_cell(w.get("psnr_db")), num_cell(worst_psnr_db(w)),
             str(w.get("worst_channel", ""))) for w in ranked]
    return table(("weight", "layer", "weight PSNR dB", "worst channel dB", "worst channel"), rows, sortable=True)


def equalized_ranges(equalization: Mapping[str, Any]) -> Optional[go.Figure]:
    """max|w| per output channel of each equalized conv, before and after (log scale)."""
    before, after = equalization.get("channel_ranges_before") or {}, equalization.get("channel_ranges_after") or {}
    convs = [c for c in before if c in after][:MAX_EQUALIZED]
    if not convs:
        return None
    fig = go.Figure()
    for conv in convs:
        for label, ranges, colour, dash in (("before", before[conv], FLOAT_COLOUR, "dot"),
                                            ("after", after[conv], INT8_COLOUR, "solid")):
            fig.add_trace(go.Scatter(
                x=list(range(len(ranges))), y=ranges, mode="lines+markers", name=f"{conv} {label}",
                legendgroup=conv, line=dict(color=colour, dash=dash), marker=dict(size=4),
                hovertemplate=f"{conv} {label}<br>channel %{{x}}: max|w| %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title="Cross-layer equalization: weight range per output channel",
                      xaxis_title="output channel", yaxis_title="max |w|", yaxis_type="log")
    return fig
