"""report.html and compare.html: what people look at after a run.

Both are single self-contained files (plotly.js inlined once) that open
offline. Sections whose data a report lacks (no profile, no histograms) say so
rather than vanish, so a reader knows the figure exists and how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from qbench.host import gates as gates_mod
from qbench.host.compare.metrics import nonfinite_text
from qbench.host.report import (alerts, compare_page, diagnosis_page, fidelity, figures, marks, sections,
                                sensitivity_page)
from qbench.host.report.exports import AMBER_BELOW_DB, RED_BELOW_DB
from qbench.host.report.page import breakable, esc, figure_html, fmt, marked, note, num_cell, page, table

PathLike = Union[str, "os.PathLike[str]"]


def write_html(report: Mapping[str, Any], path: PathLike) -> Path:
    """Write the HTML report of one run.

    Args:
        report: A ``qbench.report/1`` dict; ``report["gates"]`` (thresholds, see
            :class:`qbench.host.gates.Gates`), ``report["profile"]``, the layers'
            ``histogram`` and ``report["weights"]`` are optional.
        path: Where to write, usually ``<out>/report.html``.

    Returns:
        The path written.
    """
    checks = gates_mod.evaluate(report, gates_mod.Gates.from_dict(report.get("gates")))
    layers = report.get("layers") or []
    model = _model_name(report)
    body = [
        f"<h1>qbench: {esc(model)}</h1>",
        f'<p class="muted">{esc(report.get("created"))} · qbench {esc(report.get("qbench_version"))}</p>',
        _capture_warnings(report),
        _run_warnings(report),
        _cards(report, checks),
        # the chart right under the cards: the first thing a reader sees without scrolling
        "<h2>PSNR per layer</h2>",
        _figure_or_note(figures.psnr_depth(layers), "No layer figures in this report.", height=440),
        _psnr_note(layers),
        "<h2>Run</h2>",
        _summary(report, checks),
        "<h2>Latency</h2>",
        _figure_or_note(figures.latency(report.get("latency") or {}), "No latency samples in this report."),
        _latency_table(report.get("latency") or {}),
        "<h2>Time per operator on the device</h2>",
        sections.op_profile(report),
        "<h2>Value histograms of the worst layers</h2>",
        sections.value_histograms(report),
        "<h2>Diagnosis</h2>",
        diagnosis_page.section(report),
        sensitivity_page.section(report),
        "<h2>Layers</h2>",
        _layer_table(layers),
        _unmatched(report.get("unmatched") or []),
    ]
    path = Path(path)
    path.write_text(page(f"qbench report: {model}", "\n".join(body)), encoding="utf-8")
    return path


def write_compare_html(compare_report: Mapping[str, Any], path: PathLike) -> Path:
    """Write the HTML report of `qbench compare`: one chart per figure across targets.

    Args:
        compare_report: A ``qbench.compare/1`` dict (see :mod:`qbench.host.report.compare`).
        path: Where to write.

    Returns:
        The path written.
    """
    targets = compare_report.get("targets") or []
    ok = [(t["label"], t["report"]) for t in targets if t.get("status") == "ok" and t.get("report")]
    reference = compare_report.get("reference")
    body = [
        "<h1>qbench compare</h1>",
        f'<p class="muted">{esc(compare_report.get("created") or "")} {len(targets)} target(s), '
        f"{len(ok)} ran; reference for agreement: {esc(reference or 'none')}</p>",
        "<h2>Targets</h2>",
        compare_page.targets_table(compare_report),
        "<h2>Output PSNR</h2>",
        _figure_or_note(compare_page.output_psnr(ok), "No target has output PSNR figures."),
        "<h2>PSNR per layer</h2>",
        _figure_or_note(figures.per_target_psnr(ok), "No target has layer figures.", height=480),
        "<h2>Latency</h2>",
        _figure_or_note(figures.per_target_latency(ok), "No target has latency samples."),
        "<h2>Memory</h2>",
        _figure_or_note(figures.per_target_memory(ok), "No target has memory figures."),
        "<h2>Time per operator on the device</h2>",
        _figure_or_note(figures.per_target_ops(ok), "Per-operator profiling was not collected.", height=520),
        "<h2>Agreement between targets</h2>",
        _figure_or_note(compare_page.cross_target(compare_report.get("cross") or []),
                        "No cross-target comparison in this report."),
        compare_page.cross_table(compare_report.get("cross") or []),
    ]
    path = Path(path)
    path.write_text(page("qbench compare", "\n".join(body)), encoding="utf-8")
    return path


def _model_name(report: Mapping[str, Any]) -> str:
    # The model the user gave; models.float may be a prepared copy of it.
    path = (report.get("settings") or {}).get("model") or ((report.get("models") or {}).get("float") or {}).get("path")
    return Path(path).name if path else "model"


def _size(size_bytes: Optional[int]) -> str:
    if size_bytes is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.2f} {unit}"
    return f"{size_bytes} B"


def _figure_or_note(fig: Any, missing: str, height: int = 420) -> str:
    return figure_html(fig, height=height) if fig is not None else note(missing)


def _gate_mark(checks: Sequence[gates_mod.GateCheck], gate: str) -> tuple[str, Optional[marks.Mark]]:
    """The pass/fail badge of ``gate`` (empty when it is not set) and, when it failed, its mark."""
    for check in checks:
        if check.gate == gate:
            verdict = "pass" if check.passed else "fail"
            symbol = "\u2714" if check.passed else "\u2718"
            badge = f' <span class="{verdict}" title="{esc(check.message)}">{symbol} {verdict}</span>'
            return badge, marks.gate(check.passed)
    return "", None


def _output_psnr_text(psnr: Optional[float], report: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    if summary.get("nonfinite_outputs"):
        return "non-finite"
    return "exact" if psnr is None and report.get("outputs") else fmt(psnr, 2, " dB")


def _card(label: str, value: str, gate: tuple[str, Optional[marks.Mark]] = ("", None),
          mark: Optional[marks.Mark] = None) -> str:
    """A summary card; a bad or doubtful value (or a failed gate) gives it the mark's class and its words."""
    badge, failed = gate
    worst = marks.worst(mark, failed)
    why = "".join(f'<div class="why {m.level}">{esc(m.text)}</div>' for m in (mark, failed) if m)
    cls = f"card {worst.level}" if worst else "card"
    return (f'<div class="{cls}"><div class="label">{esc(label)}</div><div class="value">{value}{badge}</div>'
            f"{why}</div>")


