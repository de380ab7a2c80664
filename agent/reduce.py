"""Reduction of one chunk of a float/int8 tensor pair to a :class:`Partial`.

Element-wise work is done in float32 (the dtype both models compute in), in scratch
buffers reused across chunks; only the per-chunk sums leave float32, and they are added
in float64 in chunk order, so the pooled result does not depend on threads. Sums of
squares are float32 dot products over :data:`ROW` elements, added in float64: within
about 1e-8 (relative) of the float64 sum. Tensors with values above :data:`BIG` would overflow
float32 squares and are summed in float64 instead.

Histograms (per-tensor quantized pairs only) count values in ``bins`` equal bins over
the int8 tensor's range ``[qmin, qmax]`` with float64 edges ``linspace(qmin, qmax,
bins + 1)``; bin ``i`` holds ``edges[i] <= x < edges[i+1]``, the last bin also ``x ==
qmax``; index 0 counts ``x < qmin`` and index ``bins + 1`` counts ``x > qmax``, exactly
as ``numpy.histogram`` with those edges (the comparisons are exact, see :class:`Bins`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from qbench.protocols.messages import CapturePair, QParams

#: elements per chunk: two float32 scratch buffers of this size stay in a core's L2 cache
CHUNK = 1 << 18
#: elements per float32 partial sum of squares
ROW = 1024
#: above this magnitude float32 squares could overflow: such chunks are summed in float64
BIG = 1e18
#: copies of the histogram's count table, see :meth:`Bins.count`
LANES = 4
#: ... used when more than this fraction of neighbouring elements share their joint code
REPEATS = 0.2


@dataclass
class Partial:
    """What one chunk adds to a pair's accumulators."""

    count: int = 0
    sum_sq_err: float = 0.0
    sum_sq_float: float = 0.0
    max_abs_err: float = 0.0
    float_min: float = float("inf")
    float_max: float = float("-inf")
    local_sum_sq_err: float = 0.0
    clipped: int = 0
    mismatches: int = 0
    #: NaN and infinite elements of each side (int8: dequantized); counted only when a sum is not finite
    float_nan: int = 0
    float_inf: int = 0
    int8_nan: int = 0
    int8_inf: int = 0
    hist_float: np.ndarray | None = None  # bins + 2 counts; None for a chunk with NaN or huge values
    codes: np.ndarray | None = None  # count of every raw integer code of the int8 tensor


