"""The figures against hand computation, independent of the agent's accumulators."""

import math

import numpy as np
import pytest

from qbench.agent.capture import PairAccumulator, dequantize
from qbench.host.compare import metrics
from qbench.host.compare.sensitivity import rank_sensitive
from qbench.protocols.messages import CapturePair, PairStats, QParams


def test_psnr_by_hand():
    # f = [1, -2, 3, 4], q = [1, -2, 2, 4]: MSE = 1/4, peak = 4 -> 10·log10(16 / 0.25) = 10·log10(64)
    s = PairStats(count=4, sum_sq_err=1.0, sum_sq_float=30.0, max_abs_float=4.0)
    fig = metrics.figures(s)
    assert fig["psnr_db"] == pytest.approx(10 * math.log10(64), abs=1e-4)
    assert fig["sqnr_db"] == pytest.approx(10 * math.log10(30.0), abs=1e-4)
    assert fig["mse"] == 0.25


def test_psnr_is_pooled_over_samples_not_averaged_in_db():
    f = [np.array([1.0, 1.0]), np.array([10.0, 10.0])]
    q = [np.array([1.5, 1.0]), np.array([10.0, 10.0])]
    acc = PairAccumulator(CapturePair("t", "t"))
    for a, b in zip(f, q):
        acc.update(a.astype(np.float32), b.astype(np.float32))
    fig = metrics.figures(acc.stats())
    # pooled: MSE = 0.25 / 4, peak = 10 (max over both samples)
    assert fig["psnr_db"] == pytest.approx(10 * math.log10(100 / (0.25 / 4)), abs=1e-4)
    per_sample_mean = np.mean([10 * math.log10(1 / (0.25 / 2)), 1e9])
    assert fig["psnr_db"] != pytest.approx(per_sample_mean)


def test_identical_tensors_are_exact_with_null_psnr():
    acc = PairAccumulator(CapturePair("t", "t"))
    x = np.linspace(-1, 1, 50, dtype=np.float32)
    acc.update(x, x.copy())
    fig = metrics.figures(acc.stats())
    assert fig["psnr_db"] is None and fig["exact"] is True


def test_all_zero_float_tensor_with_error_has_no_psnr_and_is_not_exact():
    fig = metrics.figures(PairStats(count=2, sum_sq_err=2.0, sum_sq_float=0.0, max_abs_float=0.0))
    assert fig["psnr_db"] is None and fig["exact"] is False


def test_exact_comparison_counts_mismatches():
    acc = PairAccumulator(CapturePair("idx", "idx", exact=True))
    acc.update(np.array([1, 2, 3], np.int64), np.array([1, 5, 3], np.int64))
    fig = metrics.exact_figures(acc.stats())
    assert fig["mismatches"] == 1 and fig["exact"] is False and fig["elements"] == 3


def test_dequantized_comparison_and_local_error_by_hand():
    qp = QParams(scale=[0.5], zero_point=[2], dtype="int8")
    f = np.array([0.0, 0.74, 1.0, 100.0], np.float32)
    q = np.array([2, 3, 4, 127], np.int8)  # dequantized: 0, 0.5, 1.0, 62.5
    acc = PairAccumulator(CapturePair("t", "t_q", qp))
    acc.update(f, q)
    s = acc.stats()
    deq = np.array([0.0, 0.5, 1.0, 62.5])
    assert s.sum_sq_err == pytest.approx(np.sum((f.astype(np.float64) - deq) ** 2))
    # local: round(f/0.5)+2 = [2, 3(1.48->1 +2), 4, 202 -> clipped to 127]
    local = np.array([0.0, 0.5, 1.0, (127 - 2) * 0.5])
    assert s.local_sum_sq_err == pytest.approx(np.sum((f.astype(np.float64) - local) ** 2))
    assert s.clipped == 1


def test_per_channel_dequantization_by_hand():
    qp = QParams(scale=[0.1, 1.0], zero_point=[0, 5], axis=1, dtype="int8")
    q = np.array([[[10], [6]], [[-10], [5]]], np.int8)  # shape (2, 2, 1)
    expected = np.array([[[1.0], [1.0]], [[-1.0], [0.0]]])
    np.testing.assert_allclose(dequantize(q, qp), expected)


