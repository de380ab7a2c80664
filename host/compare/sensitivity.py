"""Sensitive-layer ranking: which layers to look at (or keep in higher precision) first, and why.

Every figure here is scale-free: SQNR, not PSNR, since PSNR is normalised by the tensor's peak, and
an op that caps the peak (Clip/ReLU6, Sigmoid, HardSwish after a wide conv) lowers PSNR by 10-27 dB
while the error stays the same. The score of a layer, in dB, is the error it adds by itself:

    score = 0 when drop_db < VISIBLE_DB (its SQNR is no worse than its inputs': nothing it adds shows),
            or when it has no error source of its own (metrics.adds_own_error: no weights, no clipping,
            local SQNR ≥ inputs' SQNR + 10 dB, a squashing op that compresses signal more than error, or
            local SQNR ≥ its own SQNR + 10 dB, an op that magnifies the error it inherits)
    else    max(0, drop_db)
          + max(0, LOCAL_SQNR_DB − local_sqnr_db), when its own error is not buried: local_sqnr_db is
            below its inputs' SQNR (or it has no noisy input)
          + max(0, WEIGHT_DB − the weights' effective PSNR: the worst live channel's error against the
                   larger of its own peak and the median channel's, compare.weights)
          + HINT_DB if the op is a known culprit and the sum above is > 0

A term whose figure is missing counts 0. ``drop_db`` is how far the layer's SQNR falls below its
noisy inputs' (metrics.flag_drops), ``local_sqnr_db`` the float tensor against itself quantized with
the int8 model's scale and zero point (rounding and clipping at this tensor), relative to its
signal; the inputs' SQNR is the lowest of its noisy parents' (metrics.noisy_sqnr); the weight
term the lowest channel PSNR of the weights the layer consumes, dead channels left out
(compare.weights). Error that only arrived from upstream adds nothing.

Reasons, each with its threshold:

- ``sudden drop``: ``drop`` flag set (drop_db above the run's ``--drop-db``, an own error source);
  ``drop`` when drop_db is at least VISIBLE_DB but not above that threshold; ``squashed`` when drop_db
  is at least VISIBLE_DB and the layer has no error source of its own (score 0)
- ``diluted``: a side branch's drop that mostly does not survive where the branch joins the main path
  (metrics.drop_joined); ``drop_joined_db`` stands for drop_db, and its own error terms do not count
  (what survives the join is all of it)
- ``clipping``: clipped_fraction > CLIP_FRACTION
- ``wide range``: the int8 range (quant_max − quant_min) > WIDE_RANGE × the values seen (float_max − float_min)
- ``bad step``: rmse_over_step > STEP_RATIO (rounding alone gives 1/√12 ≈ 0.29), unless the error
  is from upstream (rmse_over_step measures the cumulative error)
- ``outlier-dominated range``: local SQNR below LOCAL_SQNR_DB, not buried, crest_db ≥ CREST_DB
  (peak ≥ 10× RMS) and no clipping (else the range is too narrow, not too wide): a min/max scale
  spends the int8 levels on a few outliers, most values lie within a few steps of zero; the reason
  names the remedies for that tensor
- ``local error``: the same otherwise
- ``error from upstream``: sqnr_db < UPSTREAM_SQNR_DB, a noisy input, and a score of 0
- ``weight error``: the weights' effective PSNR < WEIGHT_DB
- ``offset input``: a scoring layer with quantized weights whose input (through ops that only move
  or pad values: Pad, Reshape, Transpose...) varies by no more than its distance from 0 (float_min
  and float_max of one sign, (max − min) / 2 ≤ min(|min|, |max|), so its mean is at least its
  standard deviation): a variation on a large offset, as log-mel features. A layer that removes the
  offset (filters summing to about 0) turns its weights' rounding, times the offset, into error
  that is large against its output, although the weights themselves measure well; keeping its
  weights in float, or subtracting the offset before the model, helps
- op hints: Softmax; squeeze-and-excite = a Sigmoid/HardSigmoid gate with fewer elements than the
  Mul it feeds (a pooled branch broadcast over the main path), and that Mul. A SiLU's Sigmoid
  (x·sigmoid(x), as many elements as x) is not one.

A layer is listed when it has a score above 0 or an ``error from upstream`` reason; op hints alone
do not list it. Order: score, highest first, then SQNR, lowest first.

What the ranking accounts for (:func:`account`): ``sqnr_lost_db`` = entry SQNR − the lowest output
SQNR, the entry SQNR being that of the first layer, in graph order, with quantization noise (the
quantized input, or the first layer after an exact one);
``scores_db`` = the sum of every listed layer's score; ``magnified_db`` = the sum of the SQNR drops of
the magnifiers (:func:`_magnifiers`: a Log, Sqrt, Reciprocal, Div, Exp, Pow or Sigmoid whose SQNR falls
at least :data:`MAGNIFIED_DB` below its inputs' with no error source of its own). The ranking ``explains`` the
output's error unless more than :data:`LOST_DB` dB were lost and either the scores add up to less than
:data:`EXPLAINED_SHARE` of it or the magnifiers' drops to at least the rest (1 − EXPLAINED_SHARE) of it:
a magnifier weighs the error of some values far above that of others (a Log the error of the small
ones), which no layer's SQNR, dominated by the large values, shows. The dB do not add exactly; the
threshold is where the published
models part: on 24 of them (11 ONNX, 13 TFLite; min/max int8 by qbench) the scores add up to
0.99-7.1x the loss (on ppocr-v4-det and oww-embedding the ranking's top is also checked against the
device sweep and by-hand repairs: tests/test_published_diagnosis.py); on the small fully connected wake-word
heads, where the output's error comes from how the layers' errors combine (a mean shift carried
through LayerNorms, a Sigmoid tail that magnifies, errors that cancel), 0.15x and 0.43x (hey-jarvis,
alexa: 32 calibration windows) and 0.50x (hey-jarvis, 4 windows), and the ranking's top is not the
sweep's worst block. There, only a measurement on the device says where the damage is, which
``qbench run`` then makes itself (:mod:`qbench.host.ranking_sweep`).
"""

