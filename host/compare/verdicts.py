"""Output verdicts: is an int8 output still usable, judged by its structure, not by one PSNR.

From the agent's ``StructureStats`` of an output (counts and sums only; see agent/structure.py):

- **slices**: of the axes the agent sliced, the one whose slices' peaks (max|f| per slice) spread the
  most. When the slices fall into two value ranges (the cut of the sorted log10 peaks that leaves the
  least variance within each side, kept when the small side's largest peak × SPREAD is at most the
  large side's smallest: the boxes and the scores of a concatenated detector output), each range is
  a group, judged by its pooled SQNR = 10·log10(Σf² / Σ(f − q)²) over its slices. A group whose
  int8 slices each hold one value while the float slices vary is *destroyed* (its values rounded
  away under a scale set by the other group).
- **fields**: when that axis has at most :data:`FIELDS` slices (the fields of a detector's output:
  box coordinates, objectness, a few class scores), each slice in a group's value range (its peak at
  least the group's largest over SPREAD; all slices are one group when there are not two ranges) is
  judged by its own SQNR, since a pooled SQNR hides a field its neighbours outweigh: yolox-det's
  objectness at 4.7 dB SQNR, half its detections above 0.3 lost, inside an output at 27 dB.
- **top-1 / top-k agreement** along the class axis: the share of positions where the int8 argmax
  is the float argmax / where the float argmax is among the int8 model's k largest (k = 5).
- **decisions** of a probability output (a Sigmoid's; threshold :data:`DECISION_THRESHOLD`): the
  elements each model decides positive (value > threshold), and ``decision_f1`` = 2·|F ∧ Q| / (|F| + |Q|),
  the F1 score of the int8 model's positives against the float model's. Agreement over all elements
  would say little: the negatives dominate (basic-pitch's note activations agree on 99 % of their
  elements while F1 is 0.49-0.69). Undefined (None) when neither model decides a positive; 0 when
  only the int8 model does (false alarms). Where neither does, the output's values all lie below the
  threshold, and the data exercises no decision: the output SQNR then measures the rounding of
  near-zero scores (LiteRT's int8 LOGISTIC has a fixed step of 1/256, so every probability below
  1/512 reads 0), and its level is at most ``degraded``, with a reason that says so.
- **CTC reading**: each sequence is the argmax along the class axis, repeats collapsed, blank (0)
  dropped; an autoregressive decoder's (``reading`` ``decoded``) keeps its repeats.
  ``sequence_agreement`` = sequences read identically / sequences; ``cer`` = Σ Levenshtein
  distance / Σ float sequence length; ``float_reads`` / ``int8_reads`` = sequences with at least one
  symbol.

Verdict, the worst that applies (``broken`` > ``degraded`` > ``ok``), each with a reason:

| figure | broken | degraded |
|--------|--------|----------|
| NaN or infinity in the output (either model) | any | |
| output SQNR | < BROKEN_SQNR_DB (1 dB: error as large as the signal) | < DEGRADED_SQNR_DB (20 dB) |
| a slice group | destroyed, or its SQNR < BROKEN_SQNR_DB | SQNR < DEGRADED_SQNR_DB |
| a field (a slice of an axis of at most FIELDS) | SQNR < BROKEN_SQNR_DB | SQNR < DEGRADED_SQNR_DB |
| top-1 agreement (no CTC reading) | < BROKEN_TOP1 (0.5) | < DEGRADED_TOP1 (0.9) |
| decision F1 (either model decides some positive) | < BROKEN_F1 (0.5) | < DEGRADED_F1 (0.9) |
| CTC, float reads text | int8 reads none, or cer ≥ BROKEN_CER (0.5) | cer > DEGRADED_CER (0.05) |

PSNR is not used: it is normalised by the output's peak, which a few large values (boxes) set.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from qbench.protocols.messages import SliceStats, StructureStats

from .metrics import nonfinite_text, sqnr_db
from .output_structure import DECISION_THRESHOLD

SPREAD = 10.0
FIELDS = 16
BROKEN_SQNR_DB = 1.0
DEGRADED_SQNR_DB = 20.0
BROKEN_TOP1 = 0.5
DEGRADED_TOP1 = 0.9
BROKEN_CER = 0.5
DEGRADED_CER = 0.05
BROKEN_F1 = 0.5
DEGRADED_F1 = 0.9
_ORDER = {"ok": 0, "degraded": 1, "broken": 2}


def structure_figures(st: StructureStats | None) -> dict[str, Any]:
    """The report figures of one output's structure (empty when the agent sent none)."""
    if st is None:
        return {}
    out: dict[str, Any] = {}
    if st.error:
        out["structure_error"] = st.error
    sliced = _slice_axis(st.slices)
    if sliced is not None:
        out["slices"] = sliced
    if st.positions:
        out.update(top1_agreement=_round(st.top1_agree / st.positions), top_k=st.top_k,
                   topk_agreement=_round(st.topk_agree / st.positions), positions=st.positions)
    if st.sequences:
        out.update(reading="decoded" if st.repeats_kept else "ctc",
                   sequences=st.sequences, sequence_agreement=_round(st.sequences_equal / st.sequences),
                   float_reads=st.float_nonempty, int8_reads=st.int8_nonempty,
                   cer=_round(st.edit_distance / st.float_symbols) if st.float_symbols else None)
    if st.decisions:
        both, shown = st.both_positive, st.float_positive + st.int8_positive
        out["decisions"] = {"threshold": DECISION_THRESHOLD, "elements": st.decisions,
                            "float_positive": st.float_positive, "int8_positive": st.int8_positive,
                            "both_positive": both}
        out["decision_f1"] = _round(2 * both / shown) if shown else None
    return out