def test_drops_compare_sqnr_against_the_weakest_noisy_parent():
    layers = [
        {"name": "a", "psnr_db": 50.0, "sqnr_db": 40.0, "parents": []},
        {"name": "b", "op_type": "Conv", "psnr_db": 45.0, "sqnr_db": 30.0, "parents": ["a"]},
        {"name": "c", "psnr_db": 20.0, "sqnr_db": 29.0, "parents": ["a", "b"]},  # PSNR -25 dB, SQNR -1 dB
        {"name": "d", "psnr_db": None, "sqnr_db": None, "exact": True, "parents": ["c"]},
        {"name": "image", "psnr_db": 130.0, "sqnr_db": 120.0, "parents": []},  # an exact 8-bit input
        {"name": "stem", "psnr_db": 40.0, "sqnr_db": 18.0, "parents": ["image"]},
        {"name": "e", "op_type": "Add", "psnr_db": 40.0, "sqnr_db": 10.0, "local_sqnr_db": 35.0,
         "parents": ["image", "b"]},
        # SQNR falls 8 dB through a Sigmoid that adds no error of its own (local SQNR 60 dB): no drop
        {"name": "squash", "op_type": "Sigmoid", "psnr_db": 30.0, "sqnr_db": 22.0, "local_sqnr_db": 60.0,
         "parents": ["b"]},
        {"name": "clips", "op_type": "Sigmoid", "psnr_db": 30.0, "sqnr_db": 22.0, "local_sqnr_db": 60.0,
         "clipped_fraction": 0.02, "parents": ["b"]},
        # its own rounding (local 29 dB) is a sizeable part of its error (SQNR 22 dB): a drop of its own
        {"name": "rounds", "op_type": "Add", "psnr_db": 30.0, "sqnr_db": 22.0, "local_sqnr_db": 29.0,
         "parents": ["b"]},
    ]
    metrics.flag_drops(layers, threshold_db=6.0)
    assert [x["drop"] for x in layers] == [False, True, False, False, False, False, False, False, True, True]
    assert layers[1]["drop_db"] == 10.0 and layers[2]["drop_db"] == 1.0
    assert layers[0]["drop_db"] is None and layers[3]["drop_db"] is None
    assert layers[5]["drop_db"] is None  # fed only by a noise-free input: judged by its own figures
    # against its noisy parent only; local 35 < 30 + 10, but its own rounding is 25 dB below the error it holds
    # (SQNR 10 dB): b's error, magnified where the Add cancels signal, not its own
    assert layers[6]["drop_db"] == 20.0
    assert layers[7]["drop_db"] == 8.0


def test_per_channel_without_an_axis_uses_the_onnx_default_channel_axis():
    qp = QParams(scale=[0.1, 1.0], zero_point=[0, 5], axis=None, dtype="int8")
    q = np.array([[[10], [6]]], np.int8)  # channels on axis 1
    np.testing.assert_allclose(dequantize(q, qp), [[[1.0], [1.0]]])
    assert qp.levels() == (-128, 127) and QParams([1.0], [0], dtype="uint8").levels() == (0, 255)


def _se_branch(join_op: str) -> list[dict]:
    """PP-OCRv6's tiny detector's squeeze-and-excite block, with its report's SQNRs: the squeeze conv after
    the pool clips and drops 10.4 dB; its gate joins the main path (15.95 dB) in a product at 14.23 dB."""
    return [
        {"name": "main", "op_type": "Conv", "sqnr_db": 15.945, "local_sqnr_db": 30.0, "parents": []},
        {"name": "pool", "op_type": "GlobalAveragePool", "sqnr_db": 23.65, "local_sqnr_db": 44.0, "parents": ["main"]},
        {"name": "squeeze", "op_type": "Conv", "sqnr_db": 13.26, "local_sqnr_db": 16.6, "clipped_fraction": 0.078,
         "parents": ["pool"]},
        {"name": "excite", "op_type": "Conv", "sqnr_db": 13.33, "local_sqnr_db": 23.5, "parents": ["squeeze"]},
        {"name": "gate", "op_type": "HardSigmoid", "sqnr_db": 15.36, "local_sqnr_db": 55.9, "parents": ["excite"]},
        {"name": "scaled", "op_type": join_op, "sqnr_db": 14.23, "local_sqnr_db": 32.7, "parents": ["main", "gate"]},
    ]


def test_a_side_branch_keeps_only_what_survives_where_it_joins():
    layers = _se_branch("Mul")
    metrics.flag_drops(layers, threshold_db=6.0)
    squeeze = layers[2]
    assert squeeze["drop_db"] == pytest.approx(10.39) and squeeze["joined_at"] == "scaled"
    assert squeeze["drop_joined_db"] == pytest.approx(15.945 - 14.23) and not squeeze["drop"]
    assert "joined_at" not in layers[0]  # the main path has more than one reader: no branch
    ranked = {x["name"]: x for x in rank_sensitive(layers)}
    assert ranked["squeeze"]["score"] == pytest.approx(15.945 - 14.23)  # its drop and own error count at the join
    assert ranked["squeeze"]["reasons"][0].startswith("diluted: SQNR 10.4 dB below its inputs', 1.7 dB of it left")


def test_a_concat_does_not_dilute_the_branch_it_holds():
    """YOLO's class scores concatenated beside their boxes: the pooled SQNR of the Concat is the boxes'."""
    layers = _se_branch("Concat")
    metrics.flag_drops(layers, threshold_db=6.0)
    assert "drop_joined_db" not in layers[2] and layers[2]["drop"]