class Bins:
    """Exact binning of float32 (or float64) values against float64 edges.

    ``x >= edge`` holds for a float32 ``x`` exactly when ``x >= up(edge)``, the smallest
    float32 not below the edge; so comparisons against :attr:`up` decide every element as
    float64 arithmetic would (:meth:`exact`).

    The fast path works in the values' dtype: ``t = clip(x * norm, lo, hi) + shift`` and bin
    ``floor(t)``, where the shift puts edge ``k`` at ``t = k + delta``, ``delta`` above the
    rounding error of ``t``. So the fast bin is exact, except that it may be one too high for
    values just below an edge, whose ``t`` has a fractional part below ``2 * delta``: those few
    are re-binned by :meth:`exact`. Values exactly on an edge (ReLU's zeros at ``qmin``,
    saturated values at ``qmax``) fall in that window too; when such a value is the chunk's
    minimum or maximum, the clip bounds settle all of its copies at once (:meth:`_plan`).
    """

    def __init__(self, qmin: float, qmax: float, bins: int, work: type):
        self.bins = bins
        self.work = work
        self.edges = np.linspace(qmin, qmax, bins + 1)
        up = self.edges.astype(work)
        up[up < self.edges] = np.nextafter(up[up < self.edges], work(np.inf))
        self.up = up
        top = work(qmax)  # compared as Python floats below: numpy would compare a float32 in float32
        self.top = np.nextafter(top, work(-np.inf)) if float(top) > qmax else top  # largest value not above qmax
        norm = bins / (qmax - qmin)
        # t's rounding error over the unclipped range (|x * norm| <= |qmin * norm| + bins + 2) is below
        # eps * (1.5 |qmin * norm| + 1.5 bins + 5): delta is over twice that
        delta = 4 * float(np.finfo(work).eps) * (abs(qmin * norm) + bins + 8)
        self.norm = work(norm)
        self.shift = 1 + delta - qmin * norm  # t = position in bins + 1 (index 0 counts x < qmin) + delta
        self._shift = work(self.shift)
        self.near = work(2 * delta)
        # else (a zero point far outside the levels) float32 positions are too coarse: exact() bins everything
        self.fast_path = bool(np.isfinite(self.norm) and np.isfinite(self.shift) and 4 * delta < 0.5)
        self._plans: dict[tuple[float, float], tuple] = {}

    def exact(self, x: np.ndarray) -> np.ndarray:
        """Bin index (0 = under, bins + 1 = over) of each value of ``x``, by comparisons only."""
        index = np.searchsorted(self.up, x, side="right")
        index[(index == self.bins + 1) & (x <= self.top)] = self.bins
        return index

    def _t(self, x: np.ndarray, lo, hi, out: np.ndarray | None = None) -> np.ndarray:
        """The fast path's ``t`` of ``x``: the same operations for a chunk and for its extremes."""
        t = np.multiply(x, self.norm, out=out)
        np.clip(t, lo, hi, out=t)
        return np.add(t, self._shift, out=t)

    def _plan(self, extremes: tuple[float, float]) -> tuple:
        """Clip bounds and the extreme values left near an edge, for a chunk with these min and max.

        Every value lies between the extremes and both the fast and the exact bin are monotonic;
        so when the minimum gets its exact bin ``k``, every value with fast bin ``k`` does: clipping
        ``t`` below at ``k + 0.5`` bins them all without re-binning. When the maximum gets ``k``
        for an exact ``k - 1``, so does every value with fast bin ``k``: clipping ``t`` above at
        ``k - 0.5`` moves them all. An extreme still near an edge after that is counted by an
        equality test (its copies are many), as the returned ``(value, fast bin, exact bin)``.
        """
        plan = self._plans.get(extremes)
        if plan is not None:
            return plan
        w = self.work
        values = np.array(extremes, w)
        exact = self.exact(values)
        fast = np.clip(np.floor(self._t(values, w(-np.inf), w(np.inf))), 0, self.bins + 1).astype(np.intp)
        low = exact[0] + 0.5 if fast[0] == exact[0] else 0.5
        high = exact[1] + 0.5 if fast[1] == exact[1] + 1 else self.bins + 1.5
        lo, hi = w(low - self.shift), w(high - self.shift)
        t = self._t(values, lo, hi)
        j = np.floor(t)
        hot = [(w(v), int(j[i]), int(exact[i])) for i, v in enumerate(extremes)
               if t[i] - j[i] < self.near and (i == 0 or v != extremes[0])]
        if len(self._plans) >= 256:
            self._plans.clear()
        plan = self._plans[extremes] = (lo, hi, hot)
        return plan

    def count(self, x: np.ndarray, q: np.ndarray, extremes: tuple[float, float],
              scratch: "Scratch") -> tuple[np.ndarray, np.ndarray]:
        """Counts of ``x`` per bin (bins + 2) and of the one-byte codes ``q`` (256).

        One ``bincount`` of the joint code ``bin * 256 + code`` gives both. ``extremes`` are x's
        min and max; ``scratch`` provides the buffers.
        """
        size = self.bins + 2
        if not self.fast_path:
            joint = np.bincount(self.exact(x) * 256 + q, minlength=size * 256).reshape(size, 256)
            return joint.sum(axis=1), joint.sum(axis=0)
        n = x.size
        t, j = scratch.buffers(self.work, n)
        lo, hi, hot = self._plan(extremes)
        self._t(x, lo, hi, out=t)
        np.floor(t, out=j)
        np.subtract(t, j, out=t)
        near_mask = np.less(t, self.near, out=scratch.mask(n))
        moves = []  # (count, fast bin, exact bin) of an extreme value's copies
        for value, fast, exact in hot:
            copies = np.equal(x, value)
            moves.append((np.count_nonzero(copies), fast, exact))
            np.greater(near_mask, copies, out=near_mask)  # near and not a copy
        near = _positions(near_mask)
        approx = j[near].astype(np.intp)
        np.multiply(j, 256, out=j)
        np.add(j, q, out=j)
        cells = size * 256
        lanes = LANES if n >= LANES * cells and _repeats(j) > REPEATS else 1
        if lanes > 1:
            # consecutive elements count into different copies of the table: in a run of equal codes
            # (ReLU's zeros) each increment would otherwise wait for the previous one
            np.add(j, _lane_offsets(cells, self.work, n), out=j)
        index = scratch.index(n)
        np.copyto(index, j, casting="unsafe")
        table = np.bincount(index, minlength=lanes * cells)
        joint = table[:cells]
        for lane in range(1, lanes):
            joint += table[lane * cells: (lane + 1) * cells]
        joint = joint.reshape(size, 256)
        counts = joint.sum(axis=1)
        if near.size:
            counts += np.bincount(self.exact(x[near]), minlength=size) - np.bincount(approx, minlength=size)
        for copies, fast, exact in moves:
            counts[fast] -= copies
            counts[exact] += copies
        return counts, joint.sum(axis=0)


