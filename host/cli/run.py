"""``qbench run``: compare a float model and its int8 version on a device."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from qbench.protocols.messages import RunnerConfig, TimingConfig

from .. import gates
from ..errors import UserError
from ..gates import Gates
from ..quantize.prepare import parse_input_shapes
from ..report.artifacts import write_artifacts
from ..report.build import build_report, write_json
from ..session import RunSettings, run as run_session
from ..store.db import ResultsStore
from ..inventory import load_inventory
from ..transport.factory import transport_for
from . import main
from .main import app
from .render import RichUI, render_report

METHODS = ("minmax", "entropy", "percentile", "distribution")


def default_out_dir(model: Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("qbench-out") / f"{model.stem}-{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


@app.command()
def run(
    model: Path = typer.Argument(..., help="float model (.onnx)"),
    device: str = typer.Option("local", "--device", "-d", help="device name from devices.yaml; `local` needs none"),
    devices: Optional[Path] = typer.Option(None, "--devices", envvar="QBENCH_DEVICES", help="inventory file"),
    int8: Optional[Path] = typer.Option(None, "--int8", help="your int8 model; otherwise qbench quantizes MODEL"),
    input_shape: list[str] = typer.Option([], "--input-shape", help="name:d0,d1,... fixes dynamic dims (repeat)"),
    data: Optional[Path] = typer.Option(None, "--data", help="evaluation samples: .npz, one (N, *shape) array per input"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="calibration samples (.npz, as --data)"),
    samples: int = typer.Option(4, "--samples", min=1, help="random evaluation samples when --data is not given"),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="|".join(METHODS)),
    activation_type: str = typer.Option("int8", "--activation-type", help="int8 | uint8"),
    runs: int = typer.Option(20, "--runs", min=1, help="timed runs, at least"),
    warmup: int = typer.Option(5, "--warmup", min=0, help="untimed runs before timing"),
    min_seconds: float = typer.Option(0.5, "--min-seconds", min=0.0, help="time each model at least this long"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="runtime threads (default: device's)"),
    provider: list[str] = typer.Option([], "--provider", help="ONNX Runtime execution provider (repeat, in order)"),
    memory_budget: float = typer.Option(256.0, "--memory-budget", min=1.0, help="MB of tensors per capture pass"),
    drop_db: float = typer.Option(6.0, "--drop-db", help="flag layers whose PSNR falls more than this below inputs"),
    worst: int = typer.Option(5, "--worst", min=0, help="how many worst layers to print"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default: a new one in ./qbench-out)"),
    seed: int = typer.Option(0, "--seed"),
    timeout: float = typer.Option(60.0, "--timeout", min=1.0, help="seconds of agent silence before giving up"),
    accept_new_host: bool = typer.Option(False, "--accept-new-host", help="trust an SSH host key not yet known"),
    fail_under_psnr: Optional[float] = typer.Option(None, "--fail-under-psnr", help="gate: output PSNR below DB"),
    fail_under_speedup: Optional[float] = typer.Option(None, "--fail-under-speedup", help="gate: speedup below X"),
    fail_over_memory: Optional[float] = typer.Option(None, "--fail-over-memory", help="gate: int8 peak memory over MB"),
    fail_on_drop: bool = typer.Option(False, "--fail-on-drop", help="gate: any sudden PSNR drop"),
    db: Optional[Path] = typer.Option(None, "--db", help="results database (default: in the user data dir)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or notes"),
) -> None:
    """Quantize (unless --int8), run float and int8 on DEVICE, and report PSNR, latency and memory."""
    if calibration_method not in METHODS:
        raise UserError(f"--calibration-method must be one of {', '.join(METHODS)}, not {calibration_method!r}")
    if activation_type not in ("int8", "uint8"):
        raise UserError(f"--activation-type must be int8 or uint8, not {activation_type!r}")
    err = Console(stderr=True)
    ui = RichUI(err, quiet)
    out_dir = out or default_out_dir(model)
    dev = load_inventory(devices).get(device)
    transport = transport_for(dev, accept_new_host)
    runner = RunnerConfig(runtime=dev.runtime, providers=provider or dev.provider_names,
                          provider_options=[] if provider else dev.provider_options,
                          threads=threads or dev.threads)
    settings = RunSettings(
        model=model, out_dir=out_dir, int8=int8, device=device, input_shapes=parse_input_shapes(input_shape),
        data=data, calibration=calibration, samples=samples, calibration_method=calibration_method,
        activation_type=activation_type, seed=seed, runner=runner,
        timing=TimingConfig(warmup=warmup, runs=runs, min_seconds=min_seconds),
        memory_budget_mb=memory_budget, drop_db=drop_db, worst=worst, timeout_s=timeout, debug=main.DEBUG,
    )
    try:
        state = run_session(settings, transport, ui)
    finally:
        ui.close()
    report = build_report(state)
    report["device"]["emulated"] = bool(dev.emulation)
    gate_set = Gates(fail_under_psnr, fail_under_speedup, fail_over_memory, fail_on_drop)
    report["gates"] = gate_set.to_dict()
    path = out_dir / "report.json"
    write_json(report, path)
    written = write_artifacts(report, out_dir)
    run_id = None if state.error else ResultsStore(db).record(report, path)
    checks = gates.failures(report, gate_set) if gate_set.active and not state.error else []
    if as_json:
        print(json.dumps({"report": str(path), "run_id": run_id, "status": report["status"],
                          **report.get("summary", {}), "gates_failed": [c.gate for c in checks],
                          **({"error": report["error"]} if "error" in report else {})}))
    else:
        render_report(report, Console())
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
        raise UserError(f"{state.error['stage']} failed: {first_line} (partial report in {path})")
    if checks:
        raise typer.Exit(gates.GATE_FAILED)
