"""report.json (schema ``qbench.report/1``) from a run's state. Reads results, never a transport."""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path
from typing import Any

from qbench.protocols.messages import to_dict

from .. import __version__
from ..compare import metrics, verdicts
from ..run_state import RunState
from ..targets import target_label
from .coverage import coverage_section
from ..store.redact import redact_settings
from .profile import profile_section
from . import delegation, json_text
from .diagnosis import add_diagnosis, add_weights

SCHEMA = "qbench.report/1"


def build_report(state: RunState, argv: list[str] | None = None) -> dict[str, Any]:
    """The report of a run, complete or not (``error`` says which stage failed)."""
    s = state.settings
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "qbench_version": __version__,
        "status": _status(state),
        "device": _device(state),
        "models": {kind: _model(info) for kind, info in (("float", state.float_info), ("int8", state.int8_info))
                   if info is not None},
        "notes": state.notes,
        "settings": _settings(state, argv),
        "transfer": {"model_bytes_uploaded": state.uploaded_bytes},
    }
    if state.error:
        report["error"] = state.error
    if state.benchmarks:
        report["latency"] = {k: to_dict(b.latency) for k, b in state.benchmarks.items()}
        report["memory"] = {k: to_dict(b.memory) for k, b in state.benchmarks.items()}
        report["device"]["providers_used"] = next(iter(state.benchmarks.values())).providers_used
        profile = profile_section(s.profile_runs, state.benchmarks)
        if profile:
            report["profile"] = profile
        if len(state.benchmarks) == 2:
            f, q = state.benchmarks["float"], state.benchmarks["int8"]
            report["latency"]["speedup"] = _ratio(f.latency.median_ms, q.latency.median_ms)
            report["memory"]["ratio"] = _ratio(q.memory.peak_mb, f.memory.peak_mb)
    if state.capture is not None and state.matching is not None:
        _comparison(report, state)
    coverage = coverage_section(state)
    if coverage is not None:
        report["int8_coverage"] = coverage
        if "summary" in report:
            report["summary"]["int8_coverage"] = coverage["fraction"]
    add_diagnosis(report, state)
    return report


def _comparison(report: dict[str, Any], state: RunState) -> None:
    m, cap = state.matching, state.capture
    stats = cap.stats
    layers = []
    for index, (layer, st) in enumerate(zip(m.layers, stats)):
        qp = layer.pair.qparams
        step = qp.scale[0] if qp is not None and len(qp.scale) == 1 else None
        entry = {"index": index, "name": layer.name, "op_type": layer.op_type, "rule": layer.rule,
                 "int8_name": layer.pair.int8_name, "parents": layer.parents, **layer.user_fields}
        if st.unobservable or st.fused:
            entry.update({"psnr_db": None, "status": delegation.UNOBSERVABLE if st.unobservable else st.fused})
            if st.fused:
                entry["fused"] = True
        else:
            entry.update(metrics.figures(st, step))
        if st.graph_altered:
            entry["graph_altered"] = True
        if qp is not None and len(qp.scale) == 1:
            lo, hi = qp.levels()
            entry["quant_min"] = (lo - qp.zero_point[0]) * qp.scale[0]
            entry["quant_max"] = (hi - qp.zero_point[0]) * qp.scale[0]
        if st.hist_range is not None:
            entry["histogram"] = {"range": st.hist_range, "float": st.hist_float, "int8": st.hist_int8}
        layers.append(entry)
    report["layers"] = layers
    add_weights(report, state)  # before the drops: a layer's weights are an error source of its own
    metrics.flag_drops(layers, state.settings.drop_db)
    outputs = []
    for out, st in zip(m.outputs, stats[len(m.layers):]):
        fig = metrics.exact_figures(st) if out.pair.exact else {"kind": "float", **metrics.figures(st)}
        entry = {"name": out.name, **fig, **verdicts.structure_figures(st.structure)}
        entry["verdict"], entry["reasons"] = verdicts.judge(entry)
        outputs.append(entry)
    report["outputs"] = outputs
    report["unmatched"] = [u.to_dict() for u in m.unmatched]
    budget_mb = cap.budget_bytes / 2**20 if cap.budget_bytes else state.settings.memory_budget_mb
    report["capture"] = {"groups": len(cap.groups), "passes": len(cap.groups), "passes_planned": cap.passes_planned,
                         "source": cap.source, "source_note": cap.source_note, "budget_mb": budget_mb,
                         "budget_auto": state.settings.memory_budget_mb is None,
                         "fidelity_max_abs_diff": cap.fidelity_max_abs_diff,
                         "layers_graph_altered": sum(1 for x in layers if x.get("graph_altered")),
                         "layers_fused": sum(1 for x in layers if _fused(x)),
                         "peak_mb": cap.peak_mb, "phases_s": cap.phases_s}
    report["capture"].update(delegation.capture_fields(state))
    float_outs = [o for o in outputs if o.get("kind") == "float"]
    psnrs = [o["psnr_db"] for o in float_outs if o.get("psnr_db") is not None]
    ranked = sorted((x for x in layers if x.get("psnr_db") is not None), key=lambda x: x["psnr_db"])
    report["summary"] = {
        # the lowest output PSNR: undefined when an output holds NaN or infinity
        "output_psnr_db": min(psnrs) if psnrs and not any(o.get("nonfinite") for o in float_outs) else None,
        "outputs_exact": bool(float_outs) and all(o.get("exact") for o in float_outs),
        "verdict": verdicts.worst(o["verdict"] for o in outputs),
        "top1_agreement": min((a for a in map(verdicts.agreement, outputs) if a is not None), default=None),
        "speedup": report.get("latency", {}).get("speedup"),
        "memory_ratio": report.get("memory", {}).get("ratio"),
        "worst_layers": [x["name"] for x in ranked[: state.settings.worst]],
        "drops": [x["name"] for x in layers if x.get("drop")],
        "layers_compared": sum(1 for x in layers if x.get("status") != delegation.UNOBSERVABLE and not _fused(x)),
        "layers_unobservable": sum(1 for x in layers if x.get("status") == delegation.UNOBSERVABLE),
        "layers_unmatched": len(m.unmatched),
        "nonfinite_outputs": [o["name"] for o in outputs if o.get("nonfinite")],
        "nonfinite_layers": [x["name"] for x in layers if x.get("nonfinite")],
    }
    if m.control_flow is not None:
        report["summary"]["control_flow"] = m.control_flow.to_dict()


