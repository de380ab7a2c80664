"""Float vs int8 value histograms of the worst layers (the seed article's figures 7a and 7b).

Report data (``qbench.report/1``):

* a layer's activations: ``layers[i]["histogram"]``;
* a weight tensor: ``weights[j]`` = ``{name, layer, psnr_db, channel_psnr_db, histogram}``,
  ``layer`` naming the layer (``layers[i]["name"]``) the weight feeds.

A histogram is ``{"range": [lo, hi], "float": [under, b1..bn, over], "int8": [...]}``: ``n``
equal bins over ``[lo, hi]``, the int8 tensor's representable range, and the counts of
values below ``lo`` and above ``hi`` (values quantization clips) at both ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

FLOAT_COLOUR, INT8_COLOUR, RANGE_COLOUR = "#1f77b4", "#ff7f0e", "#7f7f7f"
MAX_LAYERS = 6
#: clipped-count bars are at least this share of the range wide, so that they stay visible next to fine bins
_CLIP_BAR_WIDTH = 0.03


@dataclass
class Histogram:
    """One validated histogram: bin edges, and per model the in-range counts and the clipped ones."""

    lo: float
    hi: float
    counts: dict[str, list[float]]  # model -> n in-range counts
    under: dict[str, float]
    over: dict[str, float]

    @property
    def bins(self) -> int:
        """The bins counted on the device (``--histogram-bins``)."""
        return len(next(iter(self.counts.values())))

    @property
    def values(self) -> int:
        """The values counted: the tensor's elements over every sample, clipped ones included."""
        return int(max(sum(self.counts[m]) + self.under[m] + self.over[m] for m in self.counts))

    def shown(self) -> "Shown":
        """The bars to draw: :func:`shown_bins` bins, each the sum of adjacent counted bins."""
        group = math.ceil(self.bins / shown_bins(self.values, self.bins))
        starts = range(0, self.bins, group)
        step = (self.hi - self.lo) / self.bins
        edges = [(self.lo + k * step, self.lo + min(k + group, self.bins) * step) for k in starts]
        return Shown(centres=[(a + b) / 2 for a, b in edges], widths=[b - a for a, b in edges],
                     counts={m: [sum(c[k:k + group]) for k in starts] for m, c in self.counts.items()})

    def clipped(self, model: str) -> str:
        """The values of ``model`` outside the range: "12 below, 340 above (2.1 % clipped)"."""
        total = sum(self.counts[model]) + self.under[model] + self.over[model]
        share = 100.0 * (self.under[model] + self.over[model]) / total if total else 0.0
        return f"{int(self.under[model])} below, {int(self.over[model])} above ({share:.2g} % clipped)"


@dataclass
class Shown:
    """The bars of one panel: centre, width and, per model, count of each."""

    centres: list[float]
    widths: list[float]
    counts: dict[str, list[float]]


def shown_bins(values: int, bins: int) -> int:
    """Bars for ``values`` values counted in ``bins`` bins: ``min(bins, ceil(sqrt(values)))``, at least 1.

    The square-root rule: 8 values in 64 bins would be 8 lone bars among 56 empty ones, which says nothing
    of the values' spread; 3 bars of about 21 bins each do. From 3,970 values on, all 64 bins are drawn.
    """
    return max(1, min(bins, math.ceil(math.sqrt(values))))


def parse(data: Any) -> Optional[Histogram]:
    """The histogram in ``data``, or None if it is missing or malformed (never raises)."""
    if not isinstance(data, Mapping):
        return None
    bounds = data.get("range")
    if not isinstance(bounds, Sequence) or len(bounds) != 2 or not all(_finite(v) for v in bounds):
        return None
    lo, hi = float(bounds[0]), float(bounds[1])
    series = {model: data.get(model) for model in ("float", "int8")}
    series = {m: v for m, v in series.items() if isinstance(v, Sequence) and len(v) >= 3 and all(map(_finite, v))}
    if hi <= lo or not series or len({len(v) for v in series.values()}) != 1:
        return None
    return Histogram(lo, hi, counts={m: [float(c) for c in v[1:-1]] for m, v in series.items()},
                     under={m: float(v[0]) for m, v in series.items()},
                     over={m: float(v[-1]) for m, v in series.items()})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def worst_layer_names(report: Mapping[str, Any]) -> list[str]:
    """``summary.worst_layers``; for a report without one, the layers ranked by PSNR."""
    worst = (report.get("summary") or {}).get("worst_layers")
    if worst is not None:
        return list(worst)
    ranked = sorted((layer for layer in report.get("layers") or [] if layer.get("psnr_db") is not None),
                    key=lambda layer: layer["psnr_db"])
    return [layer["name"] for layer in ranked]


@dataclass
class Panel:
    """One subplot: what it shows (layer or weight tensor) and its histogram."""

    title: str
    tensor: str
    histogram: Histogram


Row = tuple[str, Optional[Panel], Optional[Panel]]


def panels(report: Mapping[str, Any], limit: int = MAX_LAYERS) -> tuple[list[Row], list[str]]:
    """Per worst layer (at most ``limit``): (name, activation panel, weight panel); and the worst layers with neither.

    A layer's weight panel shows the first entry of ``report["weights"]`` naming it that has a histogram.
    """
    layers = {layer.get("name"): layer for layer in report.get("layers") or []}
    weights: dict[str, list[Mapping[str, Any]]] = {}
    for weight in report.get("weights") or []:
        if isinstance(weight, Mapping):
            weights.setdefault(weight.get("layer"), []).append(weight)
    rows, missing = [], []
    for name in worst_layer_names(report)[:limit]:
        activation = parse((layers.get(name) or {}).get("histogram"))
        # parsed for the layers shown only: a model has hundreds of weights
        weight = next((w for w in weights.get(name, []) if parse(w.get("histogram")) is not None), None)
        if activation is None and weight is None:
            missing.append(name)
            continue
        rows.append((name,
                     Panel(f"{_short(name)} · activations", name, activation) if activation else None,
                     Panel(_weight_title(weight), str(weight.get("name")), parse(weight["histogram"]))
                     if weight else None))
    return rows, missing


