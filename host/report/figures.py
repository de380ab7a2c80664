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
#: the latency figure's tick labels: at most this many per axis, in this font size (px)
LATENCY_TICKS, LATENCY_FONT_SIZE = 6, 14


def psnr_depth(layers: Sequence[Mapping[str, Any]]) -> Optional[go.Figure]:
    """Cumulative and local PSNR and cumulative SQNR against depth, sudden drops (judged by SQNR) marked."""
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
    if any(layer.get("sqnr_db") is not None for layer in layers):
        fig.add_trace(go.Scatter(x=x, y=[layer.get("sqnr_db") for layer in layers], customdata=custom,
                                 mode="lines+markers", name="cumulative SQNR", hovertemplate=hover,
                                 line=dict(color=INT8_COLOUR), marker=dict(size=3)))
    drops = [(xi, layer) for xi, layer in zip(x, layers) if layer.get("drop")]
    if drops:
        fig.add_trace(go.Scatter(
            x=[xi for xi, _ in drops], y=[layer.get("sqnr_db") for _, layer in drops],
            customdata=[[layer["name"], layer.get("op_type") or "?", layer.get("drop_db")] for _, layer in drops],
            mode="markers", name="sudden drop", marker=dict(symbol="x", size=12, color=DROP_COLOUR),
            hovertemplate="%{customdata[0]}<br>%{customdata[1]} · layer %{x}<br>SQNR %{y:.2f} dB, "
                          "%{customdata[2]:.1f} dB below its inputs'<extra>sudden drop</extra>"))
    fig.add_hline(y=RED_BELOW_DB, line=dict(color=RED, dash="dash", width=1))
    fig.add_hline(y=AMBER_BELOW_DB, line=dict(color=AMBER, dash="dash", width=1))
    fig.update_layout(title="PSNR and SQNR per layer against depth", xaxis_title="layer (topological order)",
                      yaxis_title="dB", hovermode="closest")
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
    fig.update_layout(title=dict(text="Latency per inference (steady state)", y=0.98), margin=dict(t=90),
                      font=dict(size=LATENCY_FONT_SIZE))
    fig.update_annotations(font_size=LATENCY_FONT_SIZE)  # the subplot titles
    # Few, large tick labels: a log axis otherwise labels every 2, 3, 5 between the decades.
    fig.update_xaxes(nticks=LATENCY_TICKS, tickfont_size=LATENCY_FONT_SIZE)
    fig.update_yaxes(nticks=LATENCY_TICKS, tickfont_size=LATENCY_FONT_SIZE)
    fig.update_yaxes(title_text="ms" + (" (log scale)" if log_box else ""), type="log" if log_box else None,
                     row=1, col=1, **(_log_ticks(everything.min(), everything.max()) if log_box else {}))
    fig.update_xaxes(title_text="ms" + (" (log scale)" if log_bins else ""), type="log" if log_bins else None,
                     row=1, col=2, **(_log_ticks(edges[0], edges[-1]) if log_bins else {}))
    fig.update_yaxes(title_text="runs", row=1, col=2)
    return fig


def _log_ticks(lo: float, hi: float) -> dict[str, Any]:
    """Tick values and full labels for a log axis over [lo, hi]: 1-2-5 steps, or decades when those are more than
    LATENCY_TICKS. plotly's own log ticks ignore ``nticks`` and label minor ticks "2", "5" without their decade."""
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for steps in ((1, 2, 5), (1,)):
        values = [m * 10.0 ** d for d in decades for m in steps if lo <= m * 10.0 ** d <= hi]
        if len(values) <= LATENCY_TICKS:
            break
    return {"tickvals": values, "ticktext": [f"{v:g}" for v in values]}


def _latency_bins(samples: np.ndarray, bins: int = 60) -> tuple[np.ndarray, bool]:
    """Histogram edges up to p99, log-spaced when the samples span more than 5x.

    A few slow runs (scheduler hiccups) would otherwise squash everything into one bin.
    """
    lo, hi = float(samples.min()), float(np.percentile(samples, 99))
    if hi <= lo:
        hi = lo * 1.01 + 1e-6
    log_scale = bool(lo > 0 and hi / lo > 5)
    return (np.geomspace(lo, hi, bins + 1) if log_scale else np.linspace(lo, hi, bins + 1)), log_scale


