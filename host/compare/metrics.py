"""Figures from the agent's accumulators. Pure functions; every formula is stated here.

All sums run over every element of every sample (pooled), never over per-sample dB:

- MSE  = Σ(f − q)² / N
- PSNR = 10·log10(peak² / MSE), peak = max|f| over all samples of the float tensor
- SQNR = 10·log10(Σf² / Σ(f − q)²)
- local PSNR: as PSNR, with q replaced by f quantized with the int8 model's own
  scale and zero point (the error this layer's quantization adds by itself)

where f is the float model's tensor and q the int8 model's tensor, dequantized.
MSE = 0 gives ``psnr_db = None`` with ``exact = True`` (JSON has no infinity). A float
tensor that is all zeros with a non-zero error has no defined PSNR: ``psnr_db = None``,
``exact = False``. A tensor with NaN or infinity on either side is never a match: it gets
``nonfinite`` (the counts of each side), ``psnr_db = None``, ``exact = False`` and no error
figures (they are not defined).
"""

from __future__ import annotations

import math
from typing import Any

from qbench.protocols.messages import PairStats


def psnr_db(peak: float, mse: float) -> float | None:
    """10·log10(peak²/mse); None when mse is 0 (exact) or peak is 0 (undefined)."""
    if mse <= 0.0 or peak <= 0.0:
        return None
    return 10.0 * math.log10(peak * peak / mse)


def sqnr_db(sum_sq_float: float, sum_sq_err: float) -> float | None:
    """10·log10(Σf²/Σ(f−q)²); None when there is no error or no signal."""
    if sum_sq_err <= 0.0 or sum_sq_float <= 0.0:
        return None
    return 10.0 * math.log10(sum_sq_float / sum_sq_err)


def figures(s: PairStats, step: float | None = None) -> dict[str, Any]:
    """Every per-tensor figure of the report from one pair's accumulators.

    Args:
        s: the pooled accumulators.
        step: the int8 tensor's quantization step (scale), per-tensor only; gives
            ``rmse_over_step`` (≈0.29 is pure rounding noise, 1/√12).
    """
    if s.count == 0:
        return {"psnr_db": None, "exact": False, "error": s.error or "no elements compared"}
    counts = nonfinite(s)
    if counts is not None:
        return {"psnr_db": None, "sqnr_db": None, "exact": False, "nonfinite": counts, "elements": s.count,
                "error": s.error}
    mse = s.sum_sq_err / s.count
    out: dict[str, Any] = {
        "psnr_db": _round(psnr_db(s.max_abs_float, mse)),
        "sqnr_db": _round(sqnr_db(s.sum_sq_float, s.sum_sq_err)),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "peak": s.max_abs_float,
        "max_abs_error": s.max_abs_err,
        "float_min": s.float_min,
        "float_max": s.float_max,
        "exact": s.sum_sq_err == 0.0,
        "elements": s.count,
    }
    if s.local_sum_sq_err is not None:
        out["local_psnr_db"] = _round(psnr_db(s.max_abs_float, s.local_sum_sq_err / s.count))
        out["clipped_fraction"] = (s.clipped or 0) / s.count
    if step:
        out["rmse_over_step"] = math.sqrt(mse) / step
    if s.error:
        out["error"] = s.error
    return out


def nonfinite(s: PairStats) -> dict[str, int] | None:
    """``{float_nan, float_inf, int8_nan, int8_inf}`` when either side holds NaN or infinity, else None."""
    counts = {"float_nan": s.float_nan, "float_inf": s.float_inf, "int8_nan": s.int8_nan, "int8_inf": s.int8_inf}
    if any(counts.values()):
        return counts
    if (s.error or "").startswith("non-finite values"):  # an agent before protocol 1.4 does not count them
        return dict.fromkeys(counts)
    return None


def nonfinite_text(counts: dict[str, int]) -> str:
    """``"int8 model: 12 NaN"``, both sides when both have some: for terminal and page."""
    if all(v is None for v in counts.values()):
        return "NaN or inf (not counted by this agent)"
    parts = []
    for side in ("float", "int8"):
        found = [f"{counts[f'{side}_{kind}']} {label}" for kind, label in (("nan", "NaN"), ("inf", "inf"))
                 if counts.get(f"{side}_{kind}")]
        if found:
            parts.append(f"{side} model: {', '.join(found)}")
    return "; ".join(parts)


def exact_figures(s: PairStats) -> dict[str, Any]:
    """Non-float tensors (class indices, shapes): compared element by element."""
    return {"kind": "exact", "exact": s.mismatches == 0 and s.count > 0, "mismatches": s.mismatches,
            "elements": s.count, "mismatch_fraction": s.mismatches / s.count if s.count else None,
            "psnr_db": None, **({"error": s.error} if s.error else {})}


def flag_drops(layers: list[dict[str, Any]], threshold_db: float) -> None:
    """Set ``drop_db`` and ``drop`` on each layer, in place.

    drop_db = min(PSNR of the layer's parents) − PSNR of the layer, where parents are
    the nearest compared tensors upstream. A layer is a sudden drop when drop_db is
    above ``threshold_db``. Undefined (None) when the layer or every parent has no
    PSNR (exact or undefined), or when it has no parents.
    """
    by_name = {layer["name"]: layer for layer in layers}
    for layer in layers:
        parent_psnrs = [by_name[p]["psnr_db"] for p in layer.get("parents", []) if by_name.get(p, {}).get("psnr_db") is not None]
        if layer.get("psnr_db") is None or not parent_psnrs:
            layer["drop_db"], layer["drop"] = None, False
            continue
        layer["drop_db"] = round(min(parent_psnrs) - layer["psnr_db"], 4)
        layer["drop"] = layer["drop_db"] > threshold_db


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
