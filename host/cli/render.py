"""Terminal output of a run: a summary table, the worst layers, the sudden drops."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from ..compare.metrics import nonfinite_text
from ..report import alerts, coverage, delegation, fidelity, marks
from ..run_state import UI
from . import bars


_VERDICT_STYLE = {"ok": "[green]ok[/]", "degraded": "[yellow]degraded[/]", "broken": "[bold red]broken[/]"}


def _db(value: float | None, exact: bool = False) -> str:
    if value is None:
        return "exact" if exact else "n/a"
    return f"{value:.2f} dB"


def _output_cell(out: dict[str, Any]) -> str:
    """PSNR and SQNR (or the element match of an exact output), the decisions' F1 of a probability output,
    then the verdict."""
    if out.get("kind") == "exact":
        cell = "identical" if out.get("exact") else f"{out.get('mismatches')} of {out.get('elements')} differ"
    elif out.get("nonfinite"):
        cell = f"non-finite ({nonfinite_text(out['nonfinite'])})"
    else:
        cell = f"PSNR {_db(out.get('psnr_db'), out.get('exact', False))}"
        if out.get("sqnr_db") is not None:
            cell += f" · SQNR {_db(out['sqnr_db'])}"
    if out.get("decision_f1") is not None:
        cell += f" · decisions F1 {out['decision_f1']:.2f}"
    return cell + (f" · {_VERDICT_STYLE[out['verdict']]}" if out.get("verdict") in _VERDICT_STYLE else "")


def _speedup_cell(speedup: float | None) -> str:
    """The speedup; below 1.0 in red with the words report.html marks it with (:mod:`..report.marks`)."""
    cell = f"{speedup or 0:.2f}x speedup"
    mark = marks.speedup(speedup)
    return f"[bold red]{cell} {mark.text}[/]" if mark else cell


def render_report(report: dict[str, Any], console: Console) -> None:
    """Print the summary, the worst layers and the drops of a report."""
    dev = report.get("device", {})
    title = f"qbench · {dev.get('name')} · {dev.get('arch', '?')} · {dev.get('runtime')} {dev.get('runtime_version') or ''}"
    if dev.get("emulated"):
        title += " · EMULATED (timings are emulation timings)"
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("float", justify="right")
    table.add_column("int8", justify="right")
    table.add_column("int8 vs float", justify="right")
    lat, mem = report.get("latency", {}), report.get("memory", {})
    if "float" in lat and "int8" in lat:
        table.add_row("latency median", f"{lat['float']['median_ms']:.3f} ms", f"{lat['int8']['median_ms']:.3f} ms",
                      _speedup_cell(lat.get("speedup")))
        table.add_row("latency p90", f"{lat['float']['p90_ms']:.3f} ms", f"{lat['int8']['p90_ms']:.3f} ms", "")
    elif (report.get("settings") or {}).get("accuracy_only"):
        table.add_row("latency, memory", "not measured", "not measured", "--accuracy-only")
    if "float" in mem and "int8" in mem:
        table.add_row("peak memory", f"{mem['float']['peak_mb']:.1f} MB", f"{mem['int8']['peak_mb']:.1f} MB",
                      f"{mem.get('ratio') or 0:.2f}x")
        table.add_row("memory over runtime", f"{mem['float']['delta_mb']:.1f} MB", f"{mem['int8']['delta_mb']:.1f} MB", "")
    for out in report.get("outputs", []):
        table.add_row(f"output {out['name']}", "", "", _output_cell(out))
    console.print(table)
    for out in report.get("outputs", []):
        for reason in out.get("reasons") or []:
            console.print(f"  output {out['name']}: {reason}", markup=False)
    for line in fidelity.capture_warnings(report):
        console.print(f"[bold yellow]capture:[/] {escape(line)}")
    for line in alerts.int8_slower(report):
        console.print(f"[bold yellow]speed:[/] {escape(line)}")
    for line in alerts.noisy_timings(report):
        console.print(f"[bold yellow]timing:[/] {escape(line)}")
    for line in alerts.int16_saturation(report):
        console.print(f"[bold yellow]kernels:[/] {escape(line)}")
    for line in [*delegation.summary_lines(report), coverage.coverage_line(report)]:
        if line:
            console.print(line, markup=False)
    layers = report.get("layers", [])
    summary = report.get("summary", {})
    by_name = {layer["name"]: layer for layer in layers}
    if summary.get("worst_layers"):
        worst = Table(title="worst layers (cumulative PSNR)", header_style="bold")
        for col in ("#", "layer", "op", "PSNR", "local PSNR", "SQNR"):
            worst.add_column(col, justify="right" if col in ("#", "PSNR", "local PSNR", "SQNR") else "left",
                             no_wrap=col == "layer")
        for name in summary["worst_layers"]:
            x = by_name[name]
            worst.add_row(str(x["index"]), short_name(name), x["op_type"], _db(x.get("psnr_db"), x.get("exact")),
                          _db(x.get("local_psnr_db")), _db(x.get("sqnr_db")))
        console.print(worst)
    _render_nonfinite(summary.get("nonfinite_layers") or [], by_name, console)
    drops = summary.get("drops", [])
    if drops:
        threshold = report["settings"].get("drop_db")
        console.print(f"[bold red]sudden drops[/] (SQNR falls > {threshold} dB below its inputs'):")
        for name in drops:
            x = by_name[name]
            console.print(f"  #{x['index']} {escape(short_name(name))} ({x['op_type']}): PSNR {_db(x['psnr_db'])}, "
                          f"SQNR {_db(x.get('sqnr_db'))} (-{x['drop_db']:.1f} dB)")
    elif layers:
        console.print("no sudden drops")
    _render_sensitive(report, by_name, console)
    _render_equalization(report.get("equalization"), console)
    if report.get("unmatched"):
        console.print(f"{len(report['unmatched'])} float tensors have no int8 counterpart (listed in report.json)")
    if report.get("error"):
        err = report["error"]
        console.print(f"[bold red]failed during {err['stage']}[/]: {err['message']}")
        if err.get("agent_stderr"):
            console.print("[dim]agent stderr (last lines):[/]\n" + err["agent_stderr"], markup=False)


#: layer names longer than this are cut in the middle: a TFLite name's ends tell layers apart
NAME_WIDTH = 30


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """``name`` cut in the middle to ``width`` characters (``head…tail``); the index column tells cut names apart."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return f"{name[:head]}…{name[len(name) - (width - 1 - head):]}"


