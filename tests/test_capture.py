"""Budget grouping and accumulators: pooled over samples and groups equals the full computation."""

import json

import numpy as np
import pytest

from qbench.agent.capture import CHUNK, PairAccumulator, Reducer, plan_groups
from qbench.host.compare import metrics
from qbench.protocols.messages import CapturePair, QParams, to_dict


@pytest.mark.parametrize("seed", range(20))
def test_groups_fit_the_budget_and_cover_every_pair_once(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(1, 400, size=int(rng.integers(1, 60)))]
    budget = int(rng.integers(50, 1000))
    groups = plan_groups(sizes, budget)
    flat = [i for g in groups for i in g]
    assert flat == list(range(len(sizes)))  # every pair exactly once, in order
    for g in groups:
        assert len(g) == 1 or sum(sizes[i] for i in g) <= budget


def test_a_pair_over_budget_gets_its_own_group_and_unknown_sizes_count_as_largest():
    assert plan_groups([10, 500, 10], 100) == [[0], [1], [2]]
    assert plan_groups([30, None, 30, 30], 100) == [[0, 1, 2], [3]]


def test_accumulators_over_groups_and_chunks_equal_the_full_computation():
    rng = np.random.default_rng(0)
    shape = (2, CHUNK // 3 + 7)  # spans several reduction chunks
    samples_f = [rng.normal(size=shape).astype(np.float32) for _ in range(3)]
    qp = QParams(scale=[0.02], zero_point=[-3], dtype="int8")
    samples_q = [np.clip(np.rint(f / 0.02) - 3, -128, 127).astype(np.int8) for f in samples_f]
    acc = PairAccumulator(CapturePair("t", "t_q", qp))
    for f, q in zip(samples_f, samples_q):
        acc.update(f, q)
    got = metrics.figures(acc.stats())

    # Independent reference: DequantizeLinear's float32 output, everything after it in float64.
    f_all = np.concatenate([f.ravel() for f in samples_f]).astype(np.float64)
    q_all = ((np.concatenate([q.ravel() for q in samples_q]).astype(np.float32) + 3) * np.float32(0.02)).astype(
        np.float64)
    mse = np.mean((f_all - q_all) ** 2)
    assert got["mse"] == pytest.approx(mse, rel=1e-6)
    assert got["psnr_db"] == pytest.approx(10 * np.log10(np.max(np.abs(f_all)) ** 2 / mse), abs=1e-4)
    assert got["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(f_all**2) / np.sum((f_all - q_all) ** 2)), abs=1e-4)
    assert got["float_min"] == pytest.approx(f_all.min()) and got["float_max"] == pytest.approx(f_all.max())
    levels = np.rint(f_all / 0.02) - 3
    assert got["clipped_fraction"] == pytest.approx(np.mean((levels < -128) | (levels > 127)))


def test_shape_mismatch_and_non_finite_values_are_reported_not_hidden():
    acc = PairAccumulator(CapturePair("t", "t"))
    acc.update(np.zeros((2, 2), np.float32), np.zeros((4,), np.float32))
    assert "shapes differ" in acc.stats().error
    acc = PairAccumulator(CapturePair("t", "t"))
    acc.update(np.array([np.inf], np.float32), np.array([0.0], np.float32))
    assert "non-finite" in acc.stats().error


def _float64_reference(samples_f, samples_q, scale, zero):
    """Σ(f − dq(q))² and Σf² in float64, dq as DequantizeLinear's float32 output."""
    f = np.concatenate([x.ravel() for x in samples_f]).astype(np.float64)
    dq = ((np.concatenate([x.ravel() for x in samples_q]).astype(np.float32) - np.float32(zero))
          * np.float32(scale)).astype(np.float64)
    return np.sum((f - dq) ** 2), np.sum(f**2)


def test_float32_reduction_stays_within_1e_6_of_float64_on_heavy_tailed_errors():
    # Mostly tiny rounding errors plus a few huge clipping errors: one float32 BLAS dot over a
    # chunk loses the small terms (1e-5 relative); the pooled sums must not.
    rng = np.random.default_rng(3)
    f = (rng.standard_t(2, size=3 * CHUNK + 11) * 0.5).astype(np.float32)
    qp = QParams(scale=[0.01], zero_point=[4], dtype="int8")
    q = np.clip(np.rint(f / np.float32(0.01)) + 4, -128, 127).astype(np.int8)
    acc = PairAccumulator(CapturePair("t", "t_q", qp))
    acc.update(f, q)
    s = acc.stats()
    sse, ssf = _float64_reference([f], [q], 0.01, 4)
    assert s.sum_sq_err == pytest.approx(sse, rel=1e-6)
    assert s.sum_sq_float == pytest.approx(ssf, rel=1e-6)
    assert s.max_abs_float == pytest.approx(np.max(np.abs(f)))


def test_threads_do_not_change_the_sums():
    rng = np.random.default_rng(4)
    pairs = [CapturePair(f"t{i}", f"t{i}_q", QParams([0.02 * (i + 1)], [i], dtype="int8")) for i in range(3)]
    data = [(rng.normal(size=(2, CHUNK // 2 + i)).astype(np.float32),
             rng.integers(-128, 128, size=(2, CHUNK // 2 + i)).astype(np.int8)) for i in range(3)]
    results = []
    for threads in (1, 3):
        accs = [PairAccumulator(p, histogram_bins=8) for p in pairs]
        reducer = Reducer(threads)
        for _ in range(2):  # two samples
            reducer.reduce([(a, f, q) for a, (f, q) in zip(accs, data)])
        reducer.close()
        results.append([a.stats() for a in accs])
    assert results[0] == results[1]  # bit for bit: chunks are merged in order


def test_per_channel_pairs_dequantize_along_their_axis():
    rng = np.random.default_rng(5)
    scale, zero = [0.01, 0.05, 0.2], [0, -3, 7]
    qp = QParams(scale=scale, zero_point=zero, axis=1, dtype="int8")
    f = rng.normal(size=(2, 3, 300, 300)).astype(np.float32)  # several chunks, channels straddling them
    s32, z32 = np.float32(scale).reshape(1, 3, 1, 1), np.float32(zero).reshape(1, 3, 1, 1)
    q = np.clip(np.rint(f / s32) + z32, -128, 127).astype(np.int8)
    acc = PairAccumulator(CapturePair("t", "t_q", qp))
    acc.update(f, q)
    s = acc.stats()
    dq = ((q.astype(np.float32) - z32) * s32).astype(np.float64)
    assert s.sum_sq_err == pytest.approx(np.sum((f.astype(np.float64) - dq) ** 2), rel=1e-6)
    assert s.clipped == int(np.count_nonzero((np.rint(f / s32) + z32 < -128) | (np.rint(f / s32) + z32 > 127)))
    assert s.hist_float is None  # histograms are for one-scale pairs only


def _numpy_histogram(x: np.ndarray, lo: float, hi: float, bins: int) -> list[int]:
    """[x < lo, numpy.histogram over linspace(lo, hi, bins + 1), x > hi], compared in float64."""
    x = x.astype(np.float64).ravel()
    inside, _ = np.histogram(x, bins=np.linspace(lo, hi, bins + 1))
    return [int(np.sum(x < lo)), *map(int, inside), int(np.sum(x > hi))]


@pytest.mark.parametrize("bins", [1, 3, 64, 85, 255, 1000])
@pytest.mark.parametrize("dtype,zero", [("uint8", 0), ("int8", -7), ("int8", 0)])
# float32(6/255), ReLU6-like; and a scale whose float32 top level dq(255) lies just above qmax
@pytest.mark.parametrize("scale", [0.0235294122248888, 0.03620341047644615])
def test_histograms_equal_numpy_histogram_even_for_values_on_the_edges(bins, dtype, zero, scale):
    rng = np.random.default_rng(bins)
    qp = QParams(scale=[scale], zero_point=[zero], dtype=dtype)
    lo, hi = qp.levels()
    qmin, qmax = (lo - zero) * qp.scale[0], (hi - zero) * qp.scale[0]
    edges = np.linspace(qmin, qmax, bins + 1)
    on_edges = np.concatenate([edges.astype(np.float32), np.nextafter(edges.astype(np.float32), np.float32(-np.inf)),
                               np.nextafter(edges.astype(np.float32), np.float32(np.inf))])
    relu6 = np.clip(rng.normal(size=CHUNK + 5000) * 3, 0, 6).astype(np.float32)  # min 0, max 6: often on edges
    mixed = np.concatenate([relu6[:9000], np.full(3000, np.float32(qmax)), np.repeat(on_edges, 7),
                            (rng.normal(size=5000) * 8).astype(np.float32)])  # clipped both ways
    rng.shuffle(mixed)
    acc = PairAccumulator(CapturePair("t", "t_q", qp), histogram_bins=bins)
    for sample in (relu6, mixed):
        acc.update(sample, np.clip(np.rint(sample / np.float32(qp.scale[0])) + zero, lo, hi).astype(dtype))
    s = acc.stats()
    f = np.concatenate([relu6, mixed])
    q = np.clip(np.rint(f / np.float32(qp.scale[0])) + zero, lo, hi).astype(dtype)
    assert s.hist_range == [qmin, qmax]
    assert s.hist_float == _numpy_histogram(f, qmin, qmax, bins)
    dq = (q.astype(np.float32) - np.float32(zero)) * np.float32(qp.scale[0])
    assert s.hist_int8 == _numpy_histogram(dq, qmin, qmax, bins)
    assert sum(s.hist_float) == sum(s.hist_int8) == f.size


def test_a_nan_leaves_the_pair_in_error_without_a_partial_histogram():
    qp = QParams(scale=[0.1], zero_point=[0], dtype="int8")
    acc = PairAccumulator(CapturePair("t", "t_q", qp), histogram_bins=8)
    f = np.linspace(-1, 1, 1000, dtype=np.float32)
    acc.update(f, np.rint(f / np.float32(0.1)).astype(np.int8))
    f[3] = np.nan
    acc.update(f, np.zeros(1000, np.int8))
    s = acc.stats()
    assert "non-finite" in s.error and s.hist_float is None and s.hist_int8 is None
    json.dumps(to_dict(s), allow_nan=False)  # travels as the wire's JSON
