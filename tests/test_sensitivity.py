"""The sensitive-layer ranking on constructed layer entries: every reason, the score formula, the order."""

from __future__ import annotations

import pytest

from qbench.host.compare.sensitivity import HINT_DB, LOCAL_SQNR_DB, WEIGHT_DB, rank_sensitive


def _layer(name: str, **figures) -> dict:
    return {"name": name, "op_type": figures.pop("op_type", "Conv"), "parents": figures.pop("parents", []),
            **figures}


def _reasons(entry: dict) -> list[str]:
    return [r.split(":")[0] for r in entry["reasons"]]


def test_each_reason_and_the_score():
    layers = [
        _layer("healthy", sqnr_db=40.0, local_sqnr_db=45.0, drop_db=-1.0, drop=False, clipped_fraction=0.0,
               rmse_over_step=0.3),
        _layer("clipped", sqnr_db=15.0, local_sqnr_db=16.0, crest_db=10.0, drop_db=25.0, drop=True,
               clipped_fraction=0.05, rmse_over_step=40.0),
        _layer("wide", sqnr_db=38.0, local_sqnr_db=30.0, crest_db=12.0, drop_db=1.5, drop=False,
               quant_min=-10.0, quant_max=10.0, float_min=-2.0, float_max=2.0),
        _layer("inherits", parents=["healthy"], sqnr_db=12.0, local_sqnr_db=40.0, drop_db=-0.5, drop=False,
               rmse_over_step=9.0),
        _layer("weights", sqnr_db=38.0, local_sqnr_db=42.0, drop_db=2.0, weight_psnr_db=50.0,
               weight_worst_channel_psnr_db=15.0),
        _layer("outliers", sqnr_db=25.0, local_sqnr_db=27.0, crest_db=26.0, drop_db=None),
    ]
    ranked = {x["name"]: x for x in rank_sensitive(layers)}
    assert "healthy" not in ranked
    assert _reasons(ranked["clipped"]) == ["sudden drop", "clipping", "bad step", "local error"]
    assert ranked["clipped"]["score"] == pytest.approx(25.0 + LOCAL_SQNR_DB - 16.0)
    assert _reasons(ranked["wide"]) == ["drop", "wide range", "local error"]
    assert ranked["wide"]["score"] == pytest.approx(1.5 + LOCAL_SQNR_DB - 30.0)
    # its error arrived from upstream: listed with score 0, and its large RMSE/step is not blamed on it
    assert _reasons(ranked["inherits"]) == ["error from upstream"] and ranked["inherits"]["score"] == 0
    assert _reasons(ranked["weights"]) == ["drop", "weight error"]
    assert ranked["weights"]["score"] == pytest.approx(2.0 + WEIGHT_DB - 15.0)
    # peak 20x the RMS: the reason names the range and the remedies
    [reason] = ranked["outliers"]["reasons"]
    assert reason.startswith("outlier-dominated range: peak 20x the RMS")
    assert "percentile or entropy calibration" in reason and "int16" in reason and "per-channel" in reason
    assert ranked["outliers"]["score"] == pytest.approx(LOCAL_SQNR_DB - 27.0)
    assert [x["name"] for x in rank_sensitive(layers)] == ["clipped", "weights", "outliers", "wide", "inherits"]
    assert [x["name"] for x in rank_sensitive(layers, limit=2)] == ["clipped", "weights"]
    assert set(ranked["clipped"]) == {"name", "op_type", "psnr_db", "sqnr_db", "score", "reasons"}


def test_a_layer_no_worse_than_its_inputs_scores_nothing():
    """SQNR less than 1 dB below the inputs': whatever its own figures, it added nothing visible."""
    layers = [_layer("capped", op_type="Clip", sqnr_db=30.0, local_sqnr_db=20.0, crest_db=25.0, drop_db=0.5,
                     weight_worst_channel_psnr_db=10.0)]
    assert rank_sensitive(layers) == []


def test_a_fall_through_an_op_with_no_error_of_its_own_scores_nothing():
    """A squashing op (no weights, no clipping, local SQNR far above its inputs') is not where error is made."""
    layers = [
        _layer("noisy", sqnr_db=6.0, local_sqnr_db=30.0),
        _layer("pool", op_type="GlobalAveragePool", parents=["noisy"], sqnr_db=4.0, local_sqnr_db=19.0,
               crest_db=3.0, drop_db=2.0),
        _layer("conv", op_type="Conv", parents=["noisy"], sqnr_db=4.0, local_sqnr_db=19.0, crest_db=3.0,
               drop_db=2.0),
    ]
    ranked = {x["name"]: x for x in rank_sensitive(layers)}
    assert ranked["pool"]["score"] == 0
    assert _reasons(ranked["pool"]) == ["squashed", "error from upstream"]
    assert ranked["conv"]["score"] == pytest.approx(2.0)  # its weights are its own: the drop counts
    assert _reasons(ranked["conv"]) == ["drop"]  # its local 19 dB is buried under the input's 6 dB


