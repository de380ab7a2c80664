"""What a run's terminal summary and the top of report.html warn about, beside the capture's own departures.

* Random calibration: the int8 model's scales come from random inputs, so its accuracy is not the accuracy it
  would have with real data (the run records it as the note :data:`RANDOM_CALIBRATION`).
* Noisy timings: a model's timed runs are *noisy* when their p90 is more than :data:`NOISY_P90_OVER_MEDIAN`
  times their median (``latency.<model>.p90_ms / latency.<model>.median_ms``), that is, at least one run in
  ten took over half as long again as the typical run. The median, and the speedup made of two medians, then
  depend on what else the device was doing.
* Int16 saturation: on an x86 CPU with AVX2 and no VNNI (``device.cpu_features``, see
  :func:`~qbench.host.quantize.reduce_range.saturates`), ONNX Runtime's u8s8 convolution and matmul
  kernels multiply-add pairs of uint8 x int8 products with VPMADDUBSW, whose int16 sum saturates at
  full-range (8-bit) weights. The int8 figures measured there are true for that CPU, and worse than an
  ARM or VNNI CPU's; 7-bit weights (``--reduce-range``) avoid it. qbench takes them itself for such a
  device (``--reduce-range`` auto), so the warning is for the int8 models it did not quantize so:
  ``--no-reduce-range``, ``--int8`` (the user's own), ``compare``'s shared pair.
* A ranking that does not explain the output: the sensitive layers' scores add up to less than 0.75 of the
  SQNR lost between where noise enters and the worst output (``ranking_account``, see
  :func:`qbench.host.compare.sensitivity.account`), so no layer's own error accounts for the damage and the
  ranking's top need not be where it is; the warning names the block the run then measured worst
  (:mod:`qbench.host.ranking_sweep`), or says why it did not measure.
* int8 slower than float: the speedup (``latency.speedup``) is below 1. Where the device profiled both models
  (``profile.families``), the warning says which computations took more kernel time in int8, so that a slow
  int8 model is told apart from int8 that does not pay: the kernels that grew (a convolution slower as an
  int8 kernel, an activation the float model fused into its convolution running as int8 kernels of its own),
  or, when the int8 kernels take less time in all, that the difference lies outside the kernels.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..quantize.reduce_range import saturates

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


def int16_saturation(report: Mapping[str, Any]) -> list[str]:
    """The warning for an ONNX int8 model with full-range weights timed and captured on an x86 CPU
    with AVX2 and no VNNI, whose int8 kernels then saturate; empty otherwise (unknown features included)."""
    device = report.get("device") or {}
    if not saturates(device.get("arch") or "", device.get("cpu_features") or []):
        return []
    if ((report.get("models") or {}).get("int8") or {}).get("format") != "onnx" \
            or (report.get("settings") or {}).get("reduce_range") or not (report.get("int8_coverage") or {}).get("fraction"):
        return []
    return ["this x86 CPU has AVX2 and no VNNI: ONNX Runtime's int8 convolutions and matmuls add pairs of "
            "uint8 x int8 products in int16 (VPMADDUBSW), which saturates with 8-bit weights, so layers measured "
            "here can lose several dB that an ARM or VNNI CPU does not; quantize with --reduce-range (7-bit "
            "weights, qbench's own choice for such CPUs unless --no-reduce-range)."]


def int8_slower(report: Mapping[str, Any]) -> list[str]:
    """Where the int8 model's time goes when it is slower than the float one; empty otherwise."""
    speedup = (report.get("latency") or {}).get("speedup")
    if speedup is None or speedup >= 1.0:
        return []
    head = f"int8 runs at {speedup:.2f}x the float model's speed"
    profile = report.get("profile") or {}
    rows = profile.get("families") or []
    if not rows:
        why = next(iter((profile.get("notes") or {}).values()), None)
        return [head + (f" ({why}, so qbench cannot say where)." if why
                        else " (no per-operator profile to say where: --profile-runs).")]
    float_ms, int8_ms = (sum(r[k] for r in rows) for k in ("float_ms", "int8_ms"))
    added = int8_ms - float_ms
    kernels = f"kernel time per inference {float_ms:.3g} ms float, {int8_ms:.3g} ms int8"
    if added <= 0:
        return [f"{head}, although its kernels take less time ({kernels}): the difference lies outside the kernels "
                "(session overhead, thread scheduling), which matters most for small models."]
    grown = [r for r in rows if r["int8_ms"] - r["float_ms"] >= 0.1 * added][:4]
    parts = [f"{r['family']} {r['float_ms']:.3g} -> {r['int8_ms']:.3g} ms"
             + (" (none in float)" if r["float_ms"] == 0 else "") for r in grown]
    return [f"{head}: {kernels}; most of it added by {', '.join(parts)} (report.json profile.families)."]