def _repeats(codes: np.ndarray, sample: int = 400) -> float:
    """The fraction of equal neighbours among the first ``sample`` codes."""
    head = codes[:sample]
    return np.count_nonzero(head[1:] == head[:-1]) / max(head.size - 1, 1)


def _positions(mask: np.ndarray) -> np.ndarray:
    """``flatnonzero(mask)`` for a mask with few set elements: finds them 8 at a time."""
    whole = mask.size - mask.size % 8
    words = np.flatnonzero(mask[:whole].view(np.uint64) != 0)
    candidates = (words[:, None] * 8 + np.arange(8)).ravel()
    found = candidates[mask[candidates]]
    return np.concatenate([found, np.flatnonzero(mask[whole:]) + whole]) if whole < mask.size else found


class Kernel:
    """The constants of one pair's reduction: dequantization, local quantization, histogram bins."""

    def __init__(self, pair: CapturePair, shape: tuple[int, ...], float_dtype: np.dtype, bins: int):
        self.exact_compare = pair.exact
        self.work = np.float64 if float_dtype == np.float64 else np.float32
        qp = pair.qparams
        self.qparams = qp
        self.per_tensor = qp is not None and np.size(qp.scale) == 1
        self.bins: Bins | None = None
        if qp is None or self.exact_compare:
            return
        lo, hi = qp.levels()
        if self.per_tensor:
            self.scale = self.work(qp.scale[0])
            self.zero = self.work(qp.zero_point[0])
            self.lo, self.hi = self.work(lo - qp.zero_point[0]), self.work(hi - qp.zero_point[0])
            if bins > 0:
                self.range = ((lo - qp.zero_point[0]) * qp.scale[0], (hi - qp.zero_point[0]) * qp.scale[0])
                self.bins = Bins(*self.range, bins, self.work)
        else:
            self._channel_setup(qp, shape, lo, hi)

    def _channel_setup(self, qp: QParams, shape: tuple[int, ...], lo: int, hi: int) -> None:
        ndim = max(len(shape), 1)
        axis = (1 if qp.axis is None else qp.axis) % ndim  # ONNX's default channel axis
        self.inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        self.scales = np.asarray(qp.scale, dtype=self.work)
        self.zeros = np.asarray(qp.zero_point, dtype=self.work)
        self.los = self.work(lo) - self.zeros
        self.his = self.work(hi) - self.zeros

    def affine(self, start: int, n: int):
        """(scale, zero, lo, hi) for elements ``start .. start + n``: scalars, or per element per channel."""
        if self.per_tensor:
            return self.scale, self.zero, self.lo, self.hi
        channel = (np.arange(start, start + n, dtype=np.int64) // self.inner) % self.scales.size
        return self.scales[channel], self.zeros[channel], self.los[channel], self.his[channel]

    def dequantize(self, q: np.ndarray, start: int, out: np.ndarray | None = None) -> np.ndarray:
        """``(q - zero_point) * scale`` in the work dtype, as DequantizeLinear computes it, for flat ``q`` at ``start``."""
        scale, zero, _, _ = self.affine(start, q.size)
        if out is None:
            out = np.empty(q.shape, self.work)
        np.copyto(out, q, casting="unsafe")  # then float arithmetic: faster than one mixed-type ufunc loop
        if not self.per_tensor or zero != 0:
            np.subtract(out, zero, out=out)
        return np.multiply(out, scale, out=out)

    def reduce(self, f: np.ndarray, q: np.ndarray, start: int, scratch: "Scratch") -> Partial:
        """Reduce the flat chunks ``f`` (float model) and ``q`` (int8 model, raw) starting at element ``start``."""
        p = Partial(count=f.size)
        if self.exact_compare:
            p.mismatches = int(np.count_nonzero(f != q))
            return p
        if f.dtype != self.work:
            f = f.astype(self.work)
        a, b = scratch.buffers(self.work, f.size)
        qp = self.qparams
        if qp is None:
            np.subtract(f, q, out=a, casting="same_kind")
        else:
            scale, zero, lo, hi = self.affine(start, f.size)
            self.dequantize(q, start, out=a)
            np.subtract(f, a, out=a)
        p.float_min, p.float_max = float(f.min()), float(f.max())
        p.max_abs_err = max(-float(a.min()), float(a.max()))
        big = not max(-p.float_min, p.float_max, p.max_abs_err) < BIG  # also catches NaN
        p.sum_sq_err = _sum_sq(a, big)
        p.sum_sq_float = _sum_sq(f, big)
        if not math.isfinite(p.sum_sq_err + p.sum_sq_float):  # finite sums: both sides are finite
            _count_nonfinite(p, f, q if qp is None else self.dequantize(q, start, out=b))
        if qp is None:
            return p
        # f quantized with the int8 model's own scale and zero point (rint: half to even, as QuantizeLinear)
        np.divide(f, scale, out=b)
        np.rint(b, out=b)
        if not self.per_tensor or np.rint(self.work(p.float_min) / scale) < lo or np.rint(
                self.work(p.float_max) / scale) > hi:
            p.clipped = int(np.count_nonzero(b < lo)) + int(np.count_nonzero(b > hi))
            np.clip(b, lo, hi, out=b)
        np.multiply(b, scale, out=b)
        np.subtract(f, b, out=b)
        p.local_sum_sq_err = _sum_sq(b, big)
        if self.bins is not None and not big and q.dtype.itemsize == 1 and q.dtype.kind in "iu":
            p.hist_float, p.codes = self.bins.count(f, q.view(np.uint8), (p.float_min, p.float_max), scratch)
        return p

    def int8_histogram(self, codes: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Counts per bin of the dequantized int8 tensor, from the counts of its raw codes."""
        levels = np.arange(256, dtype=np.uint8).view(dtype)
        values = (levels.astype(self.work) - self.zero) * self.scale
        hist = np.zeros(self.bins.bins + 2, dtype=np.int64)
        np.add.at(hist, self.bins.exact(values), codes)
        return hist


def _count_nonfinite(p: Partial, f: np.ndarray, q: np.ndarray) -> None:
    p.float_nan, p.int8_nan = int(np.count_nonzero(np.isnan(f))), int(np.count_nonzero(np.isnan(q)))
    p.float_inf, p.int8_inf = int(np.count_nonzero(np.isinf(f))), int(np.count_nonzero(np.isinf(q)))


def _sum_sq(x: np.ndarray, big: bool) -> float:
    """Σx² as float64 sums of float32 dot products over rows of :data:`ROW` elements.

    One BLAS dot over a whole chunk keeps long float32 running sums that lose small terms
    next to large ones (1e-5 relative on clipped tensors); rows of 1024 stay within ~1e-8.
    """
    if big:
        x = x.astype(np.float64)
        return float(np.dot(x, x))
    whole = x.size - x.size % ROW
    rows = x[:whole].reshape(-1, ROW)
    total = float(np.matmul(rows[:, None, :], rows[:, :, None]).sum(dtype=np.float64))
    return total + float(np.dot(x[whole:], x[whole:]))


@dataclass
class Scratch:
    """Reusable buffers, one Scratch per thread: two per float dtype, an index and a mask."""

    _buffers: dict = field(default_factory=dict)

    def buffers(self, dtype: type, n: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self._buffers.get(dtype)
        if pair is None or pair[0].size < n:
            pair = (np.empty(max(n, CHUNK), dtype), np.empty(max(n, CHUNK), dtype))
            self._buffers[dtype] = pair
        return pair[0][:n], pair[1][:n]

    def index(self, n: int) -> np.ndarray:
        return self._one("index", np.intp, n)

    def mask(self, n: int) -> np.ndarray:
        return self._one("mask", np.bool_, n)

    def _one(self, name: str, dtype: type, n: int) -> np.ndarray:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < n:
            buffer = self._buffers[name] = np.empty(max(n, CHUNK), dtype)
        return buffer[:n]


_lanes: dict[tuple[int, int, type], np.ndarray] = {}


def _lane_offsets(cells: int, dtype: type, n: int) -> np.ndarray:
    """``(i % LANES) * cells`` for i < n: where element i's copy of the count table starts."""
    offsets = _lanes.get((LANES, cells, dtype))
    if offsets is None or offsets.size < n:
        offsets = _lanes[(LANES, cells, dtype)] = (np.arange(max(n, CHUNK)) % LANES * cells).astype(dtype)
    return offsets[:n]


_local = threading.local()


def thread_scratch() -> Scratch:
    """This thread's scratch buffers."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = Scratch()
    return scratch