from __future__ import annotations

import math
from typing import Any

from .metrics import adds_own_error, inputs_sqnr, noisy_sqnr
from .weights import worst_psnr_db

LOCAL_SQNR_DB = 35.0
WEIGHT_DB = 40.0
UPSTREAM_SQNR_DB = 20.0
VISIBLE_DB = 1.0
CREST_DB = 20.0
CLIP_FRACTION = 0.01
WIDE_RANGE = 2.0
STEP_RATIO = 1.0
HINT_DB = 3.0
LOST_DB = 3.0
EXPLAINED_SHARE = 0.75
#: a magnifier's drop that counts: a sudden drop's default. A square doubles the relative error (-6 dB at
#: most); the LayerNorm variances and score Sigmoids of the published recognizers and detectors fall 3-5 dB
#: through them, and their rankings' tops are where the device sweep finds the damage
MAGNIFIED_DB = 6.0
#: element-wise ops whose output can hold a larger relative error than their input: their slope times x over
#: their value exceeds 1 somewhere (Log and Sqrt near 0, Reciprocal and Div, Exp and Pow of large values, a
#: Sigmoid's exponential tail). Other ops lower SQNR without magnifying: a Slice that keeps a quieter part, a
#: clip that caps the signal.
MAGNIFYING_OPS = {"Log", "Sqrt", "Reciprocal", "Div", "Exp", "Pow", "Sigmoid", "LOG", "SQRT", "RSQRT", "DIV",
                  "EXP", "POW", "LOGISTIC"}
MAGNIFIERS_LISTED = 3

