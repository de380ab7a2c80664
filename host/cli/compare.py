"""``qbench compare``: one float/int8 pair on several devices, delegates or providers, in one table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from .. import gates as gates_mod
from ..compare import cross
from ..compare.output_quant import int8_output_qparams
from ..errors import UserError
from ..gates import Gates
from ..inventory import Device, load_inventory
from ..report.build import write_json
from ..report.compare import build_compare
from ..report.html import write_compare_html
from ..run_state import RunSettings, RunState
from ..session import prepare_pair
from ..targets import Target, TargetRun, run_targets, target_label
from ..transport.factory import transport_for
from . import main
from .main import app
from .options import DEVICE, RunOptions, runner_for, with_run_options, write_run
from .render import RichUI
from .render_compare import CompareUI, progress_display, render_compare

COMPARE_JSON, COMPARE_HTML = "compare.json", "compare.html"


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
    targets = plan_targets(devices, model, delegate, provider, opts)
    err = Console(stderr=True)
    base = opts.settings(model, targets[0].device.name, dataclasses.replace(targets[0].runner), main.DEBUG, "compare")
    out_dir = base.out_dir
    ui = RichUI(err, opts.quiet)
    try:
        prepared, float_path, int8_path = prepare_pair(base, ui)
    finally:
        ui.close()
    # Every target gets the prepared pair as a given int8 model: nothing left to quantize or equalize.
    pair = dataclasses.replace(base, model=float_path, int8=int8_path, equalize=False, return_outputs=True,
                               user_model=base.model)
    runs = _run(targets, pair, opts, err, opts.lab(inventory))
    doc = _write(runs, prepared, opts.gates(), opts.db, out_dir, int8_output_qparams(int8_path))
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


def plan_targets(devices: list[Device], model: Path, delegates: list[str], providers: list[str],
                 opts: RunOptions) -> list[Target]:
    """Every device with every delegate (TFLite) or provider chain (ONNX); just the devices without either.

    A target's label is ``device`` or ``device:variant`` (``ExecutionProvider`` left out of provider names).

    Raises:
        UserError: a delegate for an ONNX model, a provider for a TFLite model, a target given twice.
    """
    targets: dict[str, Target] = {}
    for dev in devices:
        for variant in delegates or providers or [None]:
            label = dev.name if variant is None else target_label(dev.name, [variant])
            if label in targets:
                raise UserError(f"target {label} is given twice")
            chain = [p.strip() for p in variant.split(",") if p.strip()] if providers and variant else None
            runner = runner_for(model, dev, opts, chain or (), variant if delegates else None)
            targets[label] = Target(label, dev, runner)
    return list(targets.values())


def _run(targets: list[Target], pair: RunSettings, opts: RunOptions, err: Console, lab) -> list[TargetRun]:
    bars = progress_display(err, opts.quiet)
    uis = {t.label: CompareUI(err, opts.quiet, bars, t.label) for t in targets}

    def settings_for(target: Target) -> RunSettings:
        return dataclasses.replace(pair, device=target.device.name, runner=target.runner,
                                   out_dir=pair.out_dir / target.dirname)

    if bars is not None:
        bars.start()
    try:
        return run_targets(targets, settings_for, lambda t: transport_for(t.device, opts.accept_new_host, lab),
                           lambda t: uis[t.label])
    finally:
        if bars is not None:
            bars.stop()


def _write(runs: list[TargetRun], prepared: RunState, gates: Gates, db: Optional[Path], out_dir: Path,
           int8_qparams: dict) -> dict:
    """Each target's report (and record), then compare.json and compare.html; returns the compare document.

    Each target's report also says how the pair was prepared (``prepared``: notes, equalization).
    """
    entries: list[dict[str, Any]] = []
    outputs = {}
    for run in runs:
        entry: dict[str, Any] = {"label": run.target.label, "device": run.target.device.name,
                                 "status": "failed" if run.failure else "ok", "error": run.failure}
        if run.state is not None:
            run.state.notes[:0] = prepared.notes
            run.state.equalization = prepared.equalization
            written = write_run(run.state, run.target.device, gates, db)
            entry.update(report_path=str(written.path), run_id=written.run_id, report=written.report,
                         gates_failed=[check.message for check in written.gate_failures])
            if all(run.state.outputs.get(kind) for kind in cross.KINDS):
                outputs[run.target.label] = run.state.outputs
            else:
                entry["outputs_note"] = _no_outputs(run)
        entries.append(entry)
    reference = next(iter(outputs), None)
    rows = [row for label, out in outputs.items() if label != reference
            for row in cross.rows(outputs[reference], label, out, int8_qparams)]
    doc = build_compare(entries, rows, reference, gates)
    write_json(doc, out_dir / COMPARE_JSON)
    write_compare_html(doc, out_dir / COMPARE_HTML)
    return doc


def _no_outputs(run: TargetRun) -> str:
    if run.state.settings.accuracy_only:
        return "no outputs: --accuracy-only runs no timed sessions"
    omitted = [reply.outputs_omitted for reply in run.state.benchmarks.values() if reply.outputs_omitted]
    if omitted:
        return f"outputs not returned: {omitted[0]}"
    if run.failure:
        return "no outputs: the run failed before both models were timed"
    return "the agent returned no outputs (an agent older than this host?)"
