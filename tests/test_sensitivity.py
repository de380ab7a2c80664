"""The sensitive-layer ranking on constructed layer entries: every reason, the score formula, the order."""

from __future__ import annotations

import pytest

from qbench.host.compare.sensitivity import HINT_DB, LOCAL_DB, WEIGHT_DB, rank_sensitive


def _layer(name: str, **figures) -> dict:
    return {"name": name, "op_type": figures.pop("op_type", "Conv"), "parents": figures.pop("parents", []),
            **figures}


def _reasons(entry: dict) -> list[str]:
    return [r.split(":")[0] for r in entry["reasons"]]


def test_each_reason_and_the_score():
    layers = [
        _layer("healthy", psnr_db=50.0, local_psnr_db=52.0, drop_db=-1.0, drop=False, clipped_fraction=0.0,
               rmse_over_step=0.3),
        _layer("clipped", psnr_db=20.0, local_psnr_db=21.0, drop_db=25.0, drop=True, clipped_fraction=0.05,
               rmse_over_step=40.0),
        _layer("wide", psnr_db=45.0, local_psnr_db=35.0, drop_db=1.5, drop=False, quant_min=-10.0, quant_max=10.0,
               float_min=-2.0, float_max=2.0),
        _layer("inherits", psnr_db=22.0, local_psnr_db=55.0, drop_db=-0.5, drop=False, rmse_over_step=9.0),
        _layer("weights", psnr_db=48.0, local_psnr_db=50.0, weight_psnr_db=50.0, weight_worst_channel_psnr_db=15.0),
    ]
    ranked = {x["name"]: x for x in rank_sensitive(layers)}
    assert "healthy" not in ranked
    assert _reasons(ranked["clipped"]) == ["sudden drop", "clipping", "bad step", "local error"]
    assert ranked["clipped"]["score"] == pytest.approx(25.0 + LOCAL_DB - 21.0)
    assert _reasons(ranked["wide"]) == ["drop", "wide range", "local error"]
    assert ranked["wide"]["score"] == pytest.approx(1.5 + LOCAL_DB - 35.0)
    # its error arrived from upstream: listed with score 0, and its large RMSE/step is not blamed on it
    assert _reasons(ranked["inherits"]) == ["error from upstream"] and ranked["inherits"]["score"] == 0
    assert _reasons(ranked["weights"]) == ["weight error"]
    assert ranked["weights"]["score"] == pytest.approx(WEIGHT_DB - 15.0)
    assert [x["name"] for x in rank_sensitive(layers)] == ["clipped", "weights", "wide", "inherits"]
    assert [x["name"] for x in rank_sensitive(layers, limit=2)] == ["clipped", "weights"]
    assert set(ranked["clipped"]) == {"name", "op_type", "psnr_db", "score", "reasons"}


def test_weights_argument_gives_the_worst_channel_per_layer():
    layers = [_layer("a", psnr_db=45.0, local_psnr_db=50.0), _layer("b", psnr_db=45.0, local_psnr_db=50.0)]
    weights = [
        {"layer": "a", "psnr_db": 52.0, "channel_psnr_db": [50.0, None, 30.0]},
        {"layer": "a", "psnr_db": 50.0, "channel_psnr_db": [25.0]},
        {"layer": "b", "psnr_db": 45.0, "channel_psnr_db": []},  # no channels: the tensor PSNR
    ]
    ranked = rank_sensitive(layers, weights)
    assert [x["name"] for x in ranked] == ["a"]
    assert ranked[0]["score"] == pytest.approx(WEIGHT_DB - 25.0)
    assert rank_sensitive(layers, [{"layer": "b", "psnr_db": 30.0, "channel_psnr_db": []}])[0]["score"] == 10.0


def test_op_hints_add_to_a_measured_score_only():
    layers = [
        _layer("gate", op_type="Sigmoid", psnr_db=40.0, local_psnr_db=45.0),
        _layer("scale", op_type="Mul", parents=["features", "gate"], psnr_db=30.0, local_psnr_db=38.0),
        _layer("probs", op_type="Softmax", psnr_db=30.0, local_psnr_db=36.0, drop_db=2.0),
        _layer("features", op_type="Relu", psnr_db=45.0, local_psnr_db=50.0),
    ]
    ranked = {x["name"]: x for x in rank_sensitive(layers)}
    assert "gate" not in ranked  # a hint alone does not list a layer
    assert ranked["scale"]["reasons"][-1].startswith("squeeze-and-excite")
    assert ranked["scale"]["score"] == pytest.approx(LOCAL_DB - 38.0 + HINT_DB)
    assert ranked["probs"]["reasons"][-1].startswith("softmax")
    assert ranked["probs"]["score"] == pytest.approx(2.0 + LOCAL_DB - 36.0 + HINT_DB)


def test_missing_figures_count_nothing():
    layers = [_layer("float_op", op_type="Resize", psnr_db=None), _layer("bare")]
    assert rank_sensitive(layers) == []
