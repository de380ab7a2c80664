"""The plotly figures of the HTML reports, one builder per figure.

Each builder takes report data and returns a figure, or ``None`` when the
report holds nothing to draw, so the page can say so instead.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from qbench.host.report.exports import AMBER, AMBER_BELOW_DB, RED, RED_BELOW_DB

FLOAT_COLOUR, INT8_COLOUR, DROP_COLOUR = "#1f77b4", "#ff7f0e", "#c62828"
MAX_OPS = 25
MAX_HISTOGRAM_LAYERS = 6


def psnr_depth(layers: Sequence[Mapping[str, Any]]) -> Optional[go.Figure]:
    """Cumulative and local PSNR against depth, sudden drops marked."""
    if not any(layer.get("psnr_db") is not None for layer in layers):
        return None
    x = [layer.get("index", i) for i, layer in enumerate(layers)]
    custom = [[layer["name"], layer.get("op_type") or "?"] for layer in layers]
    hover = "%{customdata[0]}<br>%{customdata[1]} · layer %{x}<br>%{y:.2f} dB<extra>%{fullData.name}</extra>"
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[layer.get("psnr_db") for layer in layers], customdata=custom,
                             mode="lines+markers", name="cumulative PSNR", hovertemplate=hover,
                             line=dict(color=FLOAT_COLOUR), marker=dict(size=4)))
    if any(layer.get("local_psnr_db") is not None for layer in layers):
        fig.add_trace(go.Scatter(x=x, y=[layer.get("local_psnr_db") for layer in layers], customdata=custom,
                                 mode="lines+markers", name="local PSNR", hovertemplate=hover,
                                 line=dict(color="#7f7f7f", dash="dot"), marker=dict(size=3)))
    drops = [(xi, layer) for xi, layer in zip(x, layers) if layer.get("drop")]
    if drops:
        fig.add_trace(go.Scatter(
            x=[xi for xi, _ in drops], y=[layer.get("psnr_db") for _, layer in drops],
            customdata=[[layer["name"], layer.get("op_type") or "?", layer.get("drop_db")] for _, layer in drops],
            mode="markers", name="sudden drop", marker=dict(symbol="x", size=12, color=DROP_COLOUR),
            hovertemplate="%{customdata[0]}<br>%{customdata[1]} · layer %{x}<br>%{y:.2f} dB, "
                          "dropped %{customdata[2]:.1f} dB<extra>sudden drop</extra>"))
    fig.add_hline(y=RED_BELOW_DB, line=dict(color=RED, dash="dash", width=1))
    fig.add_hline(y=AMBER_BELOW_DB, line=dict(color=AMBER, dash="dash", width=1))
    fig.update_layout(title="PSNR per layer against depth", xaxis_title="layer (topological order)",
                      yaxis_title="PSNR (dB)", hovermode="closest")
    return fig


def latency(latency_report: Mapping[str, Any]) -> Optional[go.Figure]:
    """Float and int8 latency distributions: box plots and histograms of the raw samples."""
    series = {model: (latency_report.get(model) or {}).get("samples_ms") or [] for model in ("float", "int8")}
    if not any(series.values()):
        return None
    everything = np.concatenate([np.asarray(s, dtype=float) for s in series.values() if s])
    edges, log_bins = _latency_bins(everything)
    log_box = bool(everything.max() > 10 * np.median(everything))
    slower = int((everything > edges[-1]).sum())
    title = "histogram up to p99" + (f" ({slower} slower runs not shown)" if slower else "")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("distribution", title), column_widths=[0.4, 0.6])
    for model, colour in (("float", FLOAT_COLOUR), ("int8", INT8_COLOUR)):
        if not series[model]:
            continue
        fig.add_trace(go.Box(y=series[model], name=model, marker_color=colour, boxpoints="outliers",
                             legendgroup=model), row=1, col=1)
        counts = np.histogram(np.asarray(series[model], dtype=float), edges)[0].tolist()
        # A step line rather than bars: it stays right on a log axis.
        fig.add_trace(go.Scatter(x=edges.tolist(), y=counts + counts[-1:], mode="lines", line_shape="hv",
                                 fill="tozeroy", line=dict(color=colour), name=model, legendgroup=model,
                                 showlegend=False, hovertemplate="from %{x:.4g} ms: %{y} runs<extra>" + model
                                 + "</extra>"), row=1, col=2)
    fig.update_layout(title=dict(text="Latency per inference (steady state)", y=0.98), margin=dict(t=90))
    fig.update_yaxes(title_text="ms" + (" (log scale)" if log_box else ""), type="log" if log_box else None,
                     row=1, col=1)
    fig.update_xaxes(title_text="ms" + (" (log scale)" if log_bins else ""), type="log" if log_bins else None,
                     row=1, col=2)
    fig.update_yaxes(title_text="runs", row=1, col=2)
    return fig


def _latency_bins(samples: np.ndarray, bins: int = 60) -> tuple[np.ndarray, bool]:
    """Histogram edges up to p99, log-spaced when the samples span more than 5x.

    A few slow runs (scheduler hiccups) would otherwise squash everything into one bin.
    """
    lo, hi = float(samples.min()), float(np.percentile(samples, 99))
    if hi <= lo:
        hi = lo * 1.01 + 1e-6
    log_scale = bool(lo > 0 and hi / lo > 5)
    return (np.geomspace(lo, hi, bins + 1) if log_scale else np.linspace(lo, hi, bins + 1)), log_scale


def op_breakdown(profile: Optional[Mapping[str, Any]]) -> Optional[go.Figure]:
    """Time per operator type on the device, float vs int8, from the runtime's profiler."""
    if not profile or not any(profile.get(model) for model in ("float", "int8")):
        return None
    totals: dict[str, dict[str, dict[str, float]]] = {"float": {}, "int8": {}}
    for model in totals:
        for entry in profile.get(model) or []:
            label = f"{entry.get('op_type')} [{entry.get('provider') or '?'}]"
            slot = totals[model].setdefault(label, {"us": 0.0, "count": 0})
            slot["us"] += float(entry.get("total_us") or 0.0)
            slot["count"] += int(entry.get("count") or 0)
    labels = sorted({label for model in totals.values() for label in model},
                    key=lambda lb: max(totals[m].get(lb, {"us": 0.0})["us"] for m in totals))[-MAX_OPS:]
    fig = go.Figure()
    for model, colour in (("float", FLOAT_COLOUR), ("int8", INT8_COLOUR)):
        if not totals[model]:
            continue
        slots = [totals[model].get(label, {"us": 0.0, "count": 0}) for label in labels]
        fig.add_trace(go.Bar(
            y=labels, x=[slot["us"] / 1000.0 for slot in slots], orientation="h", name=model,
            marker_color=colour, customdata=[[slot["count"]] for slot in slots],
            hovertemplate="%{y}<br>%{x:.3f} ms in %{customdata[0]} calls<extra>" + model + "</extra>"))
    fig.update_layout(title="Time per operator type (profiled runs)", barmode="group",
                      xaxis_title="total kernel time (ms)", yaxis=dict(automargin=True))
    return fig


