"""``qbench fix``: keep the most sensitive layers in higher precision until the output PSNR target holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import gates
from ..fix import PRECISIONS, Fixer
from .main import app
from .options import RunOptions, with_run_options
from .tuning import finish, fmt, fmt_psnr, start_trials


@app.command()
@with_run_options
def fix(
    model: Path = typer.Argument(..., help="float model (.onnx or .tflite)"),
    device: str = typer.Option("local", "--device", "-d", help="device name from devices.yaml; `local` needs none"),
    target_psnr: float = typer.Option(..., "--target-psnr", help="output PSNR to reach, dB"),
    max_steps: int = typer.Option(8, "--max-steps", min=1, help="fallback steps to measure at most"),
    max_latency_ratio: Optional[float] = typer.Option(
        None, "--max-latency-ratio", min=0.0, help="stop when int8 latency exceeds this times the baseline's"),
    precision: str = typer.Option("float", "--precision", help=" | ".join(PRECISIONS)),
    layers_per_step: int = typer.Option(1, "--layers-per-step", min=1, help="layers moved per fallback step"),
    *,
    opts: RunOptions,
) -> None:
    """Quantize MODEL, then move its most sensitive layers to float or int16, measuring every step on DEVICE."""
    trials, ui = start_trials("fix", model, device, opts)
    fixer = Fixer(trials, target_psnr, precision=precision, method=opts.calibration_method, max_steps=max_steps,
                  max_latency_ratio=max_latency_ratio, layers_per_step=layers_per_step)
    try:
        result = fixer.run()
    finally:
        ui.close()
    section = result.report["fix"]
    if not opts.as_json:
        render_steps(section, Console())
        kept = section["kept_float"] or section["kept_int16"]
        verdict = "[green]met[/]" if result.met else f"[red]not met[/] ({section['stop']})"
        Console(stderr=True).print(f"target {target_psnr} dB {verdict}; in {precision}: {', '.join(kept) or 'none'}")
    passed = finish(result.report, result.report_path, opts, {
        "met": result.met, "output_psnr_db": result.report.get("summary", {}).get("output_psnr_db"),
        "kept_float": section["kept_float"], "kept_int16": section["kept_int16"], "steps": len(section["steps"]),
    })
    if not (result.met and passed):
        raise typer.Exit(gates.GATE_FAILED)


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