def judge(output: dict[str, Any]) -> tuple[str, list[str]]:
    """(verdict, reasons) of one report output entry carrying :func:`structure_figures`."""
    found: list[tuple[str, str]] = []
    if output.get("nonfinite"):  # no figure exists for NaN or infinity, and no value of them is usable
        found.append(("broken", f"NaN or infinity in the output ({nonfinite_text(output['nonfinite'])})"))
    if output.get("kind") == "float" and output.get("error") is None:
        found += _untested(output, _sqnr_level("output", output.get("sqnr_db"), output.get("exact")))
    sliced = output.get("slices") or {}
    for group in sliced.get("groups", []):
        found += _group_level(sliced["axis"], group)
    if sliced:
        found += _field_level(sliced)
    if output.get("sequences"):
        found += _ctc_level(output)
    elif output.get("top1_agreement") is not None:
        top1 = output["top1_agreement"]
        level = "broken" if top1 < BROKEN_TOP1 else "degraded" if top1 < DEGRADED_TOP1 else None
        if level:
            found.append((level, f"top-1 agreement {top1:.1%} over {output['positions']} positions "
                                 f"(top-{output['top_k']}: {output['topk_agreement']:.1%})"))
    if output.get("decision_f1") is not None:
        found += _decision_level(output["decisions"], output["decision_f1"])
    verdict = max((level for level, _ in found), key=_ORDER.get, default="ok")
    return verdict, [reason for _, reason in found]


def worst(verdicts: Iterable[str]) -> str | None:
    """The worst of some verdicts; None when there are none."""
    return max(verdicts, key=_ORDER.get, default=None)


def agreement(output: dict[str, Any]) -> float | None:
    """The output's top-1 agreement figure for the gate: sequence agreement for a CTC output."""
    return output.get("sequence_agreement", output.get("top1_agreement"))


def _sqnr_level(what: str, sqnr: float | None, exact: bool | None) -> list[tuple[str, str]]:
    if sqnr is None or exact:
        return []
    if sqnr < BROKEN_SQNR_DB:
        return [("broken", f"{what} SQNR {sqnr:.1f} dB: the error is as large as the signal")]
    if sqnr < DEGRADED_SQNR_DB:
        return [("degraded", f"{what} SQNR {sqnr:.1f} dB (below {DEGRADED_SQNR_DB:g} dB)")]
    return []


def _group_level(axis: int, group: dict[str, Any]) -> list[tuple[str, str]]:
    what = f"slices {_span(group['slices'])} along axis {axis} (values up to {group['peak']:.3g})"
    if group.get("destroyed"):
        return [("broken", f"{what}: destroyed, the int8 output holds one value per slice "
                           f"while the float values vary (SQNR {_db(group.get('sqnr_db'))})")]
    return _sqnr_level(what, group.get("sqnr_db"), False)


def _field_level(sliced: dict[str, Any]) -> list[tuple[str, str]]:
    """The fields of a short axis whose own SQNR falls below the thresholds (module doc), worst first."""
    if sliced["count"] > FIELDS:
        return []
    peaks, sqnrs = sliced["peak"], sliced["sqnr_db"]
    if sliced.get("groups"):  # a group of one slice is judged as a group already
        groups = [g["slices"] for g in sliced["groups"] if len(g["slices"]) > 1]
    else:
        groups = [list(range(sliced["count"]))]
    low = sorted(((sqnrs[i], i) for idx in groups for i in idx
                  if sqnrs[i] is not None and sqnrs[i] < DEGRADED_SQNR_DB
                  and peaks[i] * SPREAD >= max(peaks[j] for j in idx)))
    if not low:
        return []
    level = "broken" if low[0][0] < BROKEN_SQNR_DB else "degraded"
    shown = ", ".join(f"{i} ({s:.1f} dB)" for s, i in low[:4]) + (" ..." if len(low) > 4 else "")
    return [(level, f"field(s) along axis {sliced['axis']} below {DEGRADED_SQNR_DB:g} dB SQNR on their own: {shown}")]


