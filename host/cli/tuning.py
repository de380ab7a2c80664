"""What `calibrate` and `fix` share on the command line: setting up the trials, and the finish
(gates, the results database, the closing lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from ..api import make_trials
from ..errors import UserError
from ..finish import record_published
from ..inventory import load_inventory
from ..store.db import ResultsStore
from ..trials import Trials
from . import main
from ..run_options import RunOptions
from .render import RichUI


def start_trials(command: str, model: Path, device: str, opts: RunOptions) -> tuple[Trials, RichUI]:
    """Trials for ``model`` on ``device`` with the shared run options, and their UI (to close).

    Trials skip ``run``'s per-op profiling session: it would be repeated for every candidate.

    Raises:
        UserError: a bad option, an unknown device, or ``--int8`` (these commands quantize MODEL).
    """
    opts.validate()
    if opts.int8 is not None:
        raise UserError(f"`qbench {command}` quantizes MODEL itself; --int8 does not apply")
    dev = load_inventory(opts.devices).get(device)
    ui = RichUI(Console(stderr=True), opts.quiet)
    return make_trials(opts, model, dev, ui, main.DEBUG, command), ui


def finish(report: dict[str, Any], path: Path, opts: RunOptions, summary: dict[str, Any]) -> bool:
    """Records the published report, checks the gates on it, and prints the closing lines.

    Args:
        report: the published report.
        path: its report.json.
        opts: the shared options (gates, ``--db``, ``--json``).
        summary: the command's own result, printed as JSON with ``--json``.

    Returns:
        Whether every gate passed.
    """
    run_id, checks = record_published(report, path, opts.gates(), ResultsStore(opts.db))
    if opts.as_json:
        print(json.dumps({"report": str(path), "run_id": run_id, **summary,
                          "gates_failed": [c.gate for c in checks]}))
        return not checks
    err = Console(stderr=True)
    for check in checks:
        err.print(f"[bold red]gate failed:[/] {check.message}")
    err.print(f"report: {path}\nint8 model: {report['models']['int8']['path']}\n"
              f"recorded as run {run_id} (qbench history)")
    return not checks


def fmt(value: float | None, unit: str = "", digits: int = 2, signed: bool = False) -> str:
    """A table cell: ``value`` with ``digits`` decimals and ``unit``, or n/a."""
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}{unit}" if signed else f"{value:.{digits}f}{unit}"


def fmt_psnr(row: dict[str, Any]) -> str:
    """A row's output PSNR cell: exact when every float output matched bit for bit."""
    if row["output_psnr_db"] is None and row["outputs_exact"]:
        return "exact"
    return fmt(row["output_psnr_db"])