_SOFTMAX = {"Softmax", "LogSoftmax", "SOFTMAX", "LOG_SOFTMAX"}
_GATES = {"Sigmoid", "HardSigmoid", "LOGISTIC", "HARD_SIGMOID"}
_MUL = {"Mul", "MUL"}
# ops that only move values (or pad them with constants): an input's range is seen through them
_MOVES = {"Pad", "Reshape", "Transpose", "Identity", "Flatten", "Squeeze", "Unsqueeze", "PAD", "RESHAPE", "TRANSPOSE"}
REMEDIES = "percentile or entropy calibration, int16 activations, per-channel activation scales if the runtime has them"


def rank_sensitive(layers: list[dict], weights: list[dict] | None = None, limit: int | None = None) -> list[dict]:
    """Layers ranked by sensitivity, worst first (the score and reasons are defined in the module doc).

    Args:
        layers: report["layers"] entries (name, op_type, sqnr_db, local_sqnr_db, crest_db, drop,
            drop_db, clipped_fraction, rmse_over_step, float_min/max, quant_min/max, elements,
            parents; any may be missing).
        weights: report["weights"] entries; when None, the layers' own ``weight_effective_psnr_db``
            (a report older than it: ``weight_worst_channel_psnr_db``, or ``weight_psnr_db``) is used.
        limit: keep at most this many.

    Returns:
        ``[{"name", "op_type", "psnr_db", "sqnr_db", "score", "reasons": [str]}]``.
    """
    weight_db = _weight_db_by_layer(layers, weights)
    graph = _Graph(layers)
    ranked = []
    for layer in layers:
        score, reasons, upstream = _assess(layer, weight_db.get(layer["name"]), graph)
        if score > 0 or upstream:
            ranked.append({"name": layer["name"], "op_type": layer.get("op_type"), "psnr_db": layer.get("psnr_db"),
                           "sqnr_db": layer.get("sqnr_db"), "score": round(score, 4), "reasons": reasons})
    ranked.sort(key=lambda x: (-x["score"], math.inf if x["sqnr_db"] is None else x["sqnr_db"]))
    return ranked if limit is None else ranked[:limit]


def account(layers: list[dict], outputs: list[dict], ranked: list[dict]) -> dict[str, Any] | None:
    """How much of the SQNR lost between where noise enters and the worst output the ranking's scores
    add up to (see the module doc); None without the figures."""
    first = next((x for x in layers if noisy_sqnr(x) is not None), None)  # layers are in graph order
    out = [o["sqnr_db"] for o in outputs if o.get("sqnr_db") is not None and math.isfinite(o["sqnr_db"])]
    if first is None or not out:
        return None
    lost = first["sqnr_db"] - min(out)
    scores = sum(x["score"] for x in ranked)
    magnifiers = _magnifiers(layers)
    magnified = sum(m["drop_db"] for m in magnifiers)
    return {"entry_layer": first["name"], "entry_sqnr_db": round(first["sqnr_db"], 4), "output_sqnr_db": round(min(out), 4),
            "sqnr_lost_db": round(lost, 4), "scores_db": round(scores, 4), "magnified_db": round(magnified, 4),
            "magnifiers": magnifiers[:MAGNIFIERS_LISTED],
            "explains": bool(lost <= LOST_DB or (scores >= EXPLAINED_SHARE * lost
                                                 and magnified < (1 - EXPLAINED_SHARE) * lost))}


def _magnifiers(layers: list[dict]) -> list[dict[str, Any]]:
    """The layers of :data:`MAGNIFYING_OPS` whose SQNR falls at least :data:`MAGNIFIED_DB` below their inputs'
    with no error source of their own (metrics.adds_own_error): the error they pass on is the inherited one,
    magnified. Largest drop first."""
    by_name = {x["name"]: x for x in layers}
    found = [{"name": x["name"], "op_type": x.get("op_type"), "drop_db": round(x["drop_db"], 4)} for x in layers
             if x.get("op_type") in MAGNIFYING_OPS and (x.get("drop_db") or 0.0) >= MAGNIFIED_DB
             and not adds_own_error(x, inputs_sqnr(x, by_name))]
    return sorted(found, key=lambda m: -m["drop_db"])


