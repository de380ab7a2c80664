"""Chunk reductions: the fast histogram paths count exactly what numpy.histogram counts."""

import numpy as np
import pytest

from qbench.agent.reduce import CHUNK, Kernel, Scratch
from qbench.protocols.messages import CapturePair, QParams

F32 = np.float32


def _reference(x: np.ndarray, q: np.ndarray, qmin: float, qmax: float, bins: int) -> tuple[list[int], list[int]]:
    """[x < qmin, numpy.histogram over linspace(qmin, qmax, bins + 1), x > qmax] in float64; counts of q's bytes."""
    x = x.astype(np.float64)
    inside, _ = np.histogram(x, bins=np.linspace(qmin, qmax, bins + 1))
    return [int(np.sum(x < qmin)), *map(int, inside), int(np.sum(x > qmax))], np.bincount(
        q.view(np.uint8), minlength=256).tolist()


def _chunk(kind: str, qmin: float, qmax: float, bins: int, n: int, dtype, rng) -> np.ndarray:
    edges = np.linspace(qmin, qmax, bins + 1).astype(dtype)
    inf = dtype(np.inf)
    near = np.concatenate([edges, np.nextafter(edges, -inf), np.nextafter(edges, inf)])
    inner = edges[len(edges) // 2]  # an interior edge (or qmin for one bin)
    body = rng.uniform(qmin, qmax, size=n).astype(dtype)
    if kind == "relu zeros on qmin":
        return np.where(rng.random(n) < 0.5, dtype(qmin), body)
    if kind == "saturated at qmax":
        return np.minimum(body * dtype(1.5), dtype(qmax))
    if kind == "on edges and one ulp either side":
        return rng.choice(near, size=n)
    if kind == "min one ulp below an interior edge":
        return np.maximum(body, np.nextafter(inner, -inf)) if inner > qmin else body
    if kind == "max on an interior edge":
        return np.minimum(body, inner)
    if kind == "under and over the range":
        return ((rng.standard_t(1.5, size=n) * (qmax - qmin)) + qmin).astype(dtype)
    if kind == "constant on an edge":
        return np.full(n, rng.choice(near), dtype)
    raise AssertionError(kind)


KINDS = ["relu zeros on qmin", "saturated at qmax", "on edges and one ulp either side",
         "min one ulp below an interior edge", "max on an interior edge", "under and over the range",
         "constant on an edge"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bins,n", [(1, 5000), (3, 7), (64, CHUNK), (64, 4 * 66 * 256 - 1), (85, 30001), (4096, CHUNK)])
@pytest.mark.parametrize("dtype,zero", [("uint8", 0), ("int8", -7), ("int8", 0)])
def test_histograms_equal_numpy_histogram_on_every_path(kind, bins, n, dtype, zero):
    rng = np.random.default_rng(bins * 1000 + n % 997 + KINDS.index(kind))
    qp = QParams(scale=[0.03620341047644615], zero_point=[zero], dtype=dtype)  # dq(255) lies just above qmax
    kernel = Kernel(CapturePair("t", "t_q", qp), (n,), np.dtype(F32), bins)
    qmin, qmax = kernel.range
    x = _chunk(kind, qmin, qmax, bins, n, F32, rng)
    lo, hi = qp.levels()
    q = np.clip(np.rint(x / F32(qp.scale[0])) + zero, lo, hi).astype(dtype)
    flips = rng.random(n) < 0.05  # the int8 model does not always agree
    q[flips] = rng.integers(lo, hi + 1, size=int(flips.sum()), dtype=dtype)
    p = kernel.reduce(x, q, 0, Scratch())
    hist, codes = _reference(x, q, qmin, qmax, bins)
    assert p.hist_float.tolist() == hist
    assert p.codes.tolist() == codes


def test_float64_values_and_a_zero_point_far_outside_the_levels_are_binned_exactly():
    rng = np.random.default_rng(7)
    for qp, dtype in [(QParams(scale=[0.1], zero_point=[3], dtype="int8"), np.float64),
                      # |qmin| / scale ~ 1e7: float32 positions lose whole bins, only exact comparisons hold
                      (QParams(scale=[21.2119], zero_point=[-10_000_000], dtype="int8"), F32)]:
        kernel = Kernel(CapturePair("t", "t_q", qp), (CHUNK,), np.dtype(dtype), 4096)
        qmin, qmax = kernel.range
        x = _chunk("on edges and one ulp either side", qmin, qmax, 4096, CHUNK, dtype, rng)
        q = rng.integers(-128, 128, size=CHUNK, dtype=np.int8)
        p = kernel.reduce(x, q, 0, Scratch())
        assert p.hist_float.tolist() == _reference(x, q, qmin, qmax, 4096)[0]


def test_extreme_values_on_edges_are_settled_by_the_clip_bounds_not_one_by_one():
    # ReLU's zeros at qmin and saturated values at qmax: no equality pass over the chunk for them
    qp = QParams(scale=[6 / 255], zero_point=[-128], dtype="int8")
    kernel = Kernel(CapturePair("t", "t_q", qp), (CHUNK,), np.dtype(F32), 64)
    qmin, qmax = kernel.range
    x = np.clip(np.random.default_rng(1).normal(size=CHUNK) * 4, qmin, qmax).astype(F32)
    _, _, hot = kernel.bins._plan((float(x.min()), float(x.max())))
    assert x.min() == qmin and x.max() == F32(qmax) and hot == []
    q = np.clip(np.rint(x / F32(6 / 255)) - 128, -128, 127).astype(np.int8)
    assert kernel.reduce(x, q, 0, Scratch()).hist_float.tolist() == _reference(x, q, qmin, qmax, 64)[0]


@pytest.mark.parametrize("zero", [0, 5])
def test_dequantize_is_dequantize_linear(zero):
    q = np.arange(-128, 128, dtype=np.int8)
    kernel = Kernel(CapturePair("t", "t_q", QParams(scale=[0.037], zero_point=[zero], dtype="int8")), (256,),
                    np.dtype(F32), 0)
    expected = (q.astype(F32) - F32(zero)) * F32(0.037)
    assert kernel.dequantize(q, 0).tobytes() == expected.tobytes()
    channels = Kernel(CapturePair("t", "t_q", QParams(scale=[0.5, 0.25], zero_point=[zero, 1], axis=0)), (2, 128),
                      np.dtype(F32), 0)
    scale, zp = np.repeat(F32([0.5, 0.25]), 128), np.repeat(F32([zero, 1]), 128)
    assert channels.dequantize(q, 0).tobytes() == ((q.astype(F32) - zp) * scale).tobytes()
