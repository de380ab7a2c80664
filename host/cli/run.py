"""``qbench run``: compare a float model and its int8 version on a device."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .. import gates
from ..errors import UserError
from ..finish import write_run
from ..inventory import load_inventory
from ..ranking_sweep import measure_if_unexplained
from ..session import run as run_session
from ..store.db import ResultsStore
from ..targets import run_retrying
from ..transport.factory import transport_for
from . import main
from .main import INTERRUPTED_EXIT
from .main import app
from ..run_options import DEVICE, RunOptions, runner_for
from .options import device_option, with_run_options
from .render import RichUI, render_report
from .sensitivity import render_sensitivity


@app.command()
@with_run_options
def run(
    opts: RunOptions,
    model: Path = typer.Argument(..., help="float model (.onnx or .tflite)"),
    device: str = device_option(),
    provider: list[str] = typer.Option([], "--provider", rich_help_panel=DEVICE,
                                         help="ONNX Runtime execution provider (repeat, in order)"),
    delegate: Optional[str] = typer.Option(None, "--delegate", rich_help_panel=DEVICE,
                                           help="TFLite: xnnpack (default) | none | external name"),
) -> None:
    """Quantize (unless --int8), run float and int8 on DEVICE, and report PSNR, latency and memory."""
    opts.validate()
    err = Console(stderr=True)
    ui = RichUI(err, opts.quiet)
    inventory = load_inventory(opts.devices)
    dev = inventory.get(device)
    transport = transport_for(dev, opts.accept_new_host, opts.lab(inventory))
    runner = runner_for(model, dev, opts, provider, delegate)
    settings = opts.settings(model, device, runner, main.DEBUG)
    try:
        state = run_retrying(lambda on: run_session(settings, on, ui), transport)
        measure_if_unexplained(state, lambda: transport_for(dev, opts.accept_new_host, opts.lab(inventory)), ui)
    finally:
        ui.close()
    result = write_run(state, dev, opts.gates(), ResultsStore(opts.db))
    report, path, written, run_id, checks = (result.report, result.path, result.written, result.run_id,
                                             result.gate_failures)
    if report["status"] == "interrupted":
        print(f"qbench: interrupted during {state.error['stage']} (partial report in {path})", file=sys.stderr)
        raise typer.Exit(INTERRUPTED_EXIT)
    if opts.as_json:
        print(json.dumps({"report": str(path), "run_id": run_id, "status": report["status"],
                          **report.get("summary", {}), "gates_failed": [c.gate for c in checks],
                          **({"error": report["error"]} if "error" in report else {})}))
    else:
        render_report(report, Console())
        if "sensitivity" in report:  # measured by ranking_sweep
            render_sensitivity(report["sensitivity"], Console())
        for check in checks:
            Console(stderr=True).print(f"[bold red]gate failed:[/] {check.message}")
        lines = [f"report: {path} ({', '.join(p.name for p in written.values())})"]
        if state.int8_info:
            lines.append(f"int8 model: {state.int8_info.path}")
        if run_id is not None:
            lines.append(f"recorded as run {run_id} (qbench history)")
        Console(stderr=True).print("\n".join(lines))
    if state.error:
        first_line = (state.error["message"].splitlines() or [""])[0]
        files = state.error.get("files")
        kept = f"; kept {', '.join(files)}" if files else ""
        raise UserError(f"{state.error['stage']} failed: {first_line} (partial report in {path}{kept})") from state.cause
    if checks:
        raise typer.Exit(gates.GATE_FAILED)
