"""Agreement between targets: each target's model outputs against the reference target's.

The reference R is the first target that returned outputs; for every other target T,
every model output o and both models (float and int8), with R and T the outputs of
the timed sessions stacked over the samples (every target runs the same inputs):

- MSE  = Σ(T − R)² / N over every element of every sample (pooled)
- PSNR = 10·log10(peak² / MSE), peak = max|R| over all samples (:func:`metrics.psnr_db`)

MSE = 0 gives ``psnr_db = None`` with ``exact = True``. Outputs that are not floating
point (class indices) are compared element by element (``mismatches``). A target's
summary is the lowest PSNR over its float outputs, per model.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import metrics

KINDS = ("int8", "float")

Outputs = Mapping[str, Mapping[str, np.ndarray]]  # model kind -> output name -> (samples, ...)


def compare_tensor(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Figures of one output of one target against the reference's.

    Returns:
        ``kind`` (float|exact), ``exact``, and ``psnr_db``, ``mse``, ``max_abs_diff`` (float outputs) or
        ``mismatches`` (others); ``error`` when the two cannot be compared.
    """
    if reference.shape != other.shape:
        return {"kind": "float", "psnr_db": None, "exact": False,
                "error": f"shape {list(other.shape)} differs from the reference's {list(reference.shape)}"}
    if not (np.issubdtype(reference.dtype, np.floating) and np.issubdtype(other.dtype, np.floating)):
        mismatches = int(np.count_nonzero(reference != other))
        return {"kind": "exact", "psnr_db": None, "exact": mismatches == 0, "mismatches": mismatches}
    ref, got = reference.astype(np.float64), other.astype(np.float64)
    if not (np.isfinite(ref).all() and np.isfinite(got).all()):
        return {"kind": "float", "psnr_db": None, "exact": False, "error": "non-finite values"}
    diff = got - ref
    mse = float(np.mean(diff * diff)) if diff.size else 0.0
    psnr = metrics.psnr_db(float(np.max(np.abs(ref))) if ref.size else 0.0, mse)
    return {"kind": "float", "psnr_db": None if psnr is None else round(psnr, 4), "exact": mse == 0.0,
            "mse": mse, "max_abs_diff": float(np.max(np.abs(diff))) if diff.size else 0.0}


def rows(reference: Outputs, label: str, outputs: Outputs) -> list[dict[str, Any]]:
    """One row per (model kind, output) of target ``label`` against the reference.

    An output the reference has and the target lacks (or the other way round) gets a row with ``error``.
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
                row.update(compare_tensor(ref[name], got[name]))
            out.append(row)
    return out


def summary(target_rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The lowest PSNR over one target's float outputs of model ``kind``, and whether all outputs agree exactly.

    Returns:
        ``psnr_db`` (None when every float output is exact or none has a PSNR), ``exact`` (every output
        identical to the reference's), ``mismatches`` (summed over non-float outputs), ``errors``.
    """
    picked = [r for r in target_rows if r["model"] == kind]
    psnrs = [r["psnr_db"] for r in picked if r.get("kind") == "float" and r.get("psnr_db") is not None]
    return {
        "psnr_db": min(psnrs) if psnrs else None,
        "exact": bool(picked) and all(r.get("exact") for r in picked),
        "mismatches": sum(r.get("mismatches", 0) for r in picked),
        "errors": [f"{r['output']}: {r['error']}" for r in picked if r.get("error")],
    }