def histograms(histogram_report: Optional[Mapping[str, Any]],
               layer_order: Sequence[str]) -> Optional[go.Figure]:
    """Float vs int8 value histograms (weights and activations) for the worst layers.

    Accepts ``{layer: {float: {edges, counts}, int8: {...}}}`` and, per layer, a
    level more: ``{layer: {"weight": {float, int8}, "activation": {float, int8}}}``.
    """
    panels = []
    for layer in sorted(histogram_report or {}, key=lambda n: layer_order.index(n) if n in layer_order else 1e9):
        entry = histogram_report[layer]
        if "float" in entry or "int8" in entry:
            panels.append((layer, entry))
        else:
            panels.extend((f"{layer} · {kind}", pair) for kind, pair in entry.items() if isinstance(pair, Mapping))
    panels = panels[:MAX_HISTOGRAM_LAYERS * 2]
    if not panels:
        return None
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[title for title, _ in panels],
                        vertical_spacing=min(0.3 / len(panels), 0.08))
    for row, (_, pair) in enumerate(panels, start=1):
        for model, colour in (("float", FLOAT_COLOUR), ("int8", INT8_COLOUR)):
            data = pair.get(model)
            if not data or len(data.get("edges") or []) != len(data.get("counts") or []) + 1:
                continue
            edges = data["edges"]
            fig.add_trace(go.Bar(
                x=[(lo + hi) / 2 for lo, hi in zip(edges, edges[1:])], y=data["counts"],
                width=[hi - lo for lo, hi in zip(edges, edges[1:])], name=model, marker_color=colour,
                opacity=0.55, legendgroup=model, showlegend=row == 1,
                hovertemplate="%{x:.4g}: %{y}<extra>" + model + "</extra>"), row=row, col=1)
    fig.update_layout(title="Value histograms, float vs int8 (worst layers)", barmode="overlay",
                      height=120 + 200 * len(panels))
    return fig