def test_weights_argument_gives_the_worst_channel_per_layer():
    layers = [_layer("a", sqnr_db=40.0, local_sqnr_db=45.0), _layer("b", sqnr_db=40.0, local_sqnr_db=45.0)]
    weights = [
        {"layer": "a", "psnr_db": 52.0, "channel_psnr_db": [50.0, None, 30.0]},
        {"layer": "a", "psnr_db": 50.0, "channel_psnr_db": [25.0]},
        {"layer": "b", "psnr_db": 45.0, "channel_psnr_db": []},  # no channels: the tensor PSNR
    ]
    ranked = rank_sensitive(layers, weights)
    assert [x["name"] for x in ranked] == ["a"]
    assert ranked[0]["score"] == pytest.approx(WEIGHT_DB - 25.0)
    assert rank_sensitive(layers, [{"layer": "b", "psnr_db": 30.0, "channel_psnr_db": []}])[0]["score"] == 10.0


def test_faint_weight_channels_count_by_their_effective_psnr():
    """PP-OCRv5's detector: a 1x1 conv whose SQNR falls 1.3 dB, with channels at 12 dB against their own tiny
    peak but 52 dB against the median channel's (the figures of its report). Its score is its drop alone."""
    layers = [_layer("Add.149", op_type="Add", sqnr_db=8.43, local_sqnr_db=36.1),
              _layer("Add.151", sqnr_db=7.16, local_sqnr_db=33.0, drop_db=1.27, parents=["Add.149"])]
    faint = {"layer": "Add.151", "psnr_db": 77.8, "channel_psnr_db": [51.9, 12.04, 55.6], "effective_psnr_db": 52.4}
    [entry] = rank_sensitive(layers, [faint])
    assert entry["score"] == pytest.approx(1.27) and "weight error" not in _reasons(entry)
    older = {k: v for k, v in faint.items() if k != "effective_psnr_db"}  # a report from before the figure
    assert rank_sensitive(layers, [older])[0]["score"] == pytest.approx(1.27 + WEIGHT_DB - 12.04)


def test_squeeze_and_excite_needs_a_pooled_gate():
    """A Sigmoid that gates a larger tensor through a Mul is SE; SiLU's x * sigmoid(x) is not."""
    layers = [
        _layer("features", op_type="Relu", sqnr_db=40.0, elements=4096),
        _layer("gate", op_type="Sigmoid", parents=["pooled"], sqnr_db=30.0, local_sqnr_db=30.0, elements=16),
        _layer("scale", op_type="Mul", parents=["features", "gate"], sqnr_db=25.0, local_sqnr_db=28.0,
               drop_db=5.0, elements=4096),
        _layer("sig", op_type="Sigmoid", parents=["features"], sqnr_db=35.0, local_sqnr_db=30.0, drop_db=5.0,
               elements=4096),
        _layer("silu", op_type="Mul", parents=["features", "sig"], sqnr_db=30.0, local_sqnr_db=30.0, drop_db=5.0,
               elements=4096),
        _layer("probs", op_type="Softmax", sqnr_db=30.0, local_sqnr_db=31.0, drop_db=2.0),
    ]
    ranked = {x["name"]: x for x in rank_sensitive(layers)}
    assert ranked["scale"]["reasons"][-1].startswith("squeeze-and-excite scaling")
    assert ranked["scale"]["score"] == pytest.approx(5.0 + LOCAL_SQNR_DB - 28.0 + HINT_DB)
    assert ranked["gate"]["reasons"][-1].startswith("squeeze-and-excite gate")
    for silu in ("sig", "silu"):
        assert not any("squeeze" in r for r in ranked[silu]["reasons"])
        assert ranked[silu]["score"] == pytest.approx(5.0 + LOCAL_SQNR_DB - 30.0)
    assert ranked["probs"]["reasons"][-1].startswith("softmax")
    assert ranked["probs"]["score"] == pytest.approx(2.0 + LOCAL_SQNR_DB - 31.0 + HINT_DB)


