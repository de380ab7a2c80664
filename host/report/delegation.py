"""The report's record of delegates: what the timed runs used, what capture used, what it could not see."""

from __future__ import annotations

from typing import Any

from ..session import RunState
from ..session_tflite import capture_runner

#: the status of a layer whose tensor a delegate partition computes without ever writing it
UNOBSERVABLE = "inside delegate partition, not observable"


def device_fields(state: RunState) -> dict[str, Any]:
    """TFLite: ``delegate`` asked for the timed runs (also as ``providers``, which runs are compared by);
    ``coverage`` per model, as it ran.

    ``coverage[kind]`` is the agent's ``{delegate, delegated_ops, total_ops, fraction}``: ``delegate``
    is ``none`` when the delegate took no op, ``fraction`` = delegated_ops / total_ops.
    """
    runner = state.settings.runner
    fields: dict[str, Any] = {}
    if runner.runtime == "tflite":
        fields["delegate"] = _name(runner.delegate)
        fields["providers"] = [fields["delegate"]]
    coverage = {kind: reply.coverage for kind, reply in state.benchmarks.items() if reply.coverage}
    if coverage:
        fields["coverage"] = coverage
    return fields


def capture_fields(state: RunState) -> dict[str, Any]:
    """TFLite: ``delegate`` of the capture pass, and ``without_timing_delegate`` when it is not the timed one."""
    runner = state.settings.runner
    if runner.runtime != "tflite":
        return {}
    timed, captured = _name(runner.delegate), _name(capture_runner(state.settings).delegate)
    return {"delegate": captured, "without_timing_delegate": captured != timed}


def _name(delegate: str | None) -> str:
    return (delegate or "xnnpack").lower()


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What the terminal says about delegates: coverage per model, the capture delegate, hidden layers."""
    lines = []
    device = report.get("device", {})
    for kind, cov in device.get("coverage", {}).items():
        lines.append(f"{kind}: delegate {cov['delegate']} took {cov['delegated_ops']} of {cov['total_ops']} ops "
                     f"({cov['fraction']:.0%})")
    capture = report.get("capture", {})
    if capture.get("without_timing_delegate"):
        used = "builtin kernels (delegate none)" if capture["delegate"] == "none" else f"delegate {capture['delegate']}"
        lines.append(f"per-layer capture ran on {used}, not on the timed delegate {device.get('delegate')}: "
                     "layer and output PSNR are those of the capture run")
    hidden = report.get("summary", {}).get("layers_unobservable")
    if hidden:
        lines.append(f"{hidden} layers are {UNOBSERVABLE} (try --capture-delegate none)")
    return lines