def per_target_psnr(targets: Sequence[tuple[str, Mapping[str, Any]]]) -> Optional[go.Figure]:
    """Cumulative PSNR against depth, one line per target."""
    fig = go.Figure()
    for label, report in targets:
        layers = report.get("layers") or []
        if not any(layer.get("psnr_db") is not None for layer in layers):
            continue
        fig.add_trace(go.Scatter(
            x=[layer.get("index", i) for i, layer in enumerate(layers)], y=[layer.get("psnr_db") for layer in layers],
            customdata=[[layer["name"], layer.get("op_type") or "?"] for layer in layers], mode="lines+markers",
            marker=dict(size=3), name=label,
            hovertemplate="%{customdata[0]}<br>%{customdata[1]} · layer %{x}<br>%{y:.2f} dB<extra>" + label
                          + "</extra>"))
    if not fig.data:
        return None
    fig.add_hline(y=RED_BELOW_DB, line=dict(color=RED, dash="dash", width=1))
    fig.add_hline(y=AMBER_BELOW_DB, line=dict(color=AMBER, dash="dash", width=1))
    fig.update_layout(title="PSNR per layer against depth, per target", xaxis_title="layer (topological order)",
                      yaxis_title="PSNR (dB)")
    return fig


def per_target_latency(targets: Sequence[tuple[str, Mapping[str, Any]]]) -> Optional[go.Figure]:
    """Float and int8 latency distributions side by side for each target."""
    fig = go.Figure()
    for model, colour in (("float", FLOAT_COLOUR), ("int8", INT8_COLOUR)):
        xs, ys = [], []
        for label, report in targets:
            samples = ((report.get("latency") or {}).get(model) or {}).get("samples_ms") or []
            xs += [label] * len(samples)
            ys += list(samples)
        if ys:
            fig.add_trace(go.Box(x=xs, y=ys, name=model, marker_color=colour, boxpoints="outliers"))
    if not fig.data:
        return None
    fig.update_layout(title="Latency per inference, per target", boxmode="group", yaxis_title="ms")
    return fig


def per_target_memory(targets: Sequence[tuple[str, Mapping[str, Any]]]) -> Optional[go.Figure]:
    """Peak resident memory of the float and int8 workers, per target."""
    fig = go.Figure()
    labels = [label for label, _ in targets]
    for model, colour in (("float", FLOAT_COLOUR), ("int8", INT8_COLOUR)):
        values = [((report.get("memory") or {}).get(model) or {}).get("peak_mb") for _, report in targets]
        if any(v is not None for v in values):
            fig.add_trace(go.Bar(x=labels, y=values, name=model, marker_color=colour))
    if not fig.data:
        return None
    fig.update_layout(title="Peak memory, per target", barmode="group", yaxis_title="MB")
    return fig


def per_target_ops(targets: Sequence[tuple[str, Mapping[str, Any]]]) -> Optional[go.Figure]:
    """int8 time per operator type, one bar group per target."""
    per_target = {}
    for label, report in targets:
        totals: dict[str, float] = {}
        for entry in (report.get("profile") or {}).get("int8") or []:
            totals[entry.get("op_type") or "?"] = totals.get(entry.get("op_type") or "?", 0.0) + float(
                entry.get("total_us") or 0.0)
        if totals:
            per_target[label] = totals
    if not per_target:
        return None
    ops = sorted({op for totals in per_target.values() for op in totals},
                 key=lambda op: max(t.get(op, 0.0) for t in per_target.values()))[-MAX_OPS:]
    fig = go.Figure([go.Bar(y=ops, x=[totals.get(op, 0.0) / 1000.0 for op in ops], orientation="h", name=label)
                     for label, totals in per_target.items()])
    fig.update_layout(title="int8 time per operator type, per target", barmode="group",
                      xaxis_title="total kernel time (ms)", yaxis=dict(automargin=True))
    return fig


def cross_target(cross: Sequence[Mapping[str, Any]]) -> Optional[go.Figure]:
    """How closely each target's int8 outputs agree with the first target's."""
    rows = [row for row in cross if row.get("psnr_db_vs_first") is not None]
    if not rows:
        return None
    fig = go.Figure()
    for output in dict.fromkeys(row.get("output") for row in rows):
        picked = [row for row in rows if row.get("output") == output]
        fig.add_trace(go.Bar(x=[row["target"] for row in picked], y=[row["psnr_db_vs_first"] for row in picked],
                             name=str(output)))
    fig.update_layout(title="int8 outputs against the first target", barmode="group", yaxis_title="PSNR (dB)")
    return fig
