"""The end of a run: its report, the files written next to it, its history record and its gate checks.

``qbench run``, ``compare``, ``calibrate`` and ``fix`` end here, and so do their Python API
counterparts (:mod:`qbench.host.api`). Writing and recording are each optional: the API writes
files only into a folder the caller names and records a run only in a database the caller names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from . import gates as gates_mod
from .compare import cross
from .gates import GateCheck, Gates
from .inventory import Device
from .report import json_text
from .report.artifacts import write_artifacts
from .report.build import build_report, write_json
from .report.compare import build_compare
from .session import RunState
from .store.db import ResultsStore
from .targets import TargetRun

COMPARE_JSON, COMPARE_HTML = "compare.json", "compare.html"


@dataclass(frozen=True)
class FinishedRun:
    """What one finished (or failed) run wrote and recorded.

    Attributes:
        report: the ``qbench.report/1`` document.
        path: its report.json; None when nothing was written.
        written: the artifacts written next to it, by kind (``html``, ``csv``, ``overlay``).
        run_id: its id in the results database; None when not recorded.
        gate_failures: the gates it failed (none are checked on a failed run).
    """

    report: dict[str, Any]
    path: Optional[Path]
    written: dict[str, Path] = field(default_factory=dict)
    run_id: Optional[int] = None
    gate_failures: list[GateCheck] = field(default_factory=list)


def write_run(state: RunState, device: Device, gates: Gates, store: Optional[ResultsStore],
              write: bool = True) -> FinishedRun:
    """The report of ``state``; written with its artifacts into the run's directory unless ``write`` is False,
    recorded in ``store`` (when given) if complete or interrupted, and checked against ``gates``."""
    report = state.report if state.report is not None else build_report(state)
    report["device"]["emulated"] = bool(device.emulation)
    report["gates"] = gates.to_dict()
    text, compact = json_text.encode(report)  # report.json's and the database's copy: the numbers written once
    path, written = None, {}
    if write:
        path = state.settings.out_dir / "report.json"
        write_json(report, path, text)
        written = write_artifacts(report, state.settings.out_dir)
    # a failed run is not history; an interrupted one is, marked so (its status), with what it measured
    failed = state.error and report["status"] != "interrupted"
    run_id = None if failed or store is None else store.record(report, path, compact)
    checks = gates_mod.failures(report, gates) if gates.active and not state.error else []
    return FinishedRun(report, path, written, run_id, checks)


def record_published(report: Mapping[str, Any], path: Optional[Path], gates: Gates,
                     store: Optional[ResultsStore]) -> tuple[Optional[int], list[GateCheck]]:
    """The end of ``calibrate`` and ``fix``, whose trials wrote the published report already.

    Returns:
        Its run id in ``store`` (None without a store), and the gates it failed.
    """
    run_id = store.record(report, path) if store is not None else None
    return run_id, gates_mod.failures(report, gates) if gates.active else []


def write_compare(runs: list[TargetRun], prepared: RunState, gates: Gates, store: Optional[ResultsStore],
                  out_dir: Path, int8_qparams: dict, write: bool = True) -> dict[str, Any]:
    """Each target's report (and record), then compare.json and compare.html; returns the compare document.

    Each target's report also says how the pair was prepared (``prepared``: notes, equalization).
    With ``write`` False nothing is written: the document holds every target's report.
    """
    entries: list[dict[str, Any]] = []
    outputs = {}
    for run in runs:
        entry: dict[str, Any] = {"label": run.target.label, "device": run.target.device.name,
                                 "status": "failed" if run.failure else "ok", "error": run.failure}
        if run.state is not None:
            run.state.notes[:0] = prepared.notes
            run.state.equalization = prepared.equalization
            finished = write_run(run.state, run.target.device, gates, store, write)
            entry.update(report_path=str(finished.path) if finished.path else None, run_id=finished.run_id,
                         report=finished.report, gates_failed=[check.message for check in finished.gate_failures])
            if all(run.state.outputs.get(kind) for kind in cross.KINDS):
                outputs[run.target.label] = run.state.outputs
            else:
                entry["outputs_note"] = _no_outputs(run)
        entries.append(entry)
    reference = next(iter(outputs), None)
    rows = [row for label, out in outputs.items() if label != reference
            for row in cross.rows(outputs[reference], label, out, int8_qparams)]
    doc = build_compare(entries, rows, reference, gates)
    if write:
        from .report.html import write_compare_html  # plotly: not for `run`, which imports this module early

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
