"""The report's record of delegates: what the timed runs used, what capture used, what it could not see."""

from __future__ import annotations

from typing import Any

from qbench.protocols.messages import LiteRTRunnerConfig, OrtRunnerConfig

from ..formats.tflite import COMPILED_RUNTIME, TFLiteFormat
from ..run_state import RunState

#: the status of a layer whose tensor a delegate partition computes without ever writing it
UNOBSERVABLE = "inside delegate partition, not observable"


def device_fields(state: RunState) -> dict[str, Any]:
    """``providers``: ONNX Runtime's chain as asked for. TFLite: ``delegate`` asked for the timed runs, or ``accelerator`` when LiteRT's CompiledModel timed
    them (also as ``providers``, which runs are compared by); ``available_accelerators`` the agent's
    probe found; ``coverage`` per model, as it ran.

    ``coverage[kind]`` is the agent's ``{delegate, delegated_ops, total_ops, fraction, partitions,
    outside}``: ``delegate`` is ``none`` when the delegate took no op, ``fraction`` = delegated_ops /
    total_ops, ``outside`` op type -> the nodes left to LiteRT's builtin kernels. With an
    accelerator it is ``{accelerator, fully_accelerated, cpu_fallback, fallback_reason}`` instead.
    """
    runner = state.settings.runner
    fields: dict[str, Any] = {}
    if isinstance(runner, OrtRunnerConfig):
        fields["providers"] = runner.providers
    if isinstance(runner, LiteRTRunnerConfig):
        if runner.accelerator:
            fields["accelerator"] = runner.accelerator
            fields["providers"] = [f"CompiledModel:{runner.accelerator}"]
        else:
            fields["delegate"] = _name(runner.delegate)
            fields["providers"] = [fields["delegate"]]
        compiled = state.agent["hello"].runtimes.get(COMPILED_RUNTIME) if state.agent else None
        if compiled is not None:
            fields["available_accelerators"] = compiled.providers
    coverage = {kind: reply.coverage for kind, reply in state.benchmarks.items() if reply.coverage}
    if coverage:
        fields["coverage"] = coverage
    return fields


def capture_fields(state: RunState) -> dict[str, Any]:
    """TFLite: ``api`` (always ``Interpreter``) and ``delegate`` of the capture pass;
    ``without_timing_delegate`` when that is not how the models were timed (another delegate, or an
    accelerator: ``timed_accelerator``)."""
    runner = state.settings.runner
    if not isinstance(runner, LiteRTRunnerConfig):
        return {}
    timed, captured = _name(runner.delegate), _name(TFLiteFormat().capture_runner(state.settings).delegate)
    fields: dict[str, Any] = {"api": "Interpreter", "delegate": captured,
                              "without_timing_delegate": bool(runner.accelerator) or captured != timed}
    if runner.accelerator:
        fields["timed_accelerator"] = runner.accelerator
    return fields


def _name(delegate: str | None) -> str:
    return (delegate or "xnnpack").lower()


def coverage_text(cov: dict[str, Any]) -> str:
    """What ran one model, in words: the delegate's share of ops, or how much the accelerator took."""
    if "accelerator" not in cov:
        text = (f"delegate {cov['delegate']} took {cov['delegated_ops']} of {cov['total_ops']} ops "
                f"({cov['fraction']:.0%})")
        outside = cov.get("outside") or {}
        if outside and cov["delegated_ops"]:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(outside.items(), key=lambda kv: -kv[1]))
            text += (f" in {cov['partitions']} partition(s); LiteRT's builtin kernels ran the rest ({ops}), "
                     "each one a break between partitions")
        return text
    name = f"accelerator {cov['accelerator']}"
    if cov.get("fully_accelerated"):
        return f"{name} took every op"
    if cov.get("cpu_fallback"):
        return (f"{name} did not take the whole model ({cov.get('fallback_reason')}): compiled with CPU fallback, "
                "LiteRT does not say how many ops it took")
    return f"{name} did not take every op: the rest ran on LiteRT's builtin CPU kernels"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What the terminal says about delegates: coverage per model, the capture delegate, hidden layers."""
    lines = []
    device = report.get("device", {})
    for kind, cov in device.get("coverage", {}).items():
        lines.append(f"{kind}: {coverage_text(cov)}")
    capture = report.get("capture", {})
    delegate = capture.get("delegate")
    used = "builtin kernels (delegate none)" if delegate == "none" else f"delegate {delegate}"
    if capture.get("timed_accelerator"):
        lines.append(f"per-layer capture ran on the LiteRT Interpreter with {used}: CompiledModel, which timed the "
                     f"models on accelerator {capture['timed_accelerator']}, exposes no intermediate tensor; layer "
                     "and output PSNR are those of the Interpreter run")
    elif capture.get("without_timing_delegate"):
        lines.append(f"per-layer capture ran on {used}, not on the timed delegate {device.get('delegate')}: "
                     "layer and output PSNR are those of the capture run")
    hidden = report.get("summary", {}).get("layers_unobservable")
    if hidden:
        lines.append(f"{hidden} layers are {UNOBSERVABLE} (try --capture-delegate none)")
    return lines