def _short(name: str, keep: int = 48) -> str:
    return name if len(name) <= keep else "\u2026" + name[-keep:]


def _weight_title(weight: Mapping[str, Any]) -> str:
    psnr = weight.get("psnr_db")
    return f"{_short(str(weight.get('name')))} · weights" + (f" · {psnr:.1f} dB" if _finite(psnr) else "")


def figure(rows: Sequence[Row]) -> Optional[go.Figure]:
    """Float vs int8 histograms of :func:`panels`' rows: activations left, weights right; None without rows."""
    if not rows:
        return None
    cols = 2 if any(weight for _, _, weight in rows) else 1
    grid = [[activation, weight][:cols] for _, activation, weight in rows]
    titles = [_title(panel) for row in grid for panel in row if panel]
    # No axes in an empty cell: a relayout naming an axis that has no trace fails in plotly.js.
    fig = make_subplots(rows=len(grid), cols=cols, subplot_titles=titles,
                        specs=[[{} if panel else None for panel in row] for row in grid],
                        vertical_spacing=min(0.32 / len(grid), 0.1), horizontal_spacing=0.08)
    shown: set[str] = set()
    bounds = []
    for r, row in enumerate(grid, start=1):
        for c, panel in enumerate(row, start=1):
            if panel is not None:
                bounds += _draw(fig, panel.histogram, r, c, shown)
    # One layout update for every range line: add_vline per subplot re-validates the whole layout each time.
    fig.update_layout(shapes=bounds)
    y_axes = [key for key in fig.layout if key.startswith("yaxis")]
    fig.update_layout(
        title=dict(text="Value histograms of the worst layers, float vs int8",
                   subtitle=dict(text="bins over the int8 tensor's range (dotted lines); hatched bars outside "
                                      "it count the values quantization clips")),
        barmode="overlay", bargap=0, height=160 + 260 * len(grid), margin=dict(t=110),
        updatemenus=[dict(type="buttons", direction="left", x=1.0, xanchor="right", y=1.0, yanchor="bottom",
                          pad=dict(b=30), buttons=[
                              dict(label="linear y", method="relayout", args=[{f"{k}.type": "linear" for k in y_axes}]),
                              dict(label="log y", method="relayout", args=[{f"{k}.type": "log" for k in y_axes}]),
                          ])])
    fig.update_yaxes(title_text="count")
    return fig


def _title(panel: Panel) -> str:
    """The panel's title; with fewer bars than counted bins, how many values they hold."""
    hist = panel.histogram
    bars = shown_bins(hist.values, hist.bins)
    return panel.title if bars == hist.bins else f"{panel.title} · {hist.values} values in {bars} bins"


def _draw(fig: go.Figure, hist: Histogram, row: int, col: int, shown: set[str]) -> list[dict[str, Any]]:
    """Add one panel's bars; returns the dotted lines of its int8 range, as layout shapes."""
    bars = hist.shown()
    clip_width = max(bars.widths[0], _CLIP_BAR_WIDTH * (hist.hi - hist.lo))
    for model, colour in (("float", FLOAT_COLOUR), ("int8", INT8_COLOUR)):
        if model not in hist.counts:
            continue
        fig.add_trace(go.Bar(
            x=bars.centres, y=bars.counts[model], width=bars.widths, name=model, marker_color=colour, opacity=0.55,
            legendgroup=model, showlegend=model not in shown,
            hovertemplate="%{x:.4g}: %{y} values<extra>" + model + "</extra>"), row=row, col=col)
        shown.add(model)
        if not hist.under[model] and not hist.over[model]:
            continue
        fig.add_trace(go.Bar(
            x=[hist.lo - clip_width / 2, hist.hi + clip_width / 2], y=[hist.under[model], hist.over[model]],
            width=clip_width, name=f"{model} clipped", marker=dict(color=colour, pattern=dict(shape="/")),
            opacity=0.8, legendgroup=f"{model} clipped", showlegend=f"{model} clipped" not in shown,
            customdata=[[f"below {hist.lo:.4g}"], [f"above {hist.hi:.4g}"]],
            hovertemplate="%{customdata[0]}: %{y} values, clipped<br>" + f"{model}: {hist.clipped(model)}"
                          + "<extra>" + model + "</extra>"), row=row, col=col)
        shown.add(f"{model} clipped")
    axes = fig.get_subplot(row, col)
    xref, yref = axes.xaxis.plotly_name.replace("axis", ""), axes.yaxis.plotly_name.replace("axis", "")
    return [dict(type="line", xref=xref, yref=f"{yref} domain", x0=bound, x1=bound, y0=0, y1=1,
                 line=dict(color=RANGE_COLOUR, dash="dot", width=1)) for bound in (hist.lo, hist.hi)]


def clipped_rows(rows: Sequence[Row]) -> list[tuple[str, str, str, str]]:
    """(layer, tensor kind, tensor, float values clipped) for every panel, for a table under the figure."""
    out = []
    for name, activation, weight in rows:
        for kind, panel in (("activations", activation), ("weights", weight)):
            if panel is not None and "float" in panel.histogram.counts:
                out.append((name, kind, panel.tensor, panel.histogram.clipped("float")))
    return out
