"""Agreement between targets: each target's model outputs against the reference target's.

The reference R is the first target that returned outputs; for every other target T,
every model output o and both models (float and int8), with R and T the outputs of
the timed sessions stacked over the samples (every target runs the same inputs):

- MSE  = Σ(T − R)² / N over every element of every sample (pooled)
- PSNR = 10·log10(peak² / MSE), peak = max|R| over all samples (:func:`metrics.psnr_db`)

MSE = 0 gives ``psnr_db = None`` with ``exact = True``. An integer output of the int8 model
with quantization parameters (a TFLite model with int8 outputs, an ONNX graph ending in
QuantizeLinear) is dequantized on both sides first, ``(q − zero_point) · scale`` in float64
(per channel along its axis), and gets the same figures (``kind: "dequantized"``), so that one
step of difference reads as a PSNR, not as a count of differing codes. Other outputs that are
not floating point (class indices) are compared element by element (``mismatches``). A target's
summary is the lowest PSNR over its float and dequantized outputs, per model.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from qbench.protocols.messages import QParams

from . import metrics

KINDS = ("int8", "float")

Outputs = Mapping[str, Mapping[str, np.ndarray]]  # model kind -> output name -> (samples, ...)
PSNR_KINDS = ("float", "dequantized")


def dequantize(codes: np.ndarray, qparams: QParams) -> np.ndarray:
    """``(q − zero_point) · scale`` in float64 for ``codes`` stacked over samples (axis 0 is the sample)."""
    scale, zero = np.asarray(qparams.scale, np.float64), np.asarray(qparams.zero_point, np.float64)
    if qparams.axis is not None and scale.size > 1:
        shape = [1] * codes.ndim
        shape[qparams.axis % (codes.ndim - 1) + 1] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (codes.astype(np.float64) - zero) * scale


def compare_tensor(reference: np.ndarray, other: np.ndarray, qparams: Optional[QParams] = None) -> dict[str, Any]:
    """Figures of one output of one target against the reference's.

    Args:
        reference, other: the output stacked over samples.
        qparams: the output's quantization, when it is an integer output of the int8 model.

    Returns:
        ``kind`` (float|dequantized|exact), ``exact``, and ``psnr_db``, ``mse``, ``max_abs_diff`` (float and
        dequantized outputs; in real units) or ``mismatches`` (others); ``error`` when they cannot be compared.
    """
    if reference.shape != other.shape:
        return {"kind": "float", "psnr_db": None, "exact": False,
                "error": f"shape {list(other.shape)} differs from the reference's {list(reference.shape)}"}
    floating = np.issubdtype(reference.dtype, np.floating) and np.issubdtype(other.dtype, np.floating)
    if not floating and qparams is not None and reference.dtype == other.dtype:
        return {**_psnr_figures(dequantize(reference, qparams), dequantize(other, qparams)), "kind": "dequantized"}
    if not floating:
        mismatches = int(np.count_nonzero(reference != other))
        return {"kind": "exact", "psnr_db": None, "exact": mismatches == 0, "mismatches": mismatches}
    return _psnr_figures(reference, other)


def _psnr_figures(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    ref, got = reference.astype(np.float64), other.astype(np.float64)
    if not (np.isfinite(ref).all() and np.isfinite(got).all()):
        return {"kind": "float", "psnr_db": None, "exact": False, "error": "non-finite values"}
    diff = got - ref
    mse = float(np.mean(diff * diff)) if diff.size else 0.0
    psnr = metrics.psnr_db(float(np.max(np.abs(ref))) if ref.size else 0.0, mse)
    return {"kind": "float", "psnr_db": None if psnr is None else round(psnr, 4), "exact": mse == 0.0,
            "mse": mse, "max_abs_diff": float(np.max(np.abs(diff))) if diff.size else 0.0}


def rows(reference: Outputs, label: str, outputs: Outputs,
         int8_qparams: Optional[Mapping[str, QParams]] = None) -> list[dict[str, Any]]:
    """One row per (model kind, output) of target ``label`` against the reference.

    ``int8_qparams`` maps the int8 model's integer outputs to their quantization (see
    :func:`qbench.host.compare.output_quant.int8_output_qparams`). An output the reference has and
    the target lacks (or the other way round) gets a row with ``error``.
    """
    out = []
    for kind in KINDS:
        ref, got = reference.get(kind) or {}, outputs.get(kind) or {}
        for name in dict.fromkeys([*ref, *got]):
            row: dict[str, Any] = {"target": label, "model": kind, "output": name}
            if name not in ref or name not in got:
                side = "reference" if name not in ref else "target"
                row.update(kind="float", psnr_db=None, exact=False, error=f"output missing on the {side}")
            else:
                qparams = (int8_qparams or {}).get(name) if kind == "int8" else None
                row.update(compare_tensor(ref[name], got[name], qparams))
            out.append(row)
    return out


def summary(target_rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The lowest PSNR over one target's float and dequantized outputs of model ``kind``; all outputs exact?

    Returns:
        ``psnr_db`` (None when every such output is exact or none has a PSNR), ``exact`` (every output
        identical to the reference's), ``mismatches`` (summed over non-float outputs), ``errors``.
    """
    picked = [r for r in target_rows if r["model"] == kind]
    psnrs = [r["psnr_db"] for r in picked if r.get("kind") in PSNR_KINDS and r.get("psnr_db") is not None]
    return {
        "psnr_db": min(psnrs) if psnrs else None,
        "exact": bool(picked) and all(r.get("exact") for r in picked),
        "mismatches": sum(r.get("mismatches", 0) for r in picked),
        "errors": [f"{r['output']}: {r['error']}" for r in picked if r.get("error")],
    }