def _cards(report: Mapping[str, Any], checks: Sequence[gates_mod.GateCheck]) -> str:
    """The headline figures, each marked against the gates and the verdicts, and the gates' verdict."""
    summary = report.get("summary") or {}
    latency, memory = report.get("latency") or {}, report.get("memory") or {}
    psnr = summary.get("output_psnr_db")
    speedup = latency.get("speedup", summary.get("speedup"))
    psnr_mark = (marks.Mark(marks.BAD, "non-finite") if summary.get("nonfinite_outputs")
                 else marks.psnr(psnr))
    cards = [
        _card("output PSNR", _output_psnr_text(psnr, report, summary), _gate_mark(checks, "fail_under_psnr"),
              psnr_mark),
        _card("speedup (float/int8)", fmt(speedup, 2, "\u00d7"), _gate_mark(checks, "fail_under_speedup"),
              marks.speedup(speedup)),
        _card("memory ratio (int8/float)", fmt(memory.get("ratio", summary.get("memory_ratio")), 2)),
        _card("int8 peak memory", fmt((memory.get("int8") or {}).get("peak_mb"), 1, " MB"),
              _gate_mark(checks, "fail_over_memory")),
        _card("sudden drops", str(len(_drops(report))), _gate_mark(checks, "fail_on_drop")),
    ]
    if summary.get("verdict"):
        cards.append(_card("output verdict", esc(summary["verdict"]), _gate_mark(checks, "fail_on_broken"),
                           marks.verdict(summary["verdict"])))
    if summary.get("top1_agreement") is not None:
        cards.append(_card("top-1 agreement", fmt(summary["top1_agreement"], 3),
                           _gate_mark(checks, "fail_under_top1")))
    return f'<div class="cards">{"".join(cards)}</div>{_gates_verdict(checks)}'


def _drops(report: Mapping[str, Any]) -> list[str]:
    drops = (report.get("summary") or {}).get("drops")
    return drops if drops is not None else [layer["name"] for layer in report.get("layers") or [] if layer.get("drop")]


