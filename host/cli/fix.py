"""``qbench fix``: repair an int8 model until its output target holds, every figure measured on the device.

The remedy search of :mod:`qbench.host.repair` for every format: calibration method, int16
activations and float per block, ordered by measured sensitivity, ending in a Pareto table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import gates
from ..errors import UserError
from ..fix_target import Target
from ..repair import FAMILIES, Repair, check_names
from .main import app
from ..run_options import RunOptions
from .options import device_option, with_run_options
from .tuning import finish, fmt, start_trials


@app.command()
@with_run_options
def fix(
    model: Path = typer.Argument(..., help="float model (.onnx or .tflite)"),
    device: str = device_option(),
    target_psnr: Optional[float] = typer.Option(None, "--target-psnr", help="output PSNR to reach, dB"),
    target_top1: Optional[float] = typer.Option(
        None, "--target-top1", min=0.0, max=1.0,
        help="top-1 agreement (0..1) to reach on the outputs read by argmax (CTC: sequence agreement)"),
    methods: Optional[str] = typer.Option(
        None, "--methods", help="calibration methods to try per model, comma-separated (default: the format's)"),
    blocks: int = typer.Option(16, "--blocks", min=1, help="blocks of ops the search moves"),
    remedies: str = typer.Option(",".join(FAMILIES), "--remedies",
                                 help=f"configuration families to search, comma-separated: {', '.join(FAMILIES)}"),
    *,
    opts: RunOptions,
) -> None:
    """Quantize MODEL, then search for the smallest change that meets the target (--target-psnr,
    --target-top1; a broken output never meets it), measuring on DEVICE."""
    target = Target.of(target_psnr, target_top1)
    if opts.calibration_method != "minmax":
        raise UserError("`qbench fix` tries the calibration methods of --methods; --calibration-method does not apply")
    trials, ui = start_trials("fix", model, device, opts)
    console = Console(stderr=True)
    try:
        chosen_methods = None if methods is None else tuple(n.strip() for n in methods.split(",") if n.strip())
        result = Repair(trials, target, chosen_methods, blocks, _names(remedies, "--remedies", FAMILIES),
                        say=lambda line: None if opts.quiet else console.print(f"[dim]{line}[/]")).run()
    finally:
        ui.close()
    section = result.report["fix"]
    if not opts.as_json:
        render_pareto(section, Console())
        verdict = "[green]met[/]" if result.met else f"[red]not met[/] ({section['stop']})"
        chosen = section["chosen"]
        console.print(f"target {target.text()} {verdict}; {calibration(section)}, {chosen['family']}: "
                      f"float blocks {chosen['float_blocks'] or 'none'}, int16 blocks {chosen['int16_blocks'] or 'none'}, "
                      f"{100 * chosen['int8_share']:.0f}% of ops in int8; {section['trials']} trials on the device")
    summary: dict[str, Any] = {"met": result.met, "output_psnr_db": result.report.get("summary", {}).get("output_psnr_db"),
                               "method": section["method"], "bias_correction": section["bias_correction"],
                               "chosen": section["chosen"], "trials": section["trials"]}
    passed = finish(result.report, result.report_path, opts, summary)
    if not (result.met and passed):
        raise typer.Exit(gates.GATE_FAILED)


def _names(given: str, option: str, offered: tuple[str, ...]) -> tuple[str, ...]:
    return check_names(tuple(n.strip() for n in given.split(",") if n.strip()), option, offered)


def calibration(section: dict[str, Any]) -> str:
    """The base's calibration, in words."""
    corrected = " with bias correction" if section.get("bias_correction") else ""
    return f"{section['method']} calibration{corrected}"


def render_pareto(section: dict[str, Any], console: Console) -> None:
    """One row per measured configuration; the Pareto front timed and starred, the chosen one marked."""
    table = Table(title=f"fix: target {Target.from_dict(section['target']).text()}, {calibration(section)} "
                        f"(measured on the device)", header_style="bold")
    for column in ("family", "blocks moved", "out PSNR dB", "predicted dB", "top-1", "verdict", "int8 share", "int8 ms",
                   "pareto"):
        table.add_column(column, justify="left" if column == "family" else "right")
    chosen = section["chosen"]["model"]
    for row in section["pareto"]:
        psnr = "exact" if row["exact"] else fmt(row["output_psnr_db"])
        mark = " [bold green]<- chosen[/]" if row["model"] == chosen else ""
        table.add_row(row["family"], str(row["blocks_moved"]), psnr, fmt(row["predicted_psnr_db"]),
                      fmt(row["top1_agreement"], digits=3), row["verdict"] or "-",
                      f"{100 * row['int8_share']:.0f}%", fmt(row["latency_int8_ms"], digits=3),
                      ("*" if row["pareto"] else "") + mark)
    console.print(table)
