"""Pass/fail gates that CI puts on a finished run.

A gate turns a report into a verdict without changing it. The CLI exits with
:data:`GATE_FAILED` when the run itself went fine but at least one gate failed,
so scripts can tell "the model got worse" apart from "qbench broke":

====  ==================================================================
code  meaning
====  ==================================================================
0     ran, every gate passed (or no gate was set)
1     error: bad input, unreachable device, runtime failure
2     usage error (bad command line)
3     ran, but at least one gate failed (:data:`GATE_FAILED`)
====  ==================================================================

A gate whose figure is missing from the report (no latency measured, say)
fails: a CI check that cannot be evaluated must not pass silently. An output
with NaN or infinity in either model (``nonfinite``) fails the PSNR gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from .compare.metrics import nonfinite_text

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
GATE_FAILED = 3


@dataclass(frozen=True)
class Gates:
    """Thresholds given on the command line; ``None``/``False`` disables a gate.

    Attributes:
        fail_under_psnr: Minimum output PSNR in dB (lowest float output).
        fail_under_speedup: Minimum float/int8 median latency ratio.
        fail_over_memory: Maximum int8 peak resident memory in MB.
        fail_on_drop: Fail when any layer is flagged as a sudden drop.
        fail_on_broken: Fail when any output's verdict is ``broken``.
        fail_under_top1: Minimum top-1 agreement (0..1) of the outputs read by argmax (the lowest;
            a CTC output counts with its sequence agreement).
    """

    fail_under_psnr: Optional[float] = None
    fail_under_speedup: Optional[float] = None
    fail_over_memory: Optional[float] = None
    fail_on_drop: bool = False
    fail_on_broken: bool = False
    fail_under_top1: Optional[float] = None

    @property
    def active(self) -> bool:
        """Whether at least one gate is set."""
        return any(getattr(self, f.name) not in (None, False) for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as stored in ``report["gates"]``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "Gates":
        """Read thresholds back from ``report["gates"]``, ignoring unknown keys."""
        data = data or {}
        return cls(**{f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None})


@dataclass(frozen=True)
class GateCheck:
    """The verdict of one gate on one report.

    Attributes:
        gate: Gate name, e.g. ``"fail_under_psnr"``.
        threshold: The threshold it was checked against.
        value: The figure read from the report (``None`` if missing).
        passed: Whether the gate passed.
        message: One line for the terminal and the HTML summary.
    """

    gate: str
    threshold: Any
    value: Any
    passed: bool
    message: str


def evaluate(report: Mapping[str, Any], gates: Gates) -> list[GateCheck]:
    """Check every active gate against a report.

    Args:
        report: A ``qbench.report/1`` dict.
        gates: The thresholds.

    Returns:
        One :class:`GateCheck` per active gate, passed or not, in a fixed order.
    """
    checks = []
    if gates.fail_under_psnr is not None:
        checks.append(_check_psnr(report, gates.fail_under_psnr))
    if gates.fail_under_speedup is not None:
        checks.append(_check_speedup(report, gates.fail_under_speedup))
    if gates.fail_over_memory is not None:
        checks.append(_check_memory(report, gates.fail_over_memory))
    if gates.fail_on_drop:
        checks.append(_check_drops(report))
    if gates.fail_on_broken:
        checks.append(_check_broken(report))
    if gates.fail_under_top1 is not None:
        checks.append(_check_top1(report, gates.fail_under_top1))
    return checks


def failures(report: Mapping[str, Any], gates: Gates) -> list[GateCheck]:
    """The gates a report fails; empty when it passes them all."""
    return [check for check in evaluate(report, gates) if not check.passed]


def _check_psnr(report: Mapping[str, Any], threshold: float) -> GateCheck:
    gate = "fail_under_psnr"
    summary = report.get("summary") or {}
    value = summary.get("output_psnr_db")
    float_outputs = [o for o in report.get("outputs") or [] if o.get("kind", "float") == "float"]
    broken = [o for o in float_outputs if o.get("nonfinite")]
    if broken:
        shown = "; ".join(f"{o['name']}: {nonfinite_text(o['nonfinite'])}" for o in broken[:3])
        return GateCheck(gate, threshold, None, False, f"output PSNR: non-finite values ({shown})")
    all_exact = summary.get("outputs_exact") or (float_outputs and all(o.get("exact") for o in float_outputs))
    if value is None and all_exact:
        return GateCheck(gate, threshold, None, True, "output PSNR: outputs identical (exact)")
    if value is None:
        return GateCheck(gate, threshold, None, False, "output PSNR: not in the report")
    passed = value >= threshold
    verdict = ">=" if passed else "<"
    return GateCheck(gate, threshold, value, passed,
                     f"output PSNR {value:.2f} dB {verdict} {threshold:g} dB")


def _check_speedup(report: Mapping[str, Any], threshold: float) -> GateCheck:
    gate = "fail_under_speedup"
    value = (report.get("latency") or {}).get("speedup")
    if value is None:
        value = (report.get("summary") or {}).get("speedup")
    if value is None:
        return GateCheck(gate, threshold, None, False, "speedup: not in the report")
    passed = value >= threshold
    verdict = ">=" if passed else "<"
    return GateCheck(gate, threshold, value, passed, f"speedup {value:.2f}x {verdict} {threshold:g}x")


def _check_memory(report: Mapping[str, Any], threshold: float) -> GateCheck:
    gate = "fail_over_memory"
    value = ((report.get("memory") or {}).get("int8") or {}).get("peak_mb")
    if value is None:
        return GateCheck(gate, threshold, None, False, "int8 peak memory: not in the report")
    passed = value <= threshold
    verdict = "<=" if passed else ">"
    return GateCheck(gate, threshold, value, passed,
                     f"int8 peak memory {value:.1f} MB {verdict} {threshold:g} MB")


def _check_drops(report: Mapping[str, Any]) -> GateCheck:
    gate = "fail_on_drop"
    drops = (report.get("summary") or {}).get("drops")
    if drops is None:
        drops = [layer["name"] for layer in report.get("layers") or [] if layer.get("drop")]
    if not drops:
        return GateCheck(gate, True, [], True, "no sudden drop")
    shown = ", ".join(drops[:3]) + (f" and {len(drops) - 3} more" if len(drops) > 3 else "")
    return GateCheck(gate, True, list(drops), False, f"{len(drops)} sudden drop(s): {shown}")


def _check_broken(report: Mapping[str, Any]) -> GateCheck:
    gate = "fail_on_broken"
    outputs = report.get("outputs") or []
    if not outputs or any(o.get("verdict") is None for o in outputs):
        return GateCheck(gate, True, None, False, "output verdicts: not in the report")
    broken = [o["name"] for o in outputs if o["verdict"] == "broken"]
    if not broken:
        return GateCheck(gate, True, [], True, "no broken output")
    return GateCheck(gate, True, broken, False, f"{len(broken)} broken output(s): {', '.join(broken)}")


def _check_top1(report: Mapping[str, Any], threshold: float) -> GateCheck:
    gate = "fail_under_top1"
    value = (report.get("summary") or {}).get("top1_agreement")
    if value is None:
        return GateCheck(gate, threshold, None, False, "top-1 agreement: no output is read by argmax")
    passed = value >= threshold
    verdict = ">=" if passed else "<"
    return GateCheck(gate, threshold, value, passed, f"top-1 agreement {value:.3f} {verdict} {threshold:g}")


def exit_code(checks: list[GateCheck]) -> int:
    """The process exit code for a run that finished: :data:`GATE_FAILED` if any gate failed."""
    return GATE_FAILED if any(not check.passed for check in checks) else EXIT_OK
