"""`qbench history`, `qbench diff` and `qbench view`: looking back at recorded runs."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..report.exports import OVERLAY_NAME, model_format_of, write_model_explorer_overlay
from ..store import ResultsStore, diff_reports
from ..store.diff import Change, RunDiff
from .main import app

_DB_HELP = "results database (default: $QBENCH_DB, else results.sqlite in the user data directory)"


@app.command()
def history(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model file name, path or sha256 prefix"),
    device: Optional[str] = typer.Option(None, "--device", "-d",
                                         help="device name, target (device:runner) or architecture"),
    db: Optional[Path] = typer.Option(None, "--db", help=_DB_HELP),
    limit: int = typer.Option(50, "--limit", min=1, help="show at most this many runs"),
    as_json: bool = typer.Option(False, "--json", help="print the runs as JSON on stdout"),
) -> None:
    """List recorded runs, newest first."""
    store = ResultsStore(db)
    rows = store.history(model=model, device=device, limit=limit)
    if as_json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
        return
    if not rows:
        Console(stderr=True).print(f"no runs recorded in {store.path}" + (" match" if model or device else ""))
        return
    table = Table(title=f"qbench runs · {store.path}", header_style="bold")
    for column in ("id", "created", "model", "target", "runtime", "output PSNR", "int8 median", "speedup",
                   "int8 peak", "drops"):
        table.add_column(column, justify="left" if column in ("created", "model", "target", "runtime") else "right")
    for row in rows:
        device_text = (f"{row.target or row.device_name or '-'} "
                       f"({row.device_arch or '?'}{', emulated' if row.emulated else ''})")
        psnr = _num(row.output_psnr_db, " dB") if row.status == "ok" else f"[red]{row.status}[/red]"
        table.add_row(
            str(row.id), row.created[:16].replace("T", " "), row.model_name or "-", device_text,
            f"{row.runtime or '-'} {row.runtime_version or ''}".strip(), psnr,
            _num(row.int8_median_ms, " ms", 3), _num(row.speedup, "x"), _num(row.int8_peak_mb, " MB", 1),
            str(row.n_drops),
        )
    _stdout().print(table)


@app.command()
def diff(
    run_a: str = typer.Argument(..., help="baseline: a run id, a report.json, or its directory"),
    run_b: str = typer.Argument(..., help="the run to compare with it (same forms)"),
    db: Optional[Path] = typer.Option(None, "--db", help=_DB_HELP),
    top: int = typer.Option(10, "--top", min=1, help="how many layers whose PSNR moved most"),
    as_json: bool = typer.Option(False, "--json", help="print the diff as JSON on stdout"),
) -> None:
    """Show what changed from RUN_A to RUN_B: latency, memory, output PSNR, layers whose PSNR moved most."""
    store = ResultsStore(db)
    result = diff_reports(_load_run(run_a, store), _load_run(run_b, store), top=top)
    if as_json:
        print(json.dumps(result.to_dict(), indent=1))
        return
    _render_diff(result, run_a, run_b, _stdout())


@app.command()
def view(
    report: Path = typer.Argument(..., help="report.json, or the run's output directory"),
    port: Optional[int] = typer.Option(None, "--port", help="Model Explorer server port"),
    no_browser: bool = typer.Option(False, "--no-browser", help="start the server without opening a browser"),
) -> None:
    """Open the float model in Model Explorer with each layer coloured by its PSNR."""
    report_path = _report_file(report)
    data = _read_report(report_path)
    float_model = (data.get("models") or {}).get("float") or {}
    model_path = Path(float_model.get("path") or "")
    if not model_path.is_file():
        raise UserError(f"float model {model_path} named in {report_path} is not there any more")
    model_format = float_model.get("format") or model_format_of(model_path)
    if importlib.util.find_spec("model_explorer") is None:
        raise UserError("Model Explorer is not installed: pip install 'qbench[explorer]'")
    if model_format == "onnx" and importlib.util.find_spec("model_explorer_onnx") is None:
        raise UserError("Model Explorer needs its ONNX extension for .onnx models: pip install 'qbench[explorer]' "
                        "(or pip install model-explorer-onnx)")
    overlay = report_path.with_name(OVERLAY_NAME)
    if not overlay.is_file():
        write_model_explorer_overlay(data, overlay, model_format)
    command = [sys.executable, "-m", "model_explorer", str(model_path), f"--node_data_paths={overlay}"]
    if model_format == "onnx":
        command.append("--extensions=model_explorer_onnx")
    if port is not None:
        command.append(f"--port={port}")
    if no_browser:
        command.append("--no_open_in_browser")
    sys.stdout.flush()
    # Become the Model Explorer server, so Ctrl+C and signals reach it directly.
    os.execv(sys.executable, command)


def _stdout() -> Console:
    """The console for tables; wide when piped, so rows stay whole for grep and files."""
    console = Console()
    return console if console.is_terminal else Console(width=240)


def _report_file(path: Path) -> Path:
    candidate = path / "report.json" if path.is_dir() else path
    if not candidate.is_file():
        raise UserError(f"{path}: no report.json there")
    return candidate


def _read_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable report.json ({exc})") from exc
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("qbench.report/"):
        raise UserError(f"{path}: not a qbench report")
    return data


def _load_run(ref: str, store: ResultsStore) -> dict[str, Any]:
    """A run id from the store, or a report.json (or its directory) on disk."""
    if ref.isdigit() and not Path(ref).exists():
        return store.get(int(ref))
    return _read_report(_report_file(Path(ref)))


def _num(value: Optional[float], unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _change_table(title: str, changes: list[Change]) -> Table:
    table = Table(title=title, header_style="bold", title_justify="left")
    for column in ("", "A", "B", "B - A", "B / A"):
        table.add_column(column, justify="left" if not column else "right")
    for change in changes:
        delta = "" if change.delta is None else f"{change.delta:+.4g}"
        ratio = "" if change.ratio is None else f"{change.ratio:.3f}"
        table.add_row(change.name, _show(change.a), _show(change.b), delta, ratio)
    return table


def _render_diff(result: RunDiff, run_a: str, run_b: str, console: Console) -> None:
    console.print(f"[bold]qbench diff[/bold]  A = {run_a}   B = {run_b}")
    if result.context:
        console.print(_change_table("what differs between the runs", result.context))
    else:
        console.print("same device, runtime, providers and models")
    console.print(_change_table("latency (ms)", result.latency))
    console.print(_change_table("memory (MB)", result.memory))
    console.print(_change_table("outputs", result.outputs))
    if result.layers_moved:
        table = Table(title="layers whose PSNR moved most", header_style="bold", title_justify="left")
        for column in ("layer", "op", "A dB", "B dB", "B - A"):
            table.add_column(column, justify="left" if column in ("layer", "op") else "right")
        for move in result.layers_moved:
            delta = "exactness changed" if move.delta_db is None else f"{move.delta_db:+.2f}"
            table.add_row(move.name, move.op_type or "", _num(move.a_db) if move.a_db is not None else "exact",
                          _num(move.b_db) if move.b_db is not None else "exact", delta)
        console.print(table)
    else:
        console.print("no layer PSNR changed")
    if result.layers_only_a or result.layers_only_b:
        console.print(f"layers only in A: {len(result.layers_only_a)}, only in B: {len(result.layers_only_b)} "
                      "(not compared)")