def _fused(layer: dict[str, Any]) -> bool:
    """A layer whose tensor the deployed graph no longer has (its ``status`` says which kernel took it)."""
    return bool(layer.get("fused"))


def _device(state: RunState) -> dict[str, Any]:
    s = state.settings
    device: dict[str, Any] = {"name": s.device, "runtime": s.runner.runtime}
    if state.agent:
        hello = state.agent["hello"]
        rt = hello.runtimes.get(s.runner.runtime)
        device.update({
            "transport": state.agent["label"], "arch": hello.machine, "system": hello.system,
            "python": hello.python, "cpu_count": hello.cpu_count, "cpu_features": hello.cpu_features,
            "total_memory_mb": round(hello.total_memory_bytes / 2**20, 1),
            "runtime_version": rt.version if rt else None,
            "available_providers": rt.providers if rt else [], "agent_version": hello.agent_version,
            "emulation": hello.emulation,
        })
    device.update(delegation.device_fields(state))
    device["target"] = target_label(s.device, device["providers"])  # tells a compare's targets apart in history
    return device


def _model(info) -> dict[str, Any]:
    return {"path": str(Path(info.path).resolve()), "sha256": info.sha256, "size_bytes": info.size_bytes, "format": info.format}


def _settings(state: RunState, argv: list[str] | None) -> dict[str, Any]:
    s = state.settings
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(s).items() if k not in ("runner", "timing")}
    out["runner"] = to_dict(s.runner)
    out["timing"] = to_dict(s.timing)
    out["argv"] = list(argv if argv is not None else sys.argv)
    return redact_settings(out)  # a delegate's token or password is not written down


def _status(state: RunState) -> str:
    """ok, failed (a stage failed: ``error``) or interrupted (Ctrl-C)."""
    if not state.error:
        return "ok"
    return "interrupted" if state.error.get("code") == "interrupted" else "failed"


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def write_json(report: dict[str, Any], path: Path, text: str | None = None) -> None:
    """Write atomically: a reader never sees half a report.

    ``text``: the report's ``json_text.dumps(report)`` when the caller has it already.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json_text.dumps(report, indent=2) if text is None else text)  # json.dumps(indent=2)'s text
    os.replace(tmp, path)
