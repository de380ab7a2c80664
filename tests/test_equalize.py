"""Cross-layer equalization (host/quantize/equalize.py): the float model computes the same outputs
(plain onnxruntime sessions), the channel ranges narrow, and a real `qbench run --equalize` on a
depthwise model with imbalanced channels measures a higher output PSNR than the same run without."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from cli import load_report, qbench
from diagnosis_models import build_imbalanced_dw, build_pair
from qbench.host.quantize.equalize import equalize_file

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--profile-runs", "0", "--quiet"]


def _outputs(path, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _assert_same_outputs(a, b, shape) -> None:
    x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    for fa, fb in zip(_outputs(a, x), _outputs(b, x)):
        np.testing.assert_allclose(fb, fa, rtol=0, atol=1e-4 * np.abs(fa).max())


def _ratio(ranges: list[float]) -> float:
    return max(ranges) / min(ranges)


def test_depthwise_chain_keeps_outputs_and_balances_channels(tmp_path):
    model = build_imbalanced_dw(tmp_path / "dw.onnx")
    section = equalize_file(model, tmp_path / "eq.onnx")
    _assert_same_outputs(model, tmp_path / "eq.onnx", (1, 8, 12, 12))
    assert [(p["first"], p["second"]) for p in section["pairs"]] == [
        ("pw0", "dw0"), ("dw0", "pw1"), ("pw1", "dw1"), ("dw1", "out")]
    assert all(p["activation"] == "Relu" and p["channels"] == 16 for p in section["pairs"])
    before, after = section["channel_ranges_before"], section["channel_ranges_after"]
    assert _ratio(before["dw0"]) > 50 and _ratio(before["dw1"]) > 50  # the 100x spread, by construction
    for conv in before:
        assert _ratio(after[conv]) < min(_ratio(before[conv]), 2.0)
    # the ranges in the file are the ones reported
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "eq.onnx")).graph.initializer}
    np.testing.assert_allclose(np.abs(weights["dw0_w"]).reshape(16, -1).max(axis=1), after["dw0"], rtol=1e-6)
    # the paper's fixed point: each channel's range equal in the two convs of a pair
    r2 = np.abs(weights["pw1_w"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(after["dw0"], r2, rtol=0.05)


@pytest.mark.parametrize("activation", ["Relu", "LeakyRelu", "PRelu", "Clip0", "None"])
@pytest.mark.parametrize("group", [1, 2])
def test_scale_equivariant_pairs_keep_outputs(tmp_path, activation, group):
    model = build_pair(tmp_path / "pair.onnx", activation, group=group)
    section = equalize_file(model, tmp_path / "eq.onnx")
    assert len(section["pairs"]) == 1
    assert _ratio(section["channel_ranges_after"]["a"]) < _ratio(section["channel_ranges_before"]["a"]) / 2
    _assert_same_outputs(model, tmp_path / "eq.onnx", (1, 4, 6, 6))


@pytest.mark.parametrize("activation, fork", [("Relu6", False), ("Sigmoid", False), ("Relu", True)])
def test_pairs_that_would_change_the_model_are_left_alone(tmp_path, activation, fork):
    model = build_pair(tmp_path / "pair.onnx", activation, fork=fork)
    section = equalize_file(model, tmp_path / "eq.onnx")
    assert section["pairs"] == [] and section["channel_ranges_after"] == {}
    _assert_same_outputs(model, tmp_path / "eq.onnx", (1, 4, 6, 6))


def _output_psnr(report: dict, x: np.ndarray) -> float:
    """Output PSNR recomputed from the model files the report names, with plain sessions and numpy."""
    f = np.concatenate([_outputs(report["models"]["float"]["path"], s)[0] for s in x]).astype(np.float64)
    q = np.concatenate([_outputs(report["models"]["int8"]["path"], s)[0] for s in x]).astype(np.float64)
    return float(10 * np.log10(np.abs(f).max() ** 2 / np.mean((f - q) ** 2)))


@pytest.mark.slow
def test_run_equalize_gains_psnr_on_imbalanced_depthwise(tmp_path, agent_cache):
    model = build_imbalanced_dw(tmp_path / "dw.onnx")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(4, 1, 8, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(16, 1, 8, 12, 12)).astype(np.float32))
    common = ["run", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--per-tensor", *FAST]
    reports, procs = {}, {}
    for name, extra in (("plain", []), ("equalized", ["--equalize"])):
        procs[name] = proc = qbench(*common, "--out", name, *extra, cwd=tmp_path, cache=agent_cache)
        assert proc.returncode == 0, proc.stderr
        reports[name] = load_report(tmp_path / name)
    plain, equalized = reports["plain"], reports["equalized"]
    assert "equalization" not in plain and plain["settings"]["per_channel"] is False
    assert len(equalized["equalization"]["pairs"]) == 4
    assert equalized["models"]["float"]["path"].endswith("float.equalized.onnx")
    for report in (plain, equalized):
        assert report["summary"]["output_psnr_db"] == pytest.approx(_output_psnr(report, x), abs=0.01)
    gain = equalized["summary"]["output_psnr_db"] - plain["summary"]["output_psnr_db"]
    assert gain > 10, gain  # measured: about 25 dB -> 48 dB
    # per-tensor weights lose the small depthwise channels; after equalization they do not
    worst = {r: min(w["channel_psnr_db"][w["worst_channel"]] for w in reports[r]["weights"] if "dw" in w["name"])
             for r in reports}
    assert worst["plain"] < 20 < 40 < worst["equalized"]
    assert "cross-layer equalization: 4 conv pair(s)" in procs["equalized"].stdout


def test_equalize_refuses_a_given_int8_model(tmp_path, agent_cache):
    model = build_pair(tmp_path / "pair.onnx")
    proc = qbench("run", str(model), "--int8", str(model), "--equalize", "--out", "o", *FAST, cwd=tmp_path,
                  cache=agent_cache)
    assert proc.returncode == 1
    assert "--equalize" in proc.stderr and "Traceback" not in proc.stderr