def _untested(output: dict[str, Any], levels: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The output SQNR's levels, capped at degraded and said to be about sub-threshold values, for a
    probability output on which neither model decides a positive (module doc)."""
    d = output.get("decisions")
    if not d or d["float_positive"] or d["int8_positive"]:
        return levels
    why = (f"no value exceeds the decision threshold {d['threshold']:g} in either model (float values up to "
           f"{output.get('float_max', 0):.3g}): the decisions agree on all {d['elements']} elements, but the "
           "data holds no positive to test them; give samples with some")
    if not levels:
        return [("ok", why)]
    return [("degraded", f"{reason}, on values below the threshold; {why}") for _, reason in levels]


def _decision_level(d: dict[str, Any], f1: float) -> list[tuple[str, str]]:
    level = "broken" if f1 < BROKEN_F1 else "degraded" if f1 < DEGRADED_F1 else None
    if level is None:
        return []
    return [(level, f"decisions above {d['threshold']:g}: F1 {f1:.2f} against the float model's "
                    f"(positives: float {d['float_positive']}, int8 {d['int8_positive']}, both "
                    f"{d['both_positive']}, of {d['elements']} elements)")]


def _ctc_level(output: dict[str, Any]) -> list[tuple[str, str]]:
    n, reads, cer = output["sequences"], output["float_reads"], output.get("cer")
    if not reads:
        return []  # the float model reads nothing here: no reading to compare against
    if not output["int8_reads"]:
        return [("broken", f"int8 reads no text: the float model reads text in {reads} of {n} sequences")]
    what, rate = (("decoded sequences (repeats kept)", "symbol") if output.get("reading") == "decoded"
                  else ("CTC reading", "character"))
    text = f"{what}: {output['sequence_agreement']:.0%} of {n} sequences identical, {rate} error rate {cer:.1%}"
    if cer >= BROKEN_CER:
        return [("broken", text)]
    return [("degraded", text)] if cer > DEGRADED_CER else []


def _slice_axis(slices: list[SliceStats]) -> dict[str, Any] | None:
    """The sliced axis whose slice peaks spread the most, with its groups (module doc)."""
    best, best_spread = None, 1.0
    for sl in slices:
        live = [p for p in sl.max_abs_float if p > 0]
        spread = max(live) / min(live) if live else 1.0
        if spread > best_spread:
            best, best_spread = sl, spread
    if best is None:
        return None
    n = len(best.count)
    sqnrs = [_round(sqnr_db(f, e)) for f, e in zip(best.sum_sq_float, best.sum_sq_err)]
    groups = [_group(best, idx) for idx in _split(best.max_abs_float)] if best_spread >= SPREAD else []
    return {"axis": best.axis, "count": n, "peak": [_sig(p) for p in best.max_abs_float],
            "sqnr_db": sqnrs, "groups": [g for g in groups if len(groups) > 1]}


def _split(peaks: list[float]) -> list[list[int]]:
    """Slice indices in one or two value ranges (module doc)."""
    order = sorted((i for i, p in enumerate(peaks) if p > 0), key=lambda i: peaks[i])
    logs = [math.log10(peaks[i]) for i in order]
    best, best_cost = None, math.inf
    for cut in range(1, len(order)):
        cost = _sum_sq_dev(logs[:cut]) + _sum_sq_dev(logs[cut:])
        if cost < best_cost:
            best, best_cost = cut, cost
    if best is None or peaks[order[best - 1]] * SPREAD > peaks[order[best]]:
        return [list(range(len(peaks)))]
    small = sorted(order[:best])
    return [small, [i for i in range(len(peaks)) if i not in set(small)]]


def _group(sl: SliceStats, idx: list[int]) -> dict[str, Any]:
    varies = [sl.float_max[i] > sl.float_min[i] for i in idx]
    constant = [sl.int8_max[i] == sl.int8_min[i] for i in idx]
    return {"slices": idx, "peak": _sig(max(sl.max_abs_float[i] for i in idx)),
            "sqnr_db": _round(sqnr_db(sum(sl.sum_sq_float[i] for i in idx), sum(sl.sum_sq_err[i] for i in idx))),
            "destroyed": any(varies) and all(constant)}


def _sum_sq_dev(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values)


def _span(idx: list[int]) -> str:
    """``4-21`` for a run of indices, else a comma list (at most 8 shown)."""
    if idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}-{idx[-1]}" if len(idx) > 1 else str(idx[0])
    return ", ".join(map(str, idx[:8])) + (" ..." if len(idx) > 8 else "")


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} dB"


def _sig(value: float) -> float:
    """Four significant digits (peaks span many decades)."""
    return float(f"{value:.4g}")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
