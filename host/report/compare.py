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
    not compared), ``ran`` (providers or delegate that ran, with delegated fraction), ``execution``
    (:func:`execution_split`), ``layers_vs_reference`` (:func:`layer_divergence`, empty on the reference),
    ``gates_failed``, ``device`` (name, arch, emulated, runtime).
    """
    rows = []
    by_target: dict[str, list[dict[str, Any]]] = {}
    for row in doc.get("cross") or []:
        by_target.setdefault(row["target"], []).append(row)
    reference_report = next((t.get("report") for t in doc.get("targets") or []
                             if t["label"] == doc.get("reference")), None)
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
            "execution": execution_split(report),
            "layers_vs_reference": (layer_divergence(reference_report, report)
                                    if reference_report and label != doc.get("reference") else []),
            "gates_failed": target.get("gates_failed") or [],
        })
    return rows


def _device(target: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    device = report.get("device") or {}
    runtime = f"{device.get('runtime') or ''} {device.get('runtime_version') or ''}".strip()
    return {"name": target.get("device") or device.get("name"), "arch": device.get("arch"),
            "emulated": bool(device.get("emulated")), "runtime": runtime or None}


def ran_on(report: Mapping[str, Any]) -> str:
    """What ran the int8 model: providers (with their share of kernel time when profiled), the
    delegate and the fraction of ops it took, or the accelerator."""
    device = report.get("device") or {}
    coverage = (device.get("coverage") or {}).get("int8")
    if coverage and "accelerator" in coverage:
        share = "all ops" if coverage.get("fully_accelerated") else "not all ops"
        return f"{coverage['accelerator']} accelerator ({share})"
    if coverage:
        return f"{coverage.get('delegate')} ({coverage.get('fraction', 0):.0%} of ops)"
    split = execution_split(report).get("int8")
    if split and len(device.get("providers_used") or []) > 1:
        return "; ".join(f"{_short(p)}: {e['kernels']} kernel{'s' if e['kernels'] != 1 else ''}, {e['share']:.0%} of time"
                         for p, e in split.items())
    return ", ".join(device.get("providers_used") or []) or "-"


def execution_split(report: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model, which provider ran what, as far as ONNX Runtime's profile says.

    ORT does not list the nodes an execution provider claimed; its profile names each kernel it ran
    with its provider: an EP that compiles subgraphs (OpenVINO) shows one kernel per fused subgraph
    (``OpenVINO-EP-subgraph_N``), the CPU provider one per op type it ran as a fallback. Per model:
    ``{provider: {kernels, names, share}}``, ``kernels`` = distinct kernels (fused subgraphs or op
    types), ``share`` = that provider's part of the profiled kernel time. Empty without a profile.
    """
    split: dict[str, dict[str, dict[str, Any]]] = {}
    for model, entries in ((report.get("profile") or {}).items()):
        if model not in ("float", "int8") or not entries:
            continue
        total = sum(e.get("total_ms") or 0.0 for e in entries) or 1.0
        per: dict[str, dict[str, Any]] = {}
        for entry in entries:
            slot = per.setdefault(entry.get("provider") or "?", {"kernels": 0, "names": [], "share": 0.0})
            slot["kernels"] += 1
            slot["names"].append(entry.get("op_type"))
            slot["share"] += (entry.get("total_ms") or 0.0) / total
        split[model] = {p: {**e, "share": round(e["share"], 4)} for p, e in per.items()}
    return split


def layer_divergence(reference: Mapping[str, Any], report: Mapping[str, Any], top: int = 10) -> list[dict[str, Any]]:
    """The layers whose int8-vs-float PSNR on this target differs most from the reference target's.

    Each target measures its own int8 against its own float, layer by layer, on the same inputs, so
    ``delta_db = psnr_db − reference_psnr_db`` says where one target's kernels lose (or keep) more than
    the other's. Layers with a finite PSNR on both, largest ``|delta_db|`` first; an exact layer on one
    side only is listed with ``delta_db: null`` and ``exact_on`` naming that side.
    """
    theirs = {layer["name"]: layer for layer in reference.get("layers") or []}
    rows = []
    for layer in report.get("layers") or []:
        other = theirs.get(layer["name"])
        if other is None:
            continue
        mine, ref = layer.get("psnr_db"), other.get("psnr_db")
        row = {"name": layer["name"], "op_type": layer.get("op_type"), "psnr_db": mine, "reference_psnr_db": ref}
        if mine is not None and ref is not None:
            rows.append({**row, "delta_db": round(mine - ref, 4)})
        elif bool(layer.get("exact")) != bool(other.get("exact")):
            rows.append({**row, "delta_db": None, "exact_on": "target" if layer.get("exact") else "reference"})
    rows.sort(key=lambda r: -1.0 if r["delta_db"] is None else -abs(r["delta_db"]))
    return [r for r in rows if r["delta_db"] is None or r["delta_db"] != 0.0][:top]


def _short(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


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