def _summary(report: Mapping[str, Any], checks: Sequence[gates_mod.GateCheck]) -> str:
    """Below the chart: each gate, the notes, the device and models, the outputs, the worst layers and drops."""
    summary, device = report.get("summary") or {}, report.get("device") or {}
    parts = [_gates_list(checks), _notes(report)]
    providers = ", ".join(device.get("providers_used") or device.get("providers") or []) or "-"
    delegate = (((report.get("settings") or {}).get("runner") or {}).get("delegate"))
    if delegate:
        providers += f" · delegate {delegate}"
    parts.append(table(("device", "arch", "system", "runtime", "providers / delegate", "emulated", "CPUs",
                        "memory"),
                       [(device.get("name"), device.get("arch"), device.get("system"),
                         f"{device.get('runtime') or '-'} {device.get('runtime_version') or ''}".strip(),
                         providers, "yes" if device.get("emulated") else "no", device.get("cpu_count") or "-",
                         fmt(device.get("total_memory_mb"), 0, " MB"))]))
    models = report.get("models") or {}
    parts.append(table(("model", "file", "size", "sha256"),
                       [(kind, Path(m.get("path") or "-").name, _size(m.get("size_bytes")),
                         (m.get("sha256") or "-")[:16]) for kind, m in models.items()]))
    parts.append(_outputs_table(report.get("outputs") or []))
    worst = summary.get("worst_layers") or []
    if worst:
        parts.append(f'<p class="names"><b>Worst layers:</b> {", ".join(map(breakable, worst))}</p>')
    drops = _drops(report)
    if drops:
        parts.append(f'<p class="names"><b>Sudden drops:</b> {", ".join(map(breakable, drops))}</p>')
    return "\n".join(parts)


def _capture_warnings(report: Mapping[str, Any]) -> str:
    """The capture's departures from the deployed graph, above everything they qualify."""
    return _warning_box("capture-fidelity", "Capture", fidelity.capture_warnings(report))


def _run_warnings(report: Mapping[str, Any]) -> str:
    """Random calibration, int16 saturation and noisy timings (:mod:`qbench.host.report.alerts`), above the
    figures they qualify."""
    return _warning_box("run-warnings", "Warnings", alerts.run_warnings(report), f"{marks.SYMBOLS[marks.WARN]} ")


def _warning_box(box_id: str, title: str, lines: list[str], prefix: str = "") -> str:
    """A warning box of one item per line; nothing without lines."""
    if not lines:
        return ""
    items = "".join(f"<li>{esc(prefix + line)}</li>" for line in lines)
    return f'<div class="note warn" id="{box_id}"><b>{title}</b><ul>{items}</ul></div>'


def _notes(report: Mapping[str, Any]) -> str:
    lines = alerts.plain_notes(report)
    error = report.get("error")
    if error:
        lines.insert(0, f"{error.get('stage', 'run')} failed: {error.get('message', error)}"
                     if isinstance(error, Mapping) else str(error))
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f'<div class="note"><b>Notes</b><ul>{items}</ul></div>'


def _gates_verdict(checks: Sequence[gates_mod.GateCheck]) -> str:
    if not checks:
        return ""
    failed = [c.gate for c in checks if not c.passed]
    if not failed:
        return '<p><b>Gates:</b> <span class="pass">\u2714 all gates passed</span></p>'
    return f'<p><b>Gates:</b> <span class="fail">\u2718 gates failed: {esc(", ".join(failed))}</span></p>'


def _gates_list(checks: Sequence[gates_mod.GateCheck]) -> str:
    if not checks:
        return ""
    items = "".join(f'<li><span class="{"pass" if c.passed else "fail"}">{"pass" if c.passed else "FAIL"}</span> '
                    f"{esc(c.gate)}: {esc(c.message)}</li>" for c in checks)
    return f"<p><b>Gates</b></p><ul>{items}</ul>"


def _outputs_table(outputs: Sequence[Mapping[str, Any]]) -> str:
    if not outputs:
        return ""
    rows, classes = [], []
    for o in outputs:
        if o.get("kind") == "exact":
            exact = "identical" if o.get("exact") else f"{o.get('mismatches', '?')} mismatches"
        elif o.get("nonfinite"):
            exact = f"non-finite: {nonfinite_text(o['nonfinite'])}"
        else:
            exact = "exact" if o.get("exact") else ""
        psnr_mark, verdict_mark = marks.psnr(o.get("psnr_db")), marks.verdict(o.get("verdict"))
        rows.append((o.get("name"), o.get("kind", "float"), marked(num_cell(o.get("psnr_db")), psnr_mark),
                     num_cell(o.get("sqnr_db")), num_cell(o.get("mse"), 4), num_cell(o.get("max_abs_error"), 4),
                     exact, marked(("", o.get("verdict") or "", ""), verdict_mark) if verdict_mark else o.get("verdict") or "", "; ".join(o.get("reasons") or [])))
        mark = marks.output(o)
        classes.append(f"output-{mark.level}" if mark else "")
    return table(("output", "kind", "PSNR dB", "SQNR dB", "MSE", "max abs error", "exact", "verdict", "why"), rows,
                 wrap=True, row_classes=classes)


