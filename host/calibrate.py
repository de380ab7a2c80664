"""``qbench calibrate``: one int8 model per calibration method, each measured on the device.

Every method quantizes the same prepared float model with the same calibration samples; each
candidate is then measured on the device like ``qbench run --int8`` (see :mod:`qbench.host.trials`).
The methods are the model format's (:attr:`qbench.host.formats.base.ModelFormat.methods`).
The table compares them as the seed article's Table 1 does, with the figures defined in
:func:`method_rows`; the winner is the candidate with the highest output PSNR (ties: the lower int8
median latency).
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

from .errors import UserError
from .quantize.tflite import check_method as check_tflite_method
from .trials import Trials, output_psnr, step_figures

#: a layer is "worse" than the winner's when its PSNR is more than this many dB lower
WORSE_DB = 1.0


def calibrate(trials: Trials, methods: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """Quantizes with each method, measures each on the device, and publishes the winner.

    Writes ``out/<method>/model.int8.<ext>`` and ``out/<method>/report.json`` per method, the winner's
    model as ``out/model.int8.<ext>`` and its report, with the comparison under ``calibration``, as
    ``out/report.json``.

    Args:
        trials: set up with the shared run settings.
        methods: calibration methods of the trials' quantizer, no repeats.

    Returns:
        The published report's path and the report.

    Raises:
        UserError: no method could quantize the model, or a measurement failed on the device.
    """
    trials.prepare()
    measured: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for method in methods:
        method_dir = trials.base.out_dir / method
        try:
            int8 = trials.quantize(method_dir / trials.int8_name, trials.settings(method))
        except UserError as exc:
            # one method failing (a histogram calibrator on an odd model) must not hide the others
            failed[method] = str(exc)
            trials.ui.warn(f"{method}: {exc}")
            continue
        measured[method] = trials.measure(method, int8, method_dir, method)
    if not measured:
        raise UserError("no calibration method could quantize the model: " + "; ".join(failed.values()))
    rows = method_rows(measured)
    rows.extend({"method": m, "error": e} for m, e in failed.items())
    for row in rows:
        row.update(trials.format.describe(row["method"]))  # TFLite: the ai-edge-quantizer algorithm
    winner = next(row["method"] for row in rows if row.get("winner"))
    payload = {
        "methods": rows,
        "winner": winner,
        "calibration_data": trials.calibration_source,
        "worse_db": WORSE_DB,
        "note": trials.format.note,
    }
    return trials.publish(measured[winner], trials.base.out_dir / winner / trials.int8_name, "calibration", payload)


def check_methods(chosen: Sequence[str] | None, offered: tuple[str, ...], model_format: str) -> list[str]:
    """The methods to try: ``chosen`` once checked, or every ``offered`` one when None.

    Raises:
        UserError: a method the format does not offer, none, or one given twice.
    """
    if chosen is None:
        return list(offered)
    chosen = list(chosen)
    if model_format == "tflite":
        for m in chosen:
            check_tflite_method(m)  # one line on what ai-edge-quantizer cannot do
    if any(m not in offered for m in chosen) or not chosen or len(set(chosen)) != len(chosen):
        raise UserError(f"--methods: give distinct methods among {', '.join(offered)} (for {model_format} models), "
                        f"got {','.join(chosen)!r}")
    return chosen


def method_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method, in the given order, the winner marked ``winner: True``.

    Figures, all from each method's own report:

    * ``output_psnr_db``, ``latency_int8_ms`` (median), ``speedup`` (float median / int8 median),
      ``peak_mb_int8``: as in the report's summary, latency and memory.
    * ``layer_psnr_mean_db`` / ``layer_psnr_min_db``: mean / minimum of the finite per-layer PSNRs
      (exact layers have none).
    * ``layers_worse`` and ``layer_delta_mean_db``: over the layers compared in both this method's
      report and the winner's (same float tensor name), the number whose PSNR is more than
      :data:`WORSE_DB` below the winner's (an exact layer counts as infinitely high), and the mean of
      (this PSNR − the winner's PSNR) over the layers finite in both. Zero for the winner.

    Args:
        reports: method -> its report.
    """
    winner = max(reports, key=lambda m: (_rank_psnr(reports[m]), -_latency(reports[m])))
    best = _layer_psnrs(reports[winner])
    rows = []
    for method, report in reports.items():
        mine = _layer_psnrs(report)
        finite = [v for v in mine.values() if math.isfinite(v)]
        common = [name for name in mine if name in best]
        deltas = [mine[n] - best[n] for n in common if math.isfinite(mine[n]) and math.isfinite(best[n])]
        rows.append({
            "method": method,
            **step_figures(report),
            "layer_psnr_mean_db": _round(fmean(finite)) if finite else None,
            "layer_psnr_min_db": _round(min(finite)) if finite else None,
            "layers_compared": len(common),
            "layers_worse": sum(1 for n in common if mine[n] < best[n] - WORSE_DB),
            "layer_delta_mean_db": _round(fmean(deltas)) if deltas else None,
            "model": report["models"]["int8"]["path"],
            "sha256": report["models"]["int8"]["sha256"],
            "winner": method == winner,
        })
    return rows


def _rank_psnr(report: dict[str, Any]) -> float:
    value = output_psnr(report)
    return -math.inf if value is None else value


def _latency(report: dict[str, Any]) -> float:
    value = step_figures(report)["latency_int8_ms"]
    return math.inf if value is None else value


def _layer_psnrs(report: dict[str, Any]) -> dict[str, float]:
    """Layer name -> PSNR (inf when exact); layers with an undefined PSNR are left out."""
    out = {}
    for layer in report.get("layers", []):
        if layer.get("psnr_db") is not None:
            out[layer["name"]] = layer["psnr_db"]
        elif layer.get("exact"):
            out[layer["name"]] = math.inf
    return out


def _round(value: float) -> float:
    return round(value, 4)

