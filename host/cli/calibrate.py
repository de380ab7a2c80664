"""``qbench calibrate``: quantize with each calibration method, measure each on the device, keep the best."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import gates
from ..calibrate import calibrate as compare_methods
from ..calibrate import check_methods
from ..errors import UserError
from ..quantize.onnx import METHODS
from ..quantize.tflite import METHODS as TFLITE_METHODS
from .main import app
from ..run_options import QUANTIZATION, RunOptions
from .options import device_option, with_run_options
from .tuning import finish, fmt, fmt_psnr, start_trials


@app.command()
@with_run_options
def calibrate(
    model: Path = typer.Argument(..., help="float model (.onnx or .tflite)"),
    device: str = device_option(),
    methods: Optional[str] = typer.Option(
        None, "--methods", rich_help_panel=QUANTIZATION,
        help=f"comma-separated; ONNX: {','.join(METHODS)} (default: all); "
             f"TFLite: {','.join(TFLITE_METHODS)} (default: all)"),
    *,
    opts: RunOptions,
) -> None:
    """Quantize MODEL once per calibration method, measure each on DEVICE, and keep the best as the int8 model."""
    if opts.calibration_method != "minmax":
        raise UserError("`qbench calibrate` tries every method of --methods; --calibration-method does not apply")
    trials, ui = start_trials("calibrate", model, device, opts)
    try:
        path, report = compare_methods(trials, check_methods(
            None if methods is None else [m.strip() for m in methods.split(",") if m.strip()],
            trials.format.methods, trials.format.name))
    finally:
        ui.close()
    table = report["calibration"]
    if not opts.as_json:
        render_methods(table["methods"], Console(), table["note"])
        Console(stderr=True).print(f"winner (*): [bold]{table['winner']}[/] (highest output PSNR; ties: lower int8 latency)")
    passed = finish(report, path, opts, {"winner": table["winner"], "methods": table["methods"]})
    if not passed:
        raise typer.Exit(gates.GATE_FAILED)


def render_methods(rows: list[dict[str, Any]], console: Console, note: str | None = None) -> None:
    """The methods table: the seed article's Table 1, measured on the device; ``note`` goes under it."""
    caption = "PSNR in dB (out: model output); worse: layers > 1 dB below the winner's (*); Δ: mean layer PSNR - winner's"
    table = Table(title="calibration methods (each measured on the device)", header_style="bold",
                  caption=f"{caption}\n{note}" if note else caption)
    for column in ("method", "out", "layer mean", "layer min", "worse", "Δ", "int8 ms", "speedup", "int8 MB"):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=column == "method")
    for row in rows:
        if "error" in row:
            table.add_row(row["method"], f"[red]failed: {row['error']}[/]", *[""] * 7)
            continue
        table.add_row(
            f"[bold]{row['method']}[/] *" if row["winner"] else row["method"], fmt_psnr(row),
            fmt(row["layer_psnr_mean_db"]), fmt(row["layer_psnr_min_db"]),
            f"{row['layers_worse']}/{row['layers_compared']}", fmt(row["layer_delta_mean_db"], signed=True),
            fmt(row["latency_int8_ms"], digits=3), fmt(row["speedup"], "x"), fmt(row["peak_mb_int8"], digits=1),
        )
    console.print(table)