def op_totals(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per op type: ``mean_ms`` (kernel time per run), ``calls``, ``share`` and ``providers`` {name: mean_ms}.

    The agent reports one entry per (op type, provider); an op type that ran on
    several providers is one bar, its hover lists them.
    """
    totals: dict[str, dict[str, Any]] = {}
    for entry in entries:
        slot = totals.setdefault(str(entry.get("op_type") or "?"),
                                 {"mean_ms": 0.0, "calls": 0, "share": 0.0, "providers": {}})
        mean = float(entry.get("mean_ms") or 0.0)
        slot["mean_ms"] += mean
        slot["calls"] += int(entry.get("calls") or 0)
        slot["share"] += float(entry.get("share") or 0.0)
        provider = str(entry.get("provider") or "?")
        slot["providers"][provider] = slot["providers"].get(provider, 0.0) + mean
    return totals


def op_breakdown(profile: Optional[Mapping[str, Any]]) -> Optional[go.Figure]:
    """Kernel time per inference for each op type on the device, float vs int8 (grouped bars)."""
    if not profile or not any(profile.get(model) for model in ("float", "int8")):
        return None
    runs = int(profile.get("runs") or 1)
    totals = {model: op_totals(profile.get(model) or []) for model in ("float", "int8")}
    ops = sorted({op for model in totals.values() for op in model},
                 key=lambda op: max(totals[m].get(op, {"mean_ms": 0.0})["mean_ms"] for m in totals))[-MAX_OPS:]
    fig = go.Figure()
    for model, colour in (("float", FLOAT_COLOUR), ("int8", INT8_COLOUR)):
        if not totals[model]:
            continue
        slots = [totals[model].get(op) for op in ops]
        fig.add_trace(go.Bar(
            y=ops, x=[slot["mean_ms"] if slot else None for slot in slots], orientation="h", name=model,
            marker_color=colour,
            customdata=[[_providers_text(slot), slot["calls"] / runs, 100 * slot["share"]] if slot else ["", 0, 0]
                        for slot in slots],
            hovertemplate="<b>%{y}</b> (" + model + ")<br>%{x:.4f} ms per run, %{customdata[2]:.1f} % of the "
                          "model's kernel time<br>%{customdata[1]:.0f} calls per run<br>%{customdata[0]}"
                          "<extra></extra>"))
    sums = ", ".join(f"{model} {sum(slot['mean_ms'] for slot in totals[model].values()):.3f} ms"
                     for model in totals if totals[model])
    fig.update_layout(title=dict(text="Kernel time per inference by op type",
                                 subtitle=dict(text=f"{runs} profiled runs, first dropped; sum per run: {sums}")),
                      margin=dict(t=80), barmode="group", xaxis_title="kernel time per run (ms)",
                      yaxis=dict(automargin=True), height=max(360, 140 + 44 * len(ops)))
    return fig


def _providers_text(slot: Mapping[str, Any]) -> str:
    providers = slot["providers"]
    if len(providers) == 1:
        return f"provider: {next(iter(providers))}"
    return "providers: " + ", ".join(f"{name} {ms:.4f} ms" for name, ms in
                                     sorted(providers.items(), key=lambda item: -item[1]))


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
    """int8 kernel time per inference by op type, one bar group per target."""
    per_target = {}
    for label, report in targets:
        totals = op_totals((report.get("profile") or {}).get("int8") or [])
        if totals:
            per_target[label] = {op: slot["mean_ms"] for op, slot in totals.items()}
    if not per_target:
        return None
    ops = sorted({op for totals in per_target.values() for op in totals},
                 key=lambda op: max(t.get(op, 0.0) for t in per_target.values()))[-MAX_OPS:]
    fig = go.Figure([go.Bar(y=ops, x=[totals.get(op, 0.0) for op in ops], orientation="h", name=label)
                     for label, totals in per_target.items()])
    fig.update_layout(title="int8 kernel time per inference by op type, per target", barmode="group",
                      xaxis_title="kernel time per run (ms)", yaxis=dict(automargin=True),
                      height=max(360, 140 + 30 * len(ops) * len(per_target)))
    return fig

