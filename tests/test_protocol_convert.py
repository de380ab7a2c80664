"""from_dict/to_dict on long number lists (a capture reply's histograms): the checks of any other field, item by item."""

from __future__ import annotations

import dataclasses
import json

import pytest

from qbench.protocols.messages import (
    CapturePair,
    CaptureReply,
    ErrorCode,
    MsgType,
    PairStats,
    ProtocolError,
    QParams,
    from_dict,
    to_dict,
)

BINS = 66  # 64 bins and the two clipped counts


def _stats(k: int) -> PairStats:
    return PairStats(count=1000 + k, sum_sq_err=0.5 * k, sum_sq_float=2.0 + k, max_abs_float=3.0, max_abs_err=0.25,
                     float_min=-1.0, float_max=2.0, local_sum_sq_err=None if k % 2 else 0.125, clipped=k,
                     hist_range=[-1.0, 2.0], hist_float=list(range(k, k + BINS)), hist_int8=[k] * BINS)


def test_a_capture_reply_survives_the_wire_unchanged():
    reply = CaptureReply(stats=[_stats(k) for k in range(400)], groups=[list(range(400))], peak_mb=12.5,
                         phases_s={"load": 0.5})
    back = from_dict(CaptureReply, json.loads(json.dumps(to_dict(reply))))
    assert back == reply
    assert all(type(v) is int for s in back.stats for v in s.hist_float + s.hist_int8)


def test_ints_in_a_float_list_become_floats():
    stats = from_dict(PairStats, {"hist_range": [-1, 2.5], "sum_sq_err": 3})
    assert stats.hist_range == [-1.0, 2.5] and [type(v) for v in stats.hist_range] == [float, float]
    assert type(stats.sum_sq_err) is float
    assert from_dict(QParams, {"scale": [1, 2], "zero_point": [0, 0]}).scale == [1.0, 2.0]


@pytest.mark.parametrize("bad", [
    {"hist_float": [1, 2, True]}, {"hist_float": [1, 2.5]}, {"hist_float": [1, "2"]}, {"hist_float": [1, None]},
    {"hist_range": [0.0, False]}, {"hist_range": [0.0, "1"]}, {"hist_float": "123"}, {"count": True},
    {"count": 1.0}, {"graph_altered": 1},
])
def test_mistyped_items_of_a_list_are_refused(bad):
    with pytest.raises(ProtocolError) as err:
        from_dict(PairStats, bad)
    assert err.value.info.code == ErrorCode.BAD_MESSAGE.value


def test_to_dict_keeps_enums_nested_dataclasses_and_tuples_plain():
    pair = CapturePair("x", "x_q", QParams(scale=[0.5], zero_point=[3]))
    data = to_dict({"type": MsgType.CAPTURE, "pairs": (pair,), "n": [1, 2.5, None, True, "s"]})
    assert data == {"type": "capture", "pairs": [dataclasses.asdict(pair)], "n": [1, 2.5, None, True, "s"]}
    assert json.loads(json.dumps(data)) == data
