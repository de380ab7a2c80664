"""Sensitive-layer ranking: which layers to look at (or keep in higher precision) first, and why.

The score of a layer, in dB, is the error it adds by itself:

    score = max(0, drop_db)
          + max(0, LOCAL_DB  − local_psnr_db)
          + max(0, WEIGHT_DB − worst weight channel PSNR)
          + HINT_DB if the op is a known culprit and the sum above is > 0

A term whose figure is missing counts 0. ``drop_db`` is how far the layer's cumulative PSNR falls
below its inputs' (metrics.flag_drops), ``local_psnr_db`` the float tensor against itself
quantized with the int8 model's scale and zero point (this covers both rounding and clipping at
this tensor), the weight term the lowest channel PSNR of the weights the layer consumes
(compare.weights). Error that only arrived from upstream adds nothing.

Reasons, each with its threshold:

- ``sudden drop``: ``drop`` flag set (drop_db above the run's ``--drop-db``); ``drop`` when
  drop_db is above 0 but not above that threshold
- ``clipping``: clipped_fraction > CLIP_FRACTION
- ``wide range``: the int8 range (quant_max − quant_min) > WIDE_RANGE × the values seen (float_max − float_min)
- ``bad step``: rmse_over_step > STEP_RATIO (rounding alone gives 1/√12 ≈ 0.29), unless the error
  is from upstream (rmse_over_step measures the cumulative error)
- ``local error``: local_psnr_db < LOCAL_DB
- ``error from upstream``: psnr_db < UPSTREAM_DB while local_psnr_db ≥ LOCAL_DB and no sudden drop
- ``weight error``: worst weight channel PSNR < WEIGHT_DB
- op hints from the seed articles: Softmax; Sigmoid/HardSigmoid gates and the Mul that applies
  them (squeeze-and-excite)

A layer is listed when it has a score above 0 or an ``error from upstream`` reason; op hints alone
do not list it. Order: score, highest first, then cumulative PSNR, lowest first.
"""

from __future__ import annotations

import math
from typing import Any

from .weights import worst_psnr_db

LOCAL_DB = 40.0
WEIGHT_DB = 40.0
UPSTREAM_DB = 30.0
CLIP_FRACTION = 0.01
WIDE_RANGE = 2.0
STEP_RATIO = 1.0
HINT_DB = 3.0

_SOFTMAX = {"Softmax", "LogSoftmax", "SOFTMAX", "LOG_SOFTMAX"}
_GATES = {"Sigmoid", "HardSigmoid", "LOGISTIC"}
_MUL = {"Mul", "MUL"}


def rank_sensitive(layers: list[dict], weights: list[dict] | None = None, limit: int | None = None) -> list[dict]:
    """Layers ranked by sensitivity, worst first (the score and reasons are defined in the module doc).

    Args:
        layers: report["layers"] entries (name, op_type, psnr_db, local_psnr_db, drop, drop_db,
            clipped_fraction, rmse_over_step, float_min/max, quant_min/max, parents; any may be missing).
        weights: report["weights"] entries; when None, the layers' own ``weight_worst_channel_psnr_db``
            (or ``weight_psnr_db``) is used.
        limit: keep at most this many.

    Returns:
        ``[{"name", "op_type", "psnr_db", "score", "reasons": [str]}]``.
    """
    weight_db = _weight_db_by_layer(layers, weights)
    op_of = {x["name"]: x.get("op_type") for x in layers}
    ranked = []
    for layer in layers:
        score, reasons, upstream = _assess(layer, weight_db.get(layer["name"]), op_of)
        if score > 0 or upstream:
            ranked.append({"name": layer["name"], "op_type": layer.get("op_type"), "psnr_db": layer.get("psnr_db"),
                           "score": round(score, 4), "reasons": reasons})
    ranked.sort(key=lambda x: (-x["score"], math.inf if x["psnr_db"] is None else x["psnr_db"]))
    return ranked if limit is None else ranked[:limit]


def _assess(layer: dict[str, Any], weight_db: float | None, op_of: dict[str, str]) -> tuple[float, list[str], bool]:
    """(score, reasons, whether the error came from upstream) of one layer."""
    reasons: list[str] = []
    score = 0.0
    drop_db, local, psnr = layer.get("drop_db"), layer.get("local_psnr_db"), layer.get("psnr_db")
    if drop_db is not None and drop_db > 0:
        score += drop_db
    if layer.get("drop"):
        reasons.append(f"sudden drop: {drop_db:.1f} dB below its inputs")
    elif drop_db is not None and drop_db > 0:
        reasons.append(f"drop: {drop_db:.1f} dB below its inputs")
    clipped = layer.get("clipped_fraction")
    if clipped is not None and clipped > CLIP_FRACTION:
        reasons.append(f"clipping: {clipped:.1%} of values outside the int8 range")
    ratio = _range_ratio(layer)
    if ratio is not None and ratio > WIDE_RANGE:
        reasons.append(f"wide range: int8 range {ratio:.1f}x the values seen")
    upstream = (psnr is not None and psnr < UPSTREAM_DB and local is not None and local >= LOCAL_DB
                and not layer.get("drop"))
    step = layer.get("rmse_over_step")
    if step is not None and step > STEP_RATIO and not upstream:  # else the excess error is inherited
        reasons.append(f"bad step: RMSE {step:.2f} steps (rounding alone: 0.29)")
    if local is not None and local < LOCAL_DB:
        score += LOCAL_DB - local
        reasons.append(f"local error: its own quantization gives {local:.1f} dB")
    if upstream:
        reasons.append(f"error from upstream: {psnr:.1f} dB cumulative, {local:.1f} dB local")
    if weight_db is not None and weight_db < WEIGHT_DB:
        score += WEIGHT_DB - weight_db
        reasons.append(f"weight error: worst channel {weight_db:.1f} dB")
    hint = _hint(layer, op_of)
    if hint and score > 0:
        score += HINT_DB
        reasons.append(hint)
    return score, reasons, upstream


def _range_ratio(layer: dict[str, Any]) -> float | None:
    keys = ("quant_min", "quant_max", "float_min", "float_max")
    if any(layer.get(k) is None for k in keys):
        return None
    seen = layer["float_max"] - layer["float_min"]
    return (layer["quant_max"] - layer["quant_min"]) / seen if seen > 0 else None


def _hint(layer: dict[str, Any], op_of: dict[str, str]) -> str | None:
    op = layer.get("op_type")
    if op in _SOFTMAX:
        return "softmax: amplifies rounding errors (seed: keep it in higher precision)"
    if op in _GATES:
        return "sigmoid gate: squeeze-and-excite blocks are typical culprits"
    if op in _MUL and any(op_of.get(p) in _GATES for p in layer.get("parents", [])):
        return "squeeze-and-excite scaling: typical culprit"
    return None


def _weight_db_by_layer(layers: list[dict], weights: list[dict] | None) -> dict[str, float]:
    """Per layer, the lowest weight channel PSNR (the tensor PSNR when there are no channels)."""
    out: dict[str, float] = {}
    if weights is None:
        for layer in layers:
            value = layer.get("weight_worst_channel_psnr_db", layer.get("weight_psnr_db"))
            if value is not None:
                out[layer["name"]] = value
        return out
    for w in weights:
        value = worst_psnr_db(w)
        if w.get("layer") is not None and value is not None:
            out[w["layer"]] = min(value, out.get(w["layer"], math.inf))
    return out
