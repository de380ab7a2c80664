"""compare.json (schema ``qbench.compare/1``) and its one table. Reads results, never a transport.

The document::

    {"schema": "qbench.compare/1", "created", "qbench_version", "models": {float, int8},
     "reference": label of the target the others are compared with (null if none returned outputs),
     "gates": thresholds applied to every target,
     "targets": [{"label", "device", "status": "ok"|"failed", "error", "report_path", "run_id",
                  "gates_failed": [messages], "outputs_note", "report": the target's qbench.report/1}],
     "cross": [{"target", "model": "int8"|"float", "output", "kind", "psnr_db", "exact", ...}],
     "table": [one row per target, see :func:`table`]}

``cross`` holds one row per (target, model, output) for every target but the reference
(definitions: :mod:`qbench.host.compare.cross`).
"""

from __future__ import annotations

import datetime
from typing import Any, Mapping

from .. import __version__
from .. import gates as gates_mod
from ..compare import cross as cross_mod

SCHEMA = "qbench.compare/1"


def build_compare(targets: list[dict[str, Any]], cross_rows: list[dict[str, Any]], reference: str | None,
                  gates: gates_mod.Gates) -> dict[str, Any]:
    """The compare document.

    Args:
        targets: one entry per target, in command-line order, with the keys listed in the module doc.
        cross_rows: from :func:`qbench.host.compare.cross.rows`, every target but the reference.
        reference: the reference target's label.
        gates: applied to every target.
    """
    models = next((t["report"]["models"] for t in targets if (t.get("report") or {}).get("models")), {})
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "qbench_version": __version__,
        "models": models,
        "reference": reference,
        "gates": gates.to_dict(),
        "targets": targets,
        "cross": cross_rows,
    }
    doc["table"] = table(doc)
    return doc


def table(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The comparison's one table, a row per target (terminal, ``--json`` and compare.html show it).

    A row: ``target``, ``status`` (ok|failed), ``error``, ``latency_ms`` {float, int8} (medians),
    ``speedup``, ``peak_mb`` {float, int8}, ``output_psnr_db`` (int8 vs float on the target, lowest
    output), ``worst_layers``, ``vs_reference`` {int8, float}: :func:`~qbench.host.compare.cross.summary`
    of the target's outputs against the reference's (``"reference"`` on the reference itself, None when
    not compared), ``ran`` (providers or delegate that ran, with delegated fraction), ``gates_failed``,
    ``device`` (name, arch, emulated, runtime).
    """
    rows = []
    by_target: dict[str, list[dict[str, Any]]] = {}
    for row in doc.get("cross") or []:
        by_target.setdefault(row["target"], []).append(row)
    for target in doc.get("targets") or []:
        report = target.get("report") or {}
        latency, memory, summary = report.get("latency") or {}, report.get("memory") or {}, report.get("summary") or {}
        label = target["label"]
        if label == doc.get("reference"):
            versus: Any = "reference"
        elif label in by_target:
            versus = {kind: cross_mod.summary(by_target[label], kind) for kind in cross_mod.KINDS}
        else:
            versus = None
        rows.append({
            "target": label,
            "device": _device(target, report),
            "status": target.get("status"),
            "error": target.get("error"),
            "latency_ms": {k: (latency.get(k) or {}).get("median_ms") for k in ("float", "int8")},
            "speedup": latency.get("speedup"),
            "peak_mb": {k: (memory.get(k) or {}).get("peak_mb") for k in ("float", "int8")},
            "output_psnr_db": summary.get("output_psnr_db"),
            "outputs_exact": summary.get("outputs_exact"),
            "worst_layers": summary.get("worst_layers") or [],
            "vs_reference": versus,
            "outputs_note": target.get("outputs_note"),
            "ran": ran_on(report),
            "gates_failed": target.get("gates_failed") or [],
        })
    return rows


def _device(target: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    device = report.get("device") or {}
    runtime = f"{device.get('runtime') or ''} {device.get('runtime_version') or ''}".strip()
    return {"name": target.get("device") or device.get("name"), "arch": device.get("arch"),
            "emulated": bool(device.get("emulated")), "runtime": runtime or None}


def ran_on(report: Mapping[str, Any]) -> str:
    """What ran the int8 model: providers, the delegate and the fraction of ops it took, or the accelerator."""
    device = report.get("device") or {}
    coverage = (device.get("coverage") or {}).get("int8")
    if coverage and "accelerator" in coverage:
        share = "all ops" if coverage.get("fully_accelerated") else "not all ops"
        return f"{coverage['accelerator']} accelerator ({share})"
    if coverage:
        return f"{coverage.get('delegate')} ({coverage.get('fraction', 0):.0%} of ops)"
    return ", ".join(device.get("providers_used") or []) or "-"


def reference_text(versus: Any, kind: str) -> str:
    """A ``vs_reference`` cell for people: ``reference``, ``-``, ``identical``, or the lowest PSNR in dB."""
    if versus is None or isinstance(versus, str):
        return versus or "-"
    figures = versus[kind]
    if figures["errors"]:
        return "; ".join(figures["errors"])
    if figures["exact"]:
        return "identical"
    text = "-" if figures["psnr_db"] is None else f"{figures['psnr_db']:.2f} dB"
    if figures["mismatches"]:
        text += f", {figures['mismatches']} mismatches"
    return text