def ranking_unexplained(report: Mapping[str, Any]) -> list[str]:
    """The warning for a sensitive-layer ranking whose scores do not account for the output's error."""
    account = report.get("ranking_account") or {}
    if not account or account.get("explains"):
        return []
    head = (f"the sensitive layers' own errors add up to {account['scores_db']:.1f} dB of the "
            f"{account['sqnr_lost_db']:.1f} dB SQNR lost between where quantization noise enters "
            f"({account['entry_layer']}, {account['entry_sqnr_db']:.1f} dB) and the worst output "
            f"({account['output_sqnr_db']:.1f} dB): the damage comes from how errors propagate and combine (an op "
            "that magnifies them, a mean shift, errors that cancel), which per-layer figures do not show, so the "
            "ranking's top need not be where the damage is")
    magnifiers = account.get("magnifiers") or []
    if magnifiers:
        named = ", ".join(f"{m['op_type']} {m['name']} ({m['drop_db']:.1f} dB)" for m in magnifiers)
        head += (f"; here {named} magnif{'ies' if len(magnifiers) == 1 else 'y'} the error inherited without adding "
                 "error of its own (a Log near 0, a Sigmoid's tail), which the rounding of every tensor before it feeds")
    measured = account.get("measured") or {}
    if "block" in measured:
        gain = measured["keep_float_gain_db"]
        return [f"{head}. Measured on the device instead (report.json sensitivity): block {measured['block']} "
                f"({measured['first_op']} .. {measured['last_op']}, {measured['ops']} ops) costs the output most, "
                + ("NaN or infinity in the output" if measured.get("only_int8_nonfinite") else
                   f"{measured['only_int8_psnr_db']:.2f} dB") + " when it alone is int8"
                + ("" if gain is None else f"; keeping it alone float changes the output by {gain:+.2f} dB")
                + _ranking_top(measured, report)
                + _best_repair(measured.get("best_repair"))
                + "; qbench fix repairs from such measurements (bias correction included)."]
    why = f" ({measured['skipped']})" if "skipped" in measured else ""
    return [f"{head}; qbench sensitivity measures each block on the device{why}, and qbench fix repairs from it "
            "(bias correction included)."]


def _ranking_top(measured: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """Where the ranking's top lies among the measured blocks, when not in the worst one."""
    top = measured.get("ranking_top") or {}
    if top.get("block") is None or top["block"] == measured["block"]:
        return ""
    row = next(r for r in report["sensitivity"]["blocks"] if r["block"] == top["block"])
    if "only_int8" in (row.get("nonfinite") or []):
        figure = "NaN or infinity in the output"
    else:
        figure = "exact" if row["only_int8_psnr_db"] is None else f"{row['only_int8_psnr_db']:.2f} dB"
    return f"; the ranking's top, {top['name']}, lies in block {top['block']} (alone int8: {figure})"


def _best_repair(best: Mapping[str, Any] | None) -> str:
    if not best:
        return ""
    verdict = f", {best['keep_float_verdict']}" if best.get("keep_float_verdict") else ""
    figure = "exact" if best["keep_float_psnr_db"] is None else f"{best['keep_float_psnr_db']:.2f} dB"
    return (f"; keeping block {best['block']} ({best['first_op']} .. {best['last_op']}, {best['ops']} ops) alone "
            f"float repairs most: {best['gain_db']:+.2f} dB ({figure}{verdict})")


def run_warnings(report: Mapping[str, Any]) -> list[str]:
    """Every warning of this module for ``report``: random calibration, int16 saturation, int8 slower than float,
    noisy timings, a ranking that does not explain the output."""
    return (random_calibration(report) + int16_saturation(report) + int8_slower(report) + noisy_timings(report)
            + ranking_unexplained(report))


def plain_notes(report: Mapping[str, Any]) -> list[str]:
    """``report["notes"]`` without those :func:`run_warnings` shows as warnings."""
    return [line for line in report.get("notes") or [] if line != RANDOM_CALIBRATION]
