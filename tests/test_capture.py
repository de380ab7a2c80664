"""Budget grouping and accumulators: pooled over samples and groups equals the full computation."""

import numpy as np
import pytest

from qbench.agent.capture import CHUNK, PairAccumulator, plan_groups
from qbench.host.compare import metrics
from qbench.protocols.messages import CapturePair, QParams


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

    f_all = np.concatenate([f.ravel() for f in samples_f]).astype(np.float64)
    q_all = (np.concatenate([q.ravel() for q in samples_q]).astype(np.float64) + 3) * 0.02
    mse = np.mean((f_all - q_all) ** 2)
    assert got["mse"] == pytest.approx(mse, rel=1e-9)
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
