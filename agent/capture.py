"""Per-layer capture on the device: budget grouping and error accumulators.

Only numbers leave the device: for each float/int8 tensor pair the accumulators of
:class:`PairStats`, summed in float64 over every element of every sample.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from qbench.protocols.messages import CapturePair, PairStats, QParams

#: elements reduced at a time, to bound the float64 temporaries
CHUNK = 1 << 20


def plan_groups(sizes: list[int | None], budget_bytes: int) -> list[list[int]]:
    """Split pair indices into consecutive groups whose summed size fits the budget.

    Consecutive indices keep a group's tensors close in the graph. A pair larger than
    the budget gets a group of its own (it cannot be split); an unknown size counts as
    the largest known size. Every index appears in exactly one group.
    """
    known = [s for s in sizes if s is not None]
    fallback = max(known) if known else 0
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, size in enumerate(sizes):
        size = fallback if size is None else size
        if current and used + size > budget_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += size
    if current:
        groups.append(current)
    return groups


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """real = (q - zero_point) * scale, per channel along ``qp.axis`` when scale has several values."""
    scale, zero = _broadcast(qp, q.ndim)
    return (q.astype(np.float64) - zero) * scale


def _broadcast(qp: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(qp.scale, dtype=np.float64)
    zero = np.asarray(qp.zero_point, dtype=np.float64)
    if scale.size > 1:
        axis = 1 if qp.axis is None else qp.axis  # ONNX's default channel axis
        shape = [1] * ndim
        shape[axis % ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return scale, zero


class PairAccumulator:
    """Sums over samples for one pair; :meth:`stats` gives the wire form."""

    def __init__(self, pair: CapturePair):
        self.pair = pair
        self.s = PairStats()
        if pair.qparams is not None and not pair.exact:
            self.s.local_sum_sq_err = 0.0
            self.s.clipped = 0

    def update(self, f: np.ndarray, q: np.ndarray) -> None:
        """Add one sample: ``f`` from the float model, ``q`` from the int8 model (raw)."""
        if self.s.error:
            return
        if f.shape != q.shape:
            self.s.error = f"shapes differ: float {list(f.shape)} vs int8 {list(q.shape)}"
            return
        if self.pair.exact:
            self.s.count += f.size
            self.s.mismatches += int(np.count_nonzero(f != q))
            return
        qp = self.pair.qparams
        if qp is not None and np.size(qp.scale) > 1:
            self._reduce(f.reshape(-1), dequantize(q, qp).reshape(-1), self._local(f))
            return
        for fc, qc in zip(_chunks(f), _chunks(q)):
            f64 = fc.astype(np.float64)
            q64 = (qc.astype(np.float64) - qp.zero_point[0]) * qp.scale[0] if qp is not None else qc.astype(np.float64)
            self._reduce(f64, q64, self._local(fc))

    def _local(self, f: np.ndarray) -> np.ndarray | None:
        """f quantized with the int8 model's own scale and zero point, then dequantized."""
        qp = self.pair.qparams
        if qp is None:
            return None
        lo, hi = qp.levels()
        scale, zero = _broadcast(qp, f.ndim) if np.size(qp.scale) > 1 else (qp.scale[0], qp.zero_point[0])
        levels = np.rint(f.astype(np.float64) / scale) + zero  # rint: half to even, as QuantizeLinear
        self.s.clipped += int(np.count_nonzero((levels < lo) | (levels > hi)))
        return ((np.clip(levels, lo, hi) - zero) * scale).reshape(-1)

    def _reduce(self, f64: np.ndarray, q64: np.ndarray, local: np.ndarray | None) -> None:
        f64 = f64.reshape(-1).astype(np.float64, copy=False)
        if f64.size == 0:
            return
        err = f64 - q64
        s = self.s
        s.count += f64.size
        s.sum_sq_err += float(np.dot(err, err))
        s.sum_sq_float += float(np.dot(f64, f64))
        s.max_abs_err = max(s.max_abs_err, float(np.max(np.abs(err))))
        s.max_abs_float = max(s.max_abs_float, float(np.max(np.abs(f64))))
        lo, hi = float(f64.min()), float(f64.max())
        s.float_min = lo if s.float_min is None else min(s.float_min, lo)
        s.float_max = hi if s.float_max is None else max(s.float_max, hi)
        if local is not None:
            le = f64 - local
            s.local_sum_sq_err += float(np.dot(le, le))

    def stats(self) -> PairStats:
        for name in ("sum_sq_err", "sum_sq_float", "max_abs_err", "max_abs_float"):
            if not math.isfinite(getattr(self.s, name)):
                self.s.error = self.s.error or f"non-finite values ({name})"
                setattr(self.s, name, 0.0)
        return self.s


def _chunks(a: np.ndarray) -> Iterator[np.ndarray]:
    flat = a.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        yield flat[start : start + CHUNK]
