"""``qbench compare``: one float/int8 pair on several devices, delegates or providers, in one table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.console import Console

from .. import gates as gates_mod
from ..compare.output_quant import int8_output_qparams
from ..errors import UserError
from ..finish import COMPARE_HTML, COMPARE_JSON, write_compare
from ..inventory import load_inventory
from ..run_state import RunSettings
from ..session import prepare_pair
from ..store.db import ResultsStore
from ..targets import Target, TargetRun, device_hellos, pair_settings, plan_targets, run_targets, target_settings
from ..transport.factory import transport_for
from . import main
from .main import app
from ..run_options import DEVICE, RunOptions, runner_for
from .options import with_run_options
from .render import RichUI
from .render_compare import CompareUI, progress_display, render_compare


@app.command()
@with_run_options
def compare(
    opts: RunOptions,
    model: Path = typer.Argument(..., help="float model (.onnx or .tflite)"),
    device: list[str] = typer.Option([], "--device", "-d", rich_help_panel=DEVICE,
                                     help="a device from devices.yaml (repeat: one target each; default: local)"),
    delegate: list[str] = typer.Option([], "--delegate", rich_help_panel=DEVICE,
                                       help="TFLite: xnnpack | none | an external delegate "
                                            "(repeat: one target each, on every device)"),
    provider: list[str] = typer.Option([], "--provider", rich_help_panel=DEVICE,
                                       help="ONNX Runtime execution provider; A,B is one chain "
                                            "(repeat: one target each, on every device)"),
) -> None:
    """Run one float/int8 pair on every target (devices x delegates or providers) and compare them in one table."""
    opts.validate()
    inventory = load_inventory(opts.devices)
    devices = [inventory.get(name) for name in device or ["local"]]
    targets = plan_targets(devices, delegate, provider,
                           lambda dev, chain, variant: runner_for(model, dev, opts, chain, variant))
    err = Console(stderr=True)
    base = opts.settings(model, targets[0].device.name, dataclasses.replace(targets[0].runner), main.DEBUG, "compare")
    out_dir = base.out_dir
    ui = RichUI(err, opts.quiet)
    lab = opts.lab(inventory)
    try:
        prepared, float_path, int8_path = prepare_pair(base, ui, lambda: device_hellos(
            targets, lambda t: transport_for(t.device, opts.accept_new_host, lab), base.timeout_s))
    finally:
        ui.close()
    pair = pair_settings(base, float_path, int8_path)
    runs = _run(targets, pair, opts, err, lab)
    doc = write_compare(runs, prepared, opts.gates(), ResultsStore(opts.db), out_dir, int8_output_qparams(int8_path))
    path = out_dir / COMPARE_JSON
    if opts.as_json:
        print(json.dumps({"compare": str(path), "reference": doc["reference"], "table": doc["table"]}))
    else:
        render_compare(doc, Console(width=None if Console().is_terminal else 120))  # logs are wider than 80
        err.print(f"compare report: {path} ({COMPARE_HTML}); one report per target in {out_dir}/<target>/")
    failed = [run for run in runs if run.failure]
    if failed:
        labels = ", ".join(run.target.label for run in failed)
        raise UserError(f"{len(failed)} of {len(runs)} targets failed ({labels}; why: in the table and {path}); "
                        "the others' results are kept")
    if any(entry.get("gates_failed") for entry in doc["targets"]):
        raise typer.Exit(gates_mod.GATE_FAILED)


def _run(targets: list[Target], pair: RunSettings, opts: RunOptions, err: Console, lab) -> list[TargetRun]:
    bars = progress_display(err, opts.quiet)
    uis = {t.label: CompareUI(err, opts.quiet, bars, t.label) for t in targets}
    if bars is not None:
        bars.start()
    try:
        return run_targets(targets, lambda t: target_settings(pair, t),
                           lambda t: transport_for(t.device, opts.accept_new_host, lab), lambda t: uis[t.label])
    finally:
        if bars is not None:
            bars.stop()