def _latency_table(latency: Mapping[str, Any]) -> str:
    stats = ("init_ms", "first_ms", "min_ms", "median_ms", "mean_ms", "p90_ms", "p99_ms", "std_ms")
    rows = [(model, *(num_cell((latency.get(model) or {}).get(s), 3) for s in stats),
             (latency.get(model) or {}).get("runs", "-"))
            for model in ("float", "int8") if latency.get(model)]
    if not rows:
        return ""
    return table(("model", "init ms", "first ms", "min ms", "median ms", "mean ms", "p90 ms", "p99 ms", "std ms",
                  "timed runs"), rows)


def _psnr_class(psnr: Optional[float], exact: bool) -> str:
    if psnr is None:
        return "psnr-green" if exact else ""
    return "psnr-red" if psnr < RED_BELOW_DB else "psnr-amber" if psnr < AMBER_BELOW_DB else "psnr-green"


def _psnr_note(layers: Sequence[Mapping[str, Any]]) -> str:
    exact = sum(1 for layer in layers if layer.get("psnr_db") is None and layer.get("exact"))
    text = (f"Dashed lines: {RED_BELOW_DB:g} dB (red) and {AMBER_BELOW_DB:g} dB (amber). Cumulative PSNR carries "
            "the error of every layer before; local PSNR isolates the layer's own error.")
    if exact:
        text += f" {exact} layer(s) are exact (no error) and leave gaps in the curves."
    return f'<p class="muted">{esc(text)}</p>'


def _layer_table(layers: Sequence[Mapping[str, Any]]) -> str:
    if not layers:
        return note("No layers were matched between the float and int8 models.")
    rows, classes = [], []
    for i, layer in enumerate(layers):
        exact = bool(layer.get("exact"))
        psnr_text = "exact" if layer.get("psnr_db") is None and exact else fmt(layer.get("psnr_db"))
        sort_key = "1e9" if psnr_text == "exact" else num_cell(layer.get("psnr_db"))[1]
        if layer.get("nonfinite"):  # never a match: sorted first, the count in the cell's title
            psnr_text, sort_key = "non-finite", "-1e9"
        rows.append((
            num_cell(layer.get("index", i), 0),
            _name_cell(layer), layer.get("op_type") or "",
            (psnr_text, sort_key, "num psnr"),
            num_cell(layer.get("local_psnr_db")), num_cell(layer.get("sqnr_db")),
            num_cell(layer.get("mse"), 4), num_cell(layer.get("max_abs_error"), 4),
            num_cell(layer.get("float_min"), 3), num_cell(layer.get("float_max"), 3),
            num_cell(None if layer.get("clipped_fraction") is None else 100 * layer["clipped_fraction"], 2),
            (f"{fmt(layer.get('drop_db'), 1)} dB" if layer.get("drop") else "", layer.get("drop_db") or 0, "num"),
            _layer_status(layer),
        ))
        classes.append(f"{_psnr_class(layer.get('psnr_db'), exact)}{' drop' if layer.get('drop') else ''}")
    hint = '<p class="muted">Click a column title to sort.</p>'
    return hint + table(("#", "name", "op", "PSNR dB", "local dB", "SQNR dB", "MSE", "max abs err", "float min",
                         "float max", "clipped %", "drop", "status"), rows, sortable=True, row_classes=classes,
                        wrap=True)


def _name_cell(layer: Mapping[str, Any]) -> tuple:
    """The layer's name; under it, in small type, the name in the prepared copy when that is another one."""
    name, prepared = layer["name"], layer.get("prepared_name")
    if not prepared or prepared == name:
        return breakable(name), name, "name"
    return (f'<span title="prepared copy: {esc(prepared)}">{breakable(name)}</span>'
            f'<div class="sub">prepared: {breakable(prepared)}</div>', name, "name")


def _layer_status(layer: Mapping[str, Any]) -> str:
    """Why a layer has no figures (fused, unobservable), or that they come from an altered graph."""
    status = layer.get("status") or ""
    if layer.get("graph_altered"):
        status = (status + "; " if status else "") + "graph altered"
    return status


def _unmatched(unmatched: Sequence[Mapping[str, Any]]) -> str:
    if not unmatched:
        return ""
    rows = [(u.get("name"), u.get("op_type"), u.get("reason")) for u in unmatched]
    return (f"<details><summary>{len(unmatched)} float tensor(s) not matched in the int8 model</summary>"
            f"{table(('name', 'op', 'reason'), rows, sortable=True)}</details>")