def test_op_hints_add_to_a_measured_score_only():
    layers = [_layer("gate", op_type="Softmax", sqnr_db=40.0, local_sqnr_db=45.0)]
    assert rank_sensitive(layers) == []  # a hint alone does not list a layer


def test_missing_figures_count_nothing():
    layers = [_layer("float_op", op_type="Resize", psnr_db=None), _layer("bare")]
    assert rank_sensitive(layers) == []


def test_sweep_rows_order_by_verdict_then_psnr():
    """A block whose int8 alone makes an output degraded comes before one that only lowers the pooled PSNR."""
    from qbench.host.sensitivity_sweep import damage

    rows = [{"block": 0, "only_int8_psnr_db": 30.0, "only_int8_verdict": "ok"},
            {"block": 1, "only_int8_psnr_db": None, "only_int8_verdict": "ok"},
            {"block": 2, "only_int8_psnr_db": 45.0, "only_int8_verdict": "degraded"},
            {"block": 3, "only_int8_psnr_db": 50.0, "only_int8_verdict": "broken"},
            {"block": 4, "only_int8_psnr_db": 25.0}]  # a sweep from before verdicts: by PSNR
    assert [r["block"] for r in sorted(rows, key=damage)] == [3, 2, 4, 0, 1]


def test_a_clip_that_the_next_clamp_discards_is_no_damage():
    """openwakeword's TFLite speech embedding (pyopen-wakeword): ai-edge-quantizer gives each LeakyRelu the range of
    the Maximum(x, -0.4) after it, so 16-22 % of its values clip and its SQNR falls, and the Maximum takes it back;
    the LeakyRelus topped the ranking, above the first convolution that the ONNX twin's sweep finds (figures of that
    model's report)."""
    from qbench.host.compare.metrics import flag_drops

    def stage(k: int, conv_sqnr: float, leaky_sqnr: float, max_sqnr: float, parent: str) -> list[dict]:
        return [_layer(f"conv{k}", parents=[parent], sqnr_db=conv_sqnr, local_sqnr_db=33.0, weight_psnr_db=45.0),
                _layer(f"leaky{k}", op_type="LEAKY_RELU", parents=[f"conv{k}"], sqnr_db=leaky_sqnr,
                       local_sqnr_db=16.0, clipped_fraction=0.16, crest_db=12.0),
                _layer(f"max{k}", op_type="MAXIMUM", parents=[f"leaky{k}"], sqnr_db=max_sqnr, local_sqnr_db=34.0)]

    layers = [_layer("input", op_type="INPUT", sqnr_db=50.8, local_sqnr_db=50.8),
              *stage(1, 24.19, 15.32, 23.56, "input"), *stage(2, 19.61, 13.10, 16.37, "max1")]
    flag_drops(layers, 6.0)
    by = {x["name"]: x for x in layers}
    assert by["leaky1"]["drop_db"] == pytest.approx(8.87) and by["leaky1"]["drop_kept_db"] == pytest.approx(0.63)
    assert not by["leaky1"]["drop"] and by["conv1"]["drop"]  # the conv's 26.6 dB fall is where it breaks
    assert by["leaky2"]["drop_kept_db"] == pytest.approx(3.24) and not by["leaky2"]["drop"]
    ranked = {x["name"]: x for x in rank_sensitive(layers)}
    assert rank_sensitive(layers)[0]["name"] == "conv1"
    assert "leaky1" not in ranked or ranked["leaky1"]["score"] == 0
    assert ranked["leaky2"]["score"] == pytest.approx(3.24)  # what survives the Maximum, and nothing for the clip
    assert ranked["leaky2"]["reasons"][0].startswith("partly undone: SQNR 6.5 dB below its inputs', 3.2 dB of it "
                                                     "left at max2")
    # an Add raises SQNR by adding signal, not by discarding error: its input keeps its whole drop
    layers[-1].update(op_type="ADD", parents=["leaky2", "max1"])
    flag_drops(layers, 6.0)
    leaky2 = {x["name"]: x for x in layers}["leaky2"]
    assert "drop_kept_db" not in leaky2 and leaky2["drop_db"] == pytest.approx(6.51)
    # nor does a Relu with weights: in an ONNX QDQ model that is a Conv folded into its Relu, which adds signal
    layers[-1].update(op_type="Relu", parents=["leaky2"], weight_psnr_db=45.0)
    flag_drops(layers, 6.0)
    assert "drop_kept_db" not in {x["name"]: x for x in layers}["leaky2"]
