"""``qbench sensitivity``: per block of ops, what its quantization costs the outputs, measured on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import gates
from ..sensitivity_sweep import SWEEPS, damage, measure, nonfinite
from .main import app
from ..run_options import RunOptions
from .options import device_option, with_run_options
from .tuning import finish, fmt, start_trials


@app.command()
@with_run_options
def sensitivity(
    model: Path = typer.Argument(..., help="float model (.onnx or .tflite)"),
    device: str = device_option(),
    blocks: int = typer.Option(24, "--blocks", min=1, help="blocks of consecutive ops (as many as ops: per layer)"),
    bisect: Optional[float] = typer.Option(
        None, "--bisect", help="also find the fewest ops, in topological order, to keep in float for this output PSNR (dB)"),
    from_end: bool = typer.Option(False, "--from-end", help="--bisect counts ops from the outputs back"),
    *,
    opts: RunOptions,
) -> None:
    """Quantize MODEL, then measure on DEVICE each block's loss (only it int8) and gain (only it float)."""
    trials, ui = start_trials("sensitivity", model, device, opts)
    console = Console(stderr=True)
    try:
        path, report = measure(trials, blocks, bisect, from_end,
                               say=lambda line: None if opts.quiet else console.print(f"[dim]{line}[/]"))
    finally:
        ui.close()
    section = report["sensitivity"]
    if not opts.as_json:
        render_sensitivity(section, Console())
    passed = finish(report, path, opts, {"sensitivity": section})
    if not passed:
        raise typer.Exit(gates.GATE_FAILED)


def render_sensitivity(section: dict[str, Any], console: Console) -> None:
    """One row per block, the most damaging (worst only-int8 verdict, then lowest only-int8 PSNR) first; then the
    bisection, if any."""
    baseline = "non-finite" if section.get("baseline_nonfinite") else f"{fmt(section['baseline_psnr_db'])} dB"
    table = Table(title=f"sensitivity per block ({section['method']} calibration, all-int8 output PSNR "
                        f"{baseline}; {section['trials']} trials on the device)",
                  header_style="bold")
    for column in ("block", "ops", "first .. last op", "only int8 dB", "only int16 dB", "keep float dB", "gain dB"):
        table.add_column(column, justify="left" if column == "first .. last op" else "right")

    measured = set(section.get("figures") or SWEEPS)

    def cell(row: dict[str, Any], name: str) -> str:
        if name not in measured:
            return "–"  # not measured, not exact
        verdict = row.get(f"{name}_verdict")
        figure = "non-finite" if nonfinite(row, name) else _db(row[f"{name}_psnr_db"])
        return figure + (f" {verdict}" if verdict not in (None, "ok") else "")

    for row in sorted(section["blocks"], key=damage):
        table.add_row(str(row["block"]), str(row["ops"]), row["label"], cell(row, "only_int8"), cell(row, "only_int16"),
                      cell(row, "keep_float"), fmt(row["gain_db"], signed=True) if "keep_float" in measured else "–")
    console.print(table)
    found = section.get("bisect")
    if found:
        ops = found["ops_float"]
        console.print(f"bisect ({found['direction']}): {ops} of {found['ops_total']} ops in float reach "
                      f"{found['target_psnr_db']} dB ({_db(found['psnr_db'])} dB), in {len(found['steps'])} trials")


def _db(value: float | None) -> str:
    return "exact" if value is None else f"{value:.2f}"
