"""Terminal output of `qbench compare`: one progress line per target while they run, then the table."""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from ..report.compare import reference_text
from ..run_state import UI
from . import bars
from .render import short_name


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(values: Mapping[str, Any], digits: int) -> str:
    return f"{_num(values.get('float'), digits)} / {_num(values.get('int8'), digits)}"


def render_compare(doc: Mapping[str, Any], console: Console) -> None:
    """Print the comparison table, then why each failed target failed (``doc`` is a ``qbench.compare/1`` dict)."""
    reference = doc.get("reference")
    table = Table(title="qbench compare" + (f" · reference: {reference}" if reference else ""), header_style="bold")
    for col, right in (("target", False), ("status", False), ("median ms\nfloat / int8", True),
                       ("speedup", True), ("peak MB\nfloat / int8", True), ("output\nPSNR dB", True),
                       ("vs reference\nint8 · float", True), ("ran", False), ("worst layer", False)):
        table.add_column(col, justify="right" if right else "left", overflow="fold",
                         no_wrap=col in ("target", "status"))
    failures: list[tuple[str, str]] = []  # (target, why), printed under the table in full
    for row in doc.get("table") or []:
        status = "ok" if row["status"] == "ok" else "[bold red]FAILED[/]"
        if row["status"] != "ok":
            failures.append((row["target"], row.get("error") or "unknown error"))
        if row.get("gates_failed"):
            status += "\n[bold red]gate failed[/]"
            failures += [(row["target"], f"gate failed: {message}") for message in row["gates_failed"]]
        psnr = row.get("output_psnr_db")
        versus = row.get("vs_reference")
        if versus is None:
            agreement = "-" if row["status"] != "ok" else row.get("outputs_note") or "-"
        elif isinstance(versus, str):
            agreement = versus
        else:
            agreement = f"{reference_text(versus, 'int8')} · {reference_text(versus, 'float')}"
        table.add_row(
            escape(row["target"]), status, _pair(row["latency_ms"], 3), "-" if row.get("speedup") is None
            else f"{row['speedup']:.2f}x", _pair(row["peak_mb"], 1),
            "exact" if psnr is None and row.get("outputs_exact") else _num(psnr, 2), escape(agreement),
            escape((row.get("ran") or "-").replace("ExecutionProvider", "")),
            escape(short_name((row.get("worst_layers") or ["-"])[0])),
        )
    console.print(table)
    for target, why in failures:
        console.print(f"[bold red]{escape(target)}[/]: {escape(why)}", highlight=False)


class CompareUI(UI):
    """One line per target on a shared progress display; safe to call from the targets' threads."""

    def __init__(self, console: Console, quiet: bool, progress: Progress | None, label: str):
        self.console, self.quiet, self.label = console, quiet, label
        self._stage = "waiting"
        self._progress = progress
        self._task: TaskID | None = progress.add_task(escape(f"{label}: waiting"), total=None) if progress else None

    def stage(self, name: str) -> None:
        self._stage = name
        if self._progress is not None:
            self._progress.update(self._task, **bars.bar_fields(name, "", 0, 0, f"{self.label}: "))

    def progress(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **bars.bar_fields(self._stage, stage, done, total, f"{self.label}: "))

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{escape(self.label)}: note:[/] {escape(text)}")

    def warn(self, text: str) -> None:
        self.console.print(f"[bold yellow]{escape(self.label)}: warning:[/] {escape(text)}")


def progress_display(console: Console, quiet: bool) -> Progress | None:
    """The shared display of every target's stage, or None when quiet or not a terminal."""
    if quiet or not console.is_terminal:
        return None
    return bars.new_display(console)
