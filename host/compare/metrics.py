"""Figures from the agent's accumulators. Pure functions; every formula is stated here.

All sums run over every element of every sample (pooled), never over per-sample dB:

- MSE  = Σ(f − q)² / N
- PSNR = 10·log10(peak² / MSE), peak = max|f| over all samples of the float tensor
- SQNR = 10·log10(Σf² / Σ(f − q)²)
- local PSNR: as PSNR, with q replaced by f quantized with the int8 model's own
  scale and zero point (the error this layer's quantization adds by itself)
- local SQNR: as SQNR, with that same local error: 10·log10(Σf² / Σ(f − dq(q(f)))²); unlike local
  PSNR it does not depend on the peak, so it shows a range set by a few outliers
- crest factor (``crest_db``) = 20·log10(peak / RMS), RMS = √(Σf²/N): how far the peak (which
  sets a min/max int8 scale) lies above the typical value; PSNR − SQNR = crest_db exactly

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
    if s.sum_sq_float > 0.0 and s.max_abs_float > 0.0:
        out["crest_db"] = _round(20.0 * math.log10(s.max_abs_float / math.sqrt(s.sum_sq_float / s.count)))
    if s.local_sum_sq_err is not None:
        out["local_psnr_db"] = _round(psnr_db(s.max_abs_float, s.local_sum_sq_err / s.count))
        out["local_sqnr_db"] = _round(sqnr_db(s.sum_sq_float, s.local_sum_sq_err))
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


#: a tensor at or above this SQNR is treated as noise-free (an input the int8 model represents
#: exactly, such as a 0..255 image; int8 rounding of a full-range signal gives about 50 dB)
EXACT_SQNR_DB = 90.0
#: a layer's own rounding counts as a source of error when its local SQNR is less than this far above
#: its inputs' SQNR (own noise power at least a tenth of the inherited one: it adds 0.4 dB or more), and
#: less than this far above its own SQNR (its rounding at least a tenth of the error it holds)
OWN_MARGIN_DB = 10.0
#: ... or when more than this fraction of its values are clipped
OWN_CLIPPED = 0.01
#: a layer's consumers undo (part of) its drop when every one's SQNR is more than this above the layer's
UNDONE_MARGIN_DB = 1.0
#: element-wise clamps: they discard what lies beyond their bound, error included
CLAMPS = {"Relu", "Clip", "Max", "Min", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "MAXIMUM", "MINIMUM"}
#: the clamps whose bound is a constant input, which the weight figures count as a weight; any other clamp with
#: weights is a convolution folded into its activation (ONNX QDQ: the Conv's output is the Relu's tensor)
_BOUNDED = {"Max", "Min", "MAXIMUM", "MINIMUM"}
#: joins whose output mixes every input's values (:func:`drop_joined`)
MIXING = {"Add", "Sub", "Mul", "Sum", "ADD", "SUB", "MUL"}
#: ops that compute with quantized weights: their weight rounding is a source of error of their own
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "CONV_2D",
                "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "CONV_3D", "BATCH_MATMUL"}


def flag_drops(layers: list[dict[str, Any]], threshold_db: float) -> None:
    """Set ``drop_db`` and ``drop`` on each layer, in place.

    drop_db = min(SQNR of the layer's noisy parents) − SQNR of the layer, where parents are the
    nearest compared tensors upstream and a noisy parent is one with an error (not ``exact``) and an
    SQNR below :data:`EXACT_SQNR_DB`. SQNR, not PSNR: PSNR is normalised by the tensor's peak, so an
    op that caps the peak (Clip/ReLU6, Sigmoid, HardSwish after a wide conv) lowers it by 10-27 dB
    with no more error; SQNR divides error energy by signal energy, both of the same tensor.
    Undefined (None) when the layer has no SQNR (exact, or no signal) or no noisy parent: a layer fed
    only by exact inputs is judged by its own figures (local SQNR).

    A layer is a sudden drop when drop_db is above ``threshold_db``, it has an error source of
    its own (:func:`adds_own_error`): a squashing op (Sigmoid, a Clip of a wide range) compresses
    the signal more than the error it inherits, so SQNR can fall through it by several dB although it
    adds nothing (its local SQNR is far above its inputs'); for a layer whose consumers undo part of
    its drop (:func:`drop_kept`), the part they keep, ``drop_kept_db``, must be above the threshold; for a
    layer on a side branch (:func:`drop_joined`), the part left where the branch joins, ``drop_joined_db``
    (at ``joined_at``).
    """
    by_name = {layer["name"]: layer for layer in layers}
    consumers: dict[str, list[dict[str, Any]]] = {}
    for layer in layers:
        for parent in layer.get("parents", []):
            consumers.setdefault(parent, []).append(layer)
    for layer in layers:
        for key in ("drop_kept_db", "drop_joined_db", "joined_at"):
            layer.pop(key, None)
        inputs = inputs_sqnr(layer, by_name)
        if layer.get("sqnr_db") is None or inputs is None:
            layer["drop_db"], layer["drop"] = None, False
            continue
        layer["drop_db"] = round(inputs - layer["sqnr_db"], 4)
        kept = drop_kept(layer, inputs, consumers.get(layer["name"], []))
        if kept is not None:
            layer["drop_kept_db"] = round(kept, 4)
        else:
            joined = drop_joined(layer, by_name, consumers)
            if joined is not None:
                kept, layer["joined_at"] = joined
                layer["drop_joined_db"] = round(kept, 4)
        layer["drop"] = (layer["drop_db"] if kept is None else kept) > threshold_db and adds_own_error(layer, inputs)


def drop_kept(layer: dict[str, Any], inputs: float, consumers: list[dict[str, Any]]) -> float | None:
    """How much of the drop of a layer that clips (more than :data:`OWN_CLIPPED` of its values) survives its
    consumers, inputs' SQNR − the lowest consumer's, when every consumer is a clamp of it alone whose SQNR is
    back above the layer's by more than :data:`UNDONE_MARGIN_DB`; else None.

    An int8 range may clip values a consumer discards anyway: ai-edge-quantizer gives a LeakyRelu the
    range of the ``Maximum(x, -0.4)`` after it (openwakeword's TFLite speech embedding), so 16-22 % of
    the LeakyRelu's values clip and its SQNR falls 4-9 dB, of which the Maximum takes back all or all but
    3 dB. Only what survives is damage. Only a clamp of this layer alone (:data:`CLAMPS`) discards what the
    layer's range clipped: an Add or a Concat raises SQNR by adding signal, and the error passes through
    it whole."""
    if (layer.get("clipped_fraction") or 0.0) <= OWN_CLIPPED or not consumers or any(
            c.get("sqnr_db") is None or c.get("op_type") not in CLAMPS or len(c.get("parents", [])) != 1
            or (c.get("weight_psnr_db") is not None and c["op_type"] not in _BOUNDED) for c in consumers):
        return None
    lowest = min(c["sqnr_db"] for c in consumers)
    if lowest <= layer["sqnr_db"] + UNDONE_MARGIN_DB:
        return None
    return max(0.0, inputs - lowest)


def drop_joined(layer: dict[str, Any], by_name: dict[str, dict[str, Any]],
                consumers: dict[str, list[dict[str, Any]]]) -> tuple[float, str] | None:
    """How much of the drop of a layer on a side branch survives where the branch joins another noisy path:
    (the other path's SQNR − the join's SQNR, at least 0, the join's name), when that is less than the
    layer's drop by more than :data:`UNDONE_MARGIN_DB`; else None.

    The branch is the chain of single consumers from the layer, each with one noisy parent, up to the first
    op with two or more (the join). Only a join that mixes its inputs (:data:`MIXING`: a gate's product,
    a residual sum) dilutes; a Concat keeps each input's values in its own slice, so its pooled SQNR
    says nothing of how much a branch lost (YOLO's class scores beside their boxes: the output verdict's
    slices judge them). A squeeze-and-excite branch is one: in
    PP-OCRv6's tiny detector the squeeze conv after a GlobalAveragePool clips 7.8 % of its 64 values and
    its SQNR falls 10.4 dB, but its gate's product with the main path is 1.7 dB below the main path, and
    the device finds that block alone int8 leaves the output at 37.9 dB, the stem's at 22.5 (all int8: 22.7)."""
    node = layer
    while True:
        readers = consumers.get(node["name"], [])
        if len(readers) != 1:
            return None
        join = readers[0]
        noisy = [p for p in join.get("parents", []) if p != node["name"] and noisy_sqnr(by_name.get(p)) is not None]
        if noisy:
            if join.get("op_type") not in MIXING or join.get("sqnr_db") is None:
                return None
            kept = max(0.0, min(noisy_sqnr(by_name[p]) for p in noisy) - join["sqnr_db"])
            return (kept, join["name"]) if kept < layer["drop_db"] - UNDONE_MARGIN_DB else None
        node = join


def inputs_sqnr(layer: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> float | None:
    """The lowest SQNR of the layer's noisy parents (:func:`noisy_sqnr`); None when it has none."""
    values = [s for s in (noisy_sqnr(by_name.get(p)) for p in layer.get("parents", [])) if s is not None]
    return min(values) if values else None


def adds_own_error(layer: dict[str, Any], inputs: float | None) -> bool:
    """Whether the layer has an error source of its own: weights (:data:`WEIGHTED_OPS`, or
    ``weight_psnr_db`` set: a conv fused with its activation), clipping (more than
    :data:`OWN_CLIPPED` of its values), or output rounding that is neither buried under its inputs'
    noise (local SQNR < inputs' SQNR + :data:`OWN_MARGIN_DB`; any local SQNR when it has no noisy
    input) nor a small part of the error the layer holds (local SQNR < its SQNR + :data:`OWN_MARGIN_DB`).

    The second test is for ops that magnify the relative error they inherit: a Sigmoid in its
    exponential tail (a wake-word score near 0: sigmoid(z) ~ e^z turns z's absolute error into the
    output's relative error), where SQNR falls by 18 dB through an op whose own rounding is 17 dB
    below the error it passes on."""
    if layer.get("op_type") in WEIGHTED_OPS or layer.get("weight_psnr_db") is not None:
        return True
    if (layer.get("clipped_fraction") or 0.0) > OWN_CLIPPED:
        return True
    local, sqnr = layer.get("local_sqnr_db"), layer.get("sqnr_db")
    if local is None or (sqnr is not None and local >= sqnr + OWN_MARGIN_DB):
        return False
    return inputs is None or local < inputs + OWN_MARGIN_DB


def noisy_sqnr(parent: dict[str, Any] | None) -> float | None:
    """A layer entry's SQNR when it carries quantization noise (not exact, below EXACT_SQNR_DB), else None."""
    if parent is None or parent.get("exact") or parent.get("sqnr_db") is None:
        return None
    return parent["sqnr_db"] if parent["sqnr_db"] < EXACT_SQNR_DB else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