class _Graph:
    """Parents and consumers of the report's layers."""

    def __init__(self, layers: list[dict]):
        self.by_name = {x["name"]: x for x in layers}
        self.consumers: dict[str, list[dict]] = {}
        for layer in layers:
            for p in layer.get("parents", []):
                self.consumers.setdefault(p, []).append(layer)

    def inputs_sqnr(self, layer: dict) -> float | None:
        return inputs_sqnr(layer, self.by_name)

    def offset_input(self, layer: dict) -> tuple[str, float, float] | None:
        """(name, min, max) of an input of ``layer`` that is a small variation on a large offset, looked
        for through ops that only move or pad values; None when there is none."""
        for name in layer.get("parents", []):
            source = self.by_name.get(name)
            while source is not None and source.get("op_type") in _MOVES and len(source.get("parents", [])) == 1:
                source = self.by_name.get(source["parents"][0])
            if source is None or source.get("float_min") is None or source.get("float_max") is None:
                continue
            lo, hi = source["float_min"], source["float_max"]
            if lo * hi > 0 and min(abs(lo), abs(hi)) >= (hi - lo) / 2:
                return source["name"], lo, hi
        return None

    def is_se_gate(self, layer: dict) -> bool:
        """A Sigmoid/HardSigmoid whose values a Mul broadcasts over a larger tensor (a pooled branch)."""
        if layer.get("op_type") not in _GATES or not layer.get("elements"):
            return False
        return any(c.get("op_type") in _MUL and (c.get("elements") or 0) > layer["elements"]
                   for c in self.consumers.get(layer["name"], []))


def _assess(layer: dict[str, Any], weight_db: float | None, graph: _Graph) -> tuple[float, list[str], bool]:
    """(score, reasons, whether the error came from upstream) of one layer."""
    reasons: list[str] = []
    drop_db, sqnr = layer.get("drop_db"), layer.get("sqnr_db")
    inputs = graph.inputs_sqnr(layer)
    kept = layer.get("drop_kept_db", layer.get("drop_joined_db"))
    scores = ((drop_db is None or drop_db >= VISIBLE_DB) and (kept is None or kept >= VISIBLE_DB)
              and adds_own_error(layer, inputs))
    score = max(0.0, drop_db if kept is None else kept) if scores and drop_db is not None else 0.0
    if layer.get("joined_at") is not None and drop_db is not None and drop_db >= VISIBLE_DB:
        reasons.append(f"diluted: SQNR {drop_db:.1f} dB below its inputs', {kept:.1f} dB of it left where its branch "
                       f"joins another path at {layer['joined_at']}")
    elif kept is not None and drop_db is not None and drop_db >= VISIBLE_DB:
        consumers = graph.consumers.get(layer["name"], [])
        reasons.append(f"{'undone' if kept < VISIBLE_DB else 'partly undone'}: SQNR {drop_db:.1f} dB below its "
                       f"inputs', {kept:.1f} dB of it left at {', '.join(c['name'] for c in consumers)}, which "
                       "discards what this layer's int8 range clips or rounds")
    if layer.get("drop"):
        reasons.append(f"sudden drop: SQNR {drop_db if kept is None else kept:.1f} dB below its inputs'")
    elif kept is None and drop_db is not None and drop_db >= VISIBLE_DB:
        reasons.append(f"drop: SQNR {drop_db:.1f} dB below its inputs'" if scores else
                       f"squashed: SQNR {drop_db:.1f} dB below its inputs', but it adds no error of its own "
                       f"(local SQNR {_db(layer.get('local_sqnr_db'))}): the op compresses the signal more than "
                       "the error it inherits")
    clipped = layer.get("clipped_fraction")
    if clipped is not None and clipped > CLIP_FRACTION:
        reasons.append(f"clipping: {clipped:.1%} of values outside the int8 range")
    ratio = _range_ratio(layer)
    if ratio is not None and ratio > WIDE_RANGE:
        reasons.append(f"wide range: int8 range {ratio:.1f}x the values seen")
    own = _own_error(layer, inputs) if kept is None else None  # what the consumers discard is not its error
    if own is not None and scores:
        score += own[0]
    if weight_db is not None and weight_db < WEIGHT_DB and scores:
        score += WEIGHT_DB - weight_db
    upstream = sqnr is not None and sqnr < UPSTREAM_SQNR_DB and score == 0 and inputs is not None
    step = layer.get("rmse_over_step")
    if step is not None and step > STEP_RATIO and not upstream:  # else the excess error is inherited
        reasons.append(f"bad step: RMSE {step:.2f} steps (rounding alone: 0.29)")
    if own is not None:
        reasons.append(own[1])
    if upstream:
        reasons.append(f"error from upstream: SQNR {sqnr:.1f} dB cumulative, local SQNR "
                       f"{_db(layer.get('local_sqnr_db'))}")
    if weight_db is not None and weight_db < WEIGHT_DB:
        reasons.append(f"weight error: worst channel {weight_db:.1f} dB (its error against the larger of its "
                       "peak and the median channel's)")
    offset = graph.offset_input(layer) if weight_db is not None and scores and score > 0 else None
    if offset is not None:
        name, lo, hi = offset
        reasons.append(f"offset input: {name} lies in [{lo:.3g}, {hi:.3g}], a variation on an offset, so "
                       "the rounding of this layer's weights times that offset is large against its output; keep its "
                       "weights in float, or subtract the offset before the model")
    hint = _hint(layer, graph)
    if hint and score > 0:
        score += HINT_DB
        reasons.append(hint)
    return score, reasons, upstream


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} dB"


