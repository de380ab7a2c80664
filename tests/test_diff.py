"""`diff_reports` on two runs made on purpose to differ."""

from __future__ import annotations

import copy

import pytest

from qbench.host.store import diff_reports
from reportdata import make_report


@pytest.fixture
def pair():
    a = make_report(n_layers=40)
    b = copy.deepcopy(a)
    b["device"]["runtime_version"] = "1.32.0"
    b["models"]["int8"]["sha256"] = "ef" * 32
    b["latency"]["int8"]["median_ms"] = a["latency"]["int8"]["median_ms"] * 2
    b["latency"]["speedup"] = a["latency"]["speedup"] / 2
    b["memory"]["int8"]["peak_mb"] = a["memory"]["int8"]["peak_mb"] + 20
    b["summary"]["output_psnr_db"] = a["summary"]["output_psnr_db"] - 3
    b["outputs"][0]["psnr_db"] = a["outputs"][0]["psnr_db"] - 3
    b["layers"][30]["psnr_db"] -= 15.0       # the big regression
    b["layers"][12]["psnr_db"] += 4.0        # a smaller improvement
    b["layers"][20]["psnr_db"] = None        # became exact
    b["layers"][20]["exact"] = True
    b["layers"][39]["name"] = "renamed/output_0"
    return a, b


def test_context_lists_only_what_differs(pair):
    result = diff_reports(*pair)
    assert {c.name: (c.a, c.b) for c in result.context} == {
        "device.runtime_version": ("1.31.1", "1.32.0"),
        "models.int8.sha256": ("cd" * 32, "ef" * 32),
    }


def test_latency_memory_and_outputs(pair):
    a, b = pair
    result = diff_reports(a, b)
    latency = {c.name: c for c in result.latency}
    assert latency["int8 median_ms"].ratio == pytest.approx(2.0)
    assert latency["float median_ms"].delta == 0
    assert latency["speedup"].ratio == pytest.approx(0.5)
    memory = {c.name: c for c in result.memory}
    assert memory["int8 peak_mb"].delta == pytest.approx(20.0)
    outputs = {c.name: c for c in result.outputs}
    assert outputs["output PSNR (min, dB)"].delta == pytest.approx(-3.0)
    assert outputs["logits PSNR (dB)"].delta == pytest.approx(-3.0)
    assert (outputs["class_id PSNR (dB)"].a, outputs["class_id PSNR (dB)"].b) == ("identical", "identical")


def test_layers_that_moved_most_come_first(pair):
    a, b = pair
    moved = diff_reports(a, b, top=3).layers_moved
    assert [m.name for m in moved] == [a["layers"][i]["name"] for i in (20, 30, 12)]
    assert moved[0].delta_db is None and moved[0].b_db is None
    assert moved[1].delta_db == pytest.approx(-15.0)
    assert moved[2].delta_db == pytest.approx(4.0)


def test_layers_in_one_run_only_are_listed_not_compared(pair):
    a, b = pair
    result = diff_reports(a, b, top=100)
    assert result.layers_only_a == [a["layers"][39]["name"]]
    assert result.layers_only_b == ["renamed/output_0"]
    assert "renamed/output_0" not in {m.name for m in result.layers_moved}


def test_identical_runs_differ_in_nothing():
    report = make_report()
    result = diff_reports(report, copy.deepcopy(report))
    assert result.context == [] and result.layers_moved == []
    assert all(c.delta in (0, None) for c in result.latency + result.memory + result.outputs)
    assert result.to_dict()["layers_only_a"] == []
