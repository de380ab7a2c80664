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
    hist_float: np.ndarray | None = None  # bins + 2 counts; None for a chunk with NaN or huge values
    codes: np.ndarray | None = None  # count of every raw integer code of the int8 tensor


class Bins:
    """Exact binning of float32 (or float64) values against float64 edges.

    ``x >= edge`` holds for a float32 ``x`` exactly when ``x >= up(edge)``, the smallest
    float32 not below the edge; so comparisons against :attr:`up` decide every element as
    float64 arithmetic would. The fast path computes ``floor((x - qmin) * bins / (qmax -
    qmin))`` in float32 and re-bins exactly the few elements within rounding error of an edge.
    """

    def __init__(self, qmin: float, qmax: float, bins: int, work: type):
        self.bins = bins
        self.edges = np.linspace(qmin, qmax, bins + 1)
        up = self.edges.astype(work)
        up[up < self.edges] = np.nextafter(up[up < self.edges], work(np.inf))
        self.up = up
        top = work(qmax)  # compared as Python floats below: numpy would compare a float32 in float32
        self.top = np.nextafter(top, work(-np.inf)) if float(top) > qmax else top  # largest value not above qmax
        norm = bins / (qmax - qmin)
        self.norm = work(norm)
        self.shift = work(0.5 - qmin * norm)  # rint(x * norm + shift) = floor(bin position) + 1
        # float32 rounding of the bin position stays within a few ulps of `bins`: re-check a margin above that
        self.margin = 0.5 - 64 * bins * float(np.finfo(work).eps)

    def exact(self, x: np.ndarray) -> np.ndarray:
        """Bin index (0 = under, bins + 1 = over) of each value of ``x``, by comparisons only."""
        index = np.searchsorted(self.up, x, side="right")
        index[(index == self.bins + 1) & (x <= self.top)] = self.bins
        return index

    def _position(self, value: float):
        """The fast path's bin position of ``value``, by the same float operations as :meth:`count`."""
        return self.norm.dtype.type(value) * self.norm + self.shift

    def _near(self, value: float) -> bool:
        """Whether the fast path cannot tell the bin of ``value`` (it is within rounding error of an edge)."""
        t = self._position(value)
        return bool(abs(t - np.rint(t)) > self.margin)

    def _fast(self, value: float) -> int:
        """The bin the fast path gives ``value``."""
        return int(np.clip(np.rint(self._position(value)), 0, self.bins + 1))

    def count(self, x: np.ndarray, q: np.ndarray, t: np.ndarray, j: np.ndarray,
              extremes: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """Counts of ``x`` per bin (bins + 2) and of the one-byte codes ``q`` (256).

        One ``bincount`` of the joint code ``bin * 256 + code`` gives both. ``t`` and ``j`` are
        scratch buffers of x's size. ``extremes`` (x's min and max) are often repeated values
        sitting on an edge (ReLU's zeros at qmin = 0, saturated values): they are binned
        exactly once each instead of element by element.
        """
        np.multiply(x, self.norm, out=t)
        np.add(t, self.shift, out=t)
        np.rint(t, out=j)
        np.subtract(t, j, out=t)
        np.abs(t, out=t)
        near_mask = np.greater(t, self.margin)
        moves = []  # (count, bin the fast path gave, exact bin) of repeated extreme values
        for value in {v for v in extremes if self._near(v)}:
            hot = np.equal(x, x.dtype.type(value))
            moves.append((np.count_nonzero(hot), self._fast(value), int(self.exact(np.array([value], x.dtype))[0])))
            np.greater(near_mask, hot, out=near_mask)  # near and not hot
        near = np.flatnonzero(near_mask)
        np.clip(j, 0, self.bins + 1, out=j)
        approx = j[near].astype(np.intp)
        np.multiply(j, 256, out=j)
        np.add(j, q, out=j)
        size = self.bins + 2
        joint = np.bincount(j.astype(np.intp), minlength=size * 256).reshape(size, 256)
        counts = joint.sum(axis=1)
        if near.size:
            counts += np.bincount(self.exact(x[near]), minlength=size) - np.bincount(approx, minlength=size)
        for n, fast, exact in moves:
            counts[fast] -= n
            counts[exact] += n
        return counts, joint.sum(axis=0)


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
        out = np.subtract(q, zero, out=out, dtype=self.work, casting="unsafe")
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
            p.hist_float, p.codes = self.bins.count(f, q.view(np.uint8), a, b, (p.float_min, p.float_max))
        return p

    def int8_histogram(self, codes: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Counts per bin of the dequantized int8 tensor, from the counts of its raw codes."""
        levels = np.arange(256, dtype=np.uint8).view(dtype)
        values = (levels.astype(self.work) - self.zero) * self.scale
        hist = np.zeros(self.bins.bins + 2, dtype=np.int64)
        np.add.at(hist, self.bins.exact(values), codes)
        return hist


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
    """Two reusable buffers per dtype, one Scratch per thread."""

    _buffers: dict = field(default_factory=dict)

    def buffers(self, dtype: type, n: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self._buffers.get(dtype)
        if pair is None or pair[0].size < n:
            pair = (np.empty(max(n, CHUNK), dtype), np.empty(max(n, CHUNK), dtype))
            self._buffers[dtype] = pair
        return pair[0][:n], pair[1][:n]


_local = threading.local()


def thread_scratch() -> Scratch:
    """This thread's scratch buffers."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = Scratch()
    return scratch