def _own_error(layer: dict[str, Any], inputs_sqnr: float | None) -> tuple[float, str] | None:
    """(score term, reason) of a layer whose own int8 rounding is the larger noise, else None."""
    local = layer.get("local_sqnr_db")
    if local is None or local >= LOCAL_SQNR_DB or (inputs_sqnr is not None and local >= inputs_sqnr):
        return None
    crest = layer.get("crest_db")
    if crest is not None and crest >= CREST_DB and (layer.get("clipped_fraction") or 0.0) <= CLIP_FRACTION:
        return LOCAL_SQNR_DB - local, (
            f"outlier-dominated range: peak {10 ** (crest / 20):.0f}x the RMS leaves local SQNR {local:.1f} dB; "
            f"for this tensor try {REMEDIES}")
    return LOCAL_SQNR_DB - local, f"local error: its own quantization leaves local SQNR {local:.1f} dB"


def _range_ratio(layer: dict[str, Any]) -> float | None:
    keys = ("quant_min", "quant_max", "float_min", "float_max")
    if any(layer.get(k) is None for k in keys):
        return None
    seen = layer["float_max"] - layer["float_min"]
    return (layer["quant_max"] - layer["quant_min"]) / seen if seen > 0 else None


def _hint(layer: dict[str, Any], graph: _Graph) -> str | None:
    op = layer.get("op_type")
    if op in _SOFTMAX:
        return "softmax: amplifies rounding errors (seed: keep it in higher precision)"
    if graph.is_se_gate(layer):
        return "squeeze-and-excite gate: a pooled sigmoid branch gating the main path, a typical culprit"
    if op in _MUL and any(graph.is_se_gate(graph.by_name.get(p, {})) for p in layer.get("parents", [])):
        return "squeeze-and-excite scaling: typical culprit"
    return None


def _weight_db_by_layer(layers: list[dict], weights: list[dict] | None) -> dict[str, float]:
    """Per layer, the lowest live weight channel PSNR (the tensor PSNR when there are no channels)."""
    out: dict[str, float] = {}
    if weights is None:
        for layer in layers:
            value = layer.get("weight_effective_psnr_db",
                              layer.get("weight_worst_channel_psnr_db", layer.get("weight_psnr_db")))
            if value is not None:
                out[layer["name"]] = value
        return out
    for w in weights:
        value = w.get("effective_psnr_db", worst_psnr_db(w))
        if w.get("layer") is not None and value is not None:
            out[w["layer"]] = min(value, out.get(w["layer"], math.inf))
    return out
