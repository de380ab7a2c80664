"""``qbench fix``: repair an int8 model until its output PSNR target holds, every figure measured on the device.

ONNX: the remedy search of :mod:`qbench.host.repair` (calibration method, int16 activations and float
per block, ordered by measured sensitivity, ending in a Pareto table). TFLite: the greedy fallback of
:mod:`qbench.host.fix`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import gates
from ..fix import PRECISIONS, Fixer
from ..repair import DEFAULT_METHODS, FAMILIES, Repair, Target, check_names
from .main import app
from ..run_options import RunOptions
from .options import device_option, with_run_options
from .tuning import finish, fmt, fmt_psnr, start_trials


@app.command()
@with_run_options
def fix(
    model: Path = typer.Argument(..., help="float model (.onnx or .tflite)"),
    device: str = device_option(),
    target_psnr: float = typer.Option(..., "--target-psnr", help="output PSNR to reach, dB"),
    methods: str = typer.Option(",".join(DEFAULT_METHODS), "--methods",
                                help="ONNX: calibration methods to try per model, comma-separated"),
    blocks: int = typer.Option(16, "--blocks", min=1, help="ONNX: blocks of ops the search moves"),
    remedies: str = typer.Option(",".join(FAMILIES), "--remedies",
                                 help=f"ONNX: configuration families to search, comma-separated: {', '.join(FAMILIES)}"),
    max_steps: int = typer.Option(8, "--max-steps", min=1, help="TFLite: fallback steps to measure at most"),
    max_latency_ratio: Optional[float] = typer.Option(
        None, "--max-latency-ratio", min=0.0, help="TFLite: stop when int8 latency exceeds this times the baseline's"),
    precision: str = typer.Option("float", "--precision", help="TFLite: " + " | ".join(PRECISIONS)),
    layers_per_step: int = typer.Option(1, "--layers-per-step", min=1, help="TFLite: layers moved per fallback step"),
    *,
    opts: RunOptions,
) -> None:
    """Quantize MODEL, then search for the smallest change that meets --target-psnr, measuring on DEVICE."""
    trials, ui = start_trials("fix", model, device, opts)
    console = Console(stderr=True)
    try:
        if trials.format.name == "onnx":
            search = Repair(trials, Target(target_psnr), _names(methods, "--methods", trials.format.methods),
                            blocks, _names(remedies, "--remedies", FAMILIES),
                            say=lambda line: None if opts.quiet else console.print(f"[dim]{line}[/]"))
            result = search.run()
        else:
            result = Fixer(trials, target_psnr, precision=precision, method=opts.calibration_method,
                           max_steps=max_steps, max_latency_ratio=max_latency_ratio,
                           layers_per_step=layers_per_step).run()
    finally:
        ui.close()
    section = result.report["fix"]
    onnx = "pareto" in section
    if not opts.as_json:
        if onnx:
            render_pareto(section, Console())
            verdict = "[green]met[/]" if result.met else f"[red]not met[/] ({section['stop']})"
            chosen = section["chosen"]
            console.print(f"target {target_psnr} dB {verdict}; {section['method']} calibration, {chosen['family']}: "
                          f"float blocks {chosen['float_blocks'] or 'none'}, int16 blocks {chosen['int16_blocks'] or 'none'}, "
                          f"{100 * chosen['int8_share']:.0f}% of ops in int8; {section['trials']} trials on the device")
        else:
            render_steps(section, Console())
            kept = section["kept_float"] or section["kept_int16"]
            verdict = "[green]met[/]" if result.met else f"[red]not met[/] ({section['stop']})"
            console.print(f"target {target_psnr} dB {verdict}; in {precision}: {', '.join(kept) or 'none'}")
    summary: dict[str, Any] = {"met": result.met, "output_psnr_db": result.report.get("summary", {}).get("output_psnr_db")}
    if onnx:
        summary.update(method=section["method"], chosen=section["chosen"], trials=section["trials"])
    else:
        summary.update(kept_float=section["kept_float"], kept_int16=section["kept_int16"], steps=len(section["steps"]))
    passed = finish(result.report, result.report_path, opts, summary)
    if not (result.met and passed):
        raise typer.Exit(gates.GATE_FAILED)


def _names(given: str, option: str, offered: tuple[str, ...]) -> tuple[str, ...]:
    return check_names(tuple(n.strip() for n in given.split(",") if n.strip()), option, offered)


def render_pareto(section: dict[str, Any], console: Console) -> None:
    """One row per measured configuration; the Pareto front timed and starred, the chosen one marked."""
    table = Table(title=f"fix: target {section['target_psnr_db']} dB, {section['method']} calibration "
                        f"(measured on the device)", header_style="bold")
    for column in ("family", "blocks moved", "out PSNR dB", "predicted dB", "int8 share", "int8 ms", "pareto"):
        table.add_column(column, justify="left" if column == "family" else "right")
    chosen = section["chosen"]["model"]
    for row in section["pareto"]:
        psnr = "exact" if row["exact"] else fmt(row["output_psnr_db"])
        mark = " [bold green]<- chosen[/]" if row["model"] == chosen else ""
        table.add_row(row["family"], str(row["blocks_moved"]), psnr, fmt(row["predicted_psnr_db"]),
                      f"{100 * row['int8_share']:.0f}%", fmt(row["latency_int8_ms"], digits=3),
                      ("*" if row["pareto"] else "") + mark)
    console.print(table)


def render_steps(section: dict[str, Any], console: Console) -> None:
    """One row per measured (or reused) step."""
    table = Table(title=f"fix: target {section['target_psnr_db']} dB, fallback to {section['precision']}",
                  header_style="bold")
    for column in ("step", "action", "layers", "out PSNR dB", "int8 ms", "vs base", "speedup", "int8 MB", "kept"):
        table.add_column(column, justify="left" if column in ("action", "layers") else "right",
                         min_width=8 if column == "action" else None)
    for step in section["steps"]:
        table.add_row(
            str(step["step"]), step["action"], ", ".join(step["layers"]) or "-", fmt_psnr(step),
            fmt(step["latency_int8_ms"], digits=3), fmt(step["latency_ratio"], "x"), fmt(step["speedup"], "x"),
            fmt(step["peak_mb_int8"], digits=1), "yes" if step["kept"] else "[red]no[/]",
        )
    console.print(table)
