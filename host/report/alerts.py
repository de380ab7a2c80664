"""What a run's terminal summary and the top of report.html warn about, beside the capture's own departures.

* Random calibration: the int8 model's scales come from random inputs, so its accuracy is not the accuracy it
  would have with real data (the run records it as the note :data:`RANDOM_CALIBRATION`).
* Noisy timings: a model's timed runs are *noisy* when their p90 is more than :data:`NOISY_P90_OVER_MEDIAN`
  times their median (``latency.<model>.p90_ms / latency.<model>.median_ms``), that is, at least one run in
  ten took over half as long again as the typical run. The median, and the speedup made of two medians, then
  depend on what else the device was doing.
"""

from __future__ import annotations

from typing import Any, Mapping

#: the note `qbench run` records when it calibrated on random inputs (no ``--calibration``)
RANDOM_CALIBRATION = "calibrated on random data"
#: p90 / median of a model's timed runs above which its timings are called noisy
NOISY_P90_OVER_MEDIAN = 1.5


def noisy_timings(report: Mapping[str, Any]) -> list[str]:
    """One sentence per model whose timed runs are noisy; empty when neither is."""
    lines = []
    for model in ("float", "int8"):
        stats = (report.get("latency") or {}).get(model) or {}
        median, p90 = stats.get("median_ms"), stats.get("p90_ms")
        if not median or p90 is None or p90 / median <= NOISY_P90_OVER_MEDIAN:
            continue
        lines.append(f"{model} timings are noisy: p90 {p90:.3g} ms is {p90 / median:.2f}x the median "
                     f"{median:.3g} ms (noisy above {NOISY_P90_OVER_MEDIAN:g}x), so its median and the speedup "
                     "depend on what else the device ran; time again on an idle device, or longer (--min-seconds).")
    return lines


def random_calibration(report: Mapping[str, Any]) -> list[str]:
    """The warning for a run calibrated on random inputs; empty otherwise."""
    if RANDOM_CALIBRATION not in (report.get("notes") or []):
        return []
    return ["calibrated on random data: the int8 model's scales come from random inputs, so its figures here are "
            "not those it would have with real data; pass representative inputs with --calibration FILE.npz."]


def run_warnings(report: Mapping[str, Any]) -> list[str]:
    """Every warning of this module for ``report``: random calibration first, then noisy timings."""
    return random_calibration(report) + noisy_timings(report)


def plain_notes(report: Mapping[str, Any]) -> list[str]:
    """``report["notes"]`` without those :func:`run_warnings` shows as warnings."""
    return [line for line in report.get("notes") or [] if line != RANDOM_CALIBRATION]