def _render_nonfinite(names: list[str], by_name: dict[str, Any], console: Console) -> None:
    """Layers holding NaN or infinity: the first is where it starts (layers are in topological order)."""
    if not names:
        return
    first = by_name[names[0]]
    console.print(f"[bold red]non-finite values[/] in {len(names)} layer(s), no PSNR for them; first: "
                  f"#{first['index']} {escape(short_name(names[0]))} ({first['op_type']}): {nonfinite_text(first['nonfinite'])}")


def _render_sensitive(report: dict[str, Any], by_name: dict[str, Any], console: Console) -> None:
    """The top of the sensitive-layer ranking, with its reasons (the full list is in report.json), and what
    it does not explain."""
    ranked = [x for x in report.get("sensitive_layers", []) if x["score"] > 0]
    if ranked:
        table = Table(title="sensitive layers (score: dB the layer adds itself)", header_style="bold")
        for col in ("#", "layer", "op", "PSNR", "SQNR", "score", "why"):
            table.add_column(col, justify="left" if col in ("layer", "op", "why") else "right", no_wrap=col == "layer")
        for x in ranked[: max(report.get("settings", {}).get("worst", 5), 1)]:
            index = by_name.get(x["name"], {}).get("index")
            table.add_row("" if index is None else str(index), short_name(x["name"]), x["op_type"] or "", _db(x.get("psnr_db")), _db(x.get("sqnr_db")), f"{x['score']:.1f}",
                          "; ".join(x["reasons"]))
        console.print(table)
    for line in alerts.ranking_unexplained(report):
        console.print(f"[bold yellow]ranking:[/] {escape(line)}")


class RichUI(UI):
    """Stage lines and progress bars on stderr; silent when quiet or not a terminal."""

    def __init__(self, console: Console, quiet: bool):
        self.console = console
        self.quiet = quiet
        self.bars = not quiet and console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._stage = ""

    def stage(self, name: str) -> None:
        self._close()
        self._stage = name
        if self.bars:
            self._progress = bars.new_display(self.console)
            self._progress.start()
            self._task = self._progress.add_task(escape(name), total=None)

    def progress(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **bars.bar_fields(self._stage, stage, done, total))

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]note:[/] {text}")

    def warn(self, text: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {text}")

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self._close()


def _render_equalization(equalization: dict[str, Any] | None, console: Console) -> None:
    """How far equalization narrowed the spread of per-channel weight ranges (largest / smallest max|w|)."""
    if not equalization:
        return
    before, after = equalization.get("channel_ranges_before") or {}, equalization.get("channel_ranges_after") or {}
    console.print(f"cross-layer equalization: {len(equalization.get('pairs') or [])} conv pair(s); "
                  "channel range spread (largest / smallest max|w|) before -> after:")
    for conv in [c for c in before if c in after]:
        console.print(f"  {conv}: {_spread(before[conv])} -> {_spread(after[conv])}", markup=False)


def _spread(ranges: list[float]) -> str:
    positive = [r for r in ranges if r > 0]
    return f"{max(positive) / min(positive):.1f}x" if positive else "-"
