"""Bias correction (host/quantize/bias_correction.py): the shift its int8 weights cause, computed here
independently in numpy, is what the corrected int32 bias removes; it repairs the patterns where the
weights' rounding times an input offset is the damage, in `run --bias-correction` and in `fix`; a
published wake-word head it repairs whole (slow)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cli import load_report, qbench
from diagnosis_models import build_offset_input, build_sigmoid_tail, offset_samples
from plain_ort import session as plain_session
from published_models import fetched
from qbench.host.quantize.bias_correction import correct_file
from qbench.host.quantize.onnx import quantize_onnx
from local_cpu import EIGHT_BIT_PATTERN, REDUCE_RANGE

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--profile-runs", "0"]


def _features(count: int, seed: int) -> np.ndarray:
    """(count, 1, 64): features each on its own offset (-2..2 around 3), varying by 0.5."""
    rng = np.random.default_rng(seed)
    return (3 + np.linspace(-2, 2, 64) + 0.5 * rng.standard_normal((count, 1, 64))).astype(np.float32)


def _outputs(path, x: np.ndarray) -> np.ndarray:
    session = plain_session(path)
    return np.concatenate([session.run(None, {"x": s})[0] for s in x]).astype(np.float64)


def _psnr(path, reference_path, x: np.ndarray) -> float:
    """The README's PSNR: peak = max|float|, pooled over the samples."""
    reference = _outputs(reference_path, x)
    return float(10 * np.log10(np.abs(reference).max() ** 2 / np.mean((_outputs(path, x) - reference) ** 2)))


def _bias_and_weights(path, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dequantized bias and weights of ``layer`` in a QDQ model, and the bias's step."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    made = {o: n for n in model.graph.node for o in n.output}
    (node,) = [n for n in model.graph.node if n.name == layer]

    def dequantized(name):
        dq = made[name]
        values, scale = inits[dq.input[0]], inits[dq.input[1]]
        zero = inits[dq.input[2]] if len(dq.input) > 2 else 0.0
        if scale.ndim == 1 and values.ndim > 1:  # per channel, along the DequantizeLinear's axis
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * values.ndim
            shape[axis] = -1
            scale, zero = np.reshape(scale, shape), np.reshape(np.broadcast_to(zero, scale.shape), shape)
        return (values - zero) * scale

    return dequantized(node.input[2]), dequantized(node.input[1]), inits[made[node.input[2]].input[1]]


@pytest.fixture(scope="module")
def offset_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bias")
    model = build_offset_input(tmp / "offset.onnx")
    calibration = {"x": offset_samples(16, seed=1)}
    plain = quantize_onnx(model, tmp / "plain.onnx", calibration)
    corrected = tmp / "corrected.onnx"
    shutil.copyfile(plain, corrected)
    section = correct_file(corrected, model, calibration)
    return tmp, model, calibration, plain, corrected, section


def test_conv_bias_moves_by_the_mean_shift_of_its_int8_weights(offset_pair):
    """conv1 reads the model input: E[x] is the calibration mean, and ΔW ⊛ E[x] with the zero padding is
    computed here by direct summation."""
    _, model, calibration, plain, corrected, section = offset_pair
    assert section["layers"] == 3 and not section["skipped"]
    bias_before, weights, step = _bias_and_weights(plain, "conv1")
    bias_after, _, _ = _bias_and_weights(corrected, "conv1")
    floats = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(model)).graph.initializer}
    delta = weights - floats["w1"]  # (8, 1, 3, 3)
    mean = np.pad(calibration["x"].astype(np.float64).mean(axis=0)[0, 0], 1)  # (26, 18): pads=[1,1,1,1]
    h, w = mean.shape[0] - 2, mean.shape[1] - 2
    shift = np.array([np.mean([[np.sum(delta[c, 0] * mean[i:i + 3, j:j + 3]) for j in range(w)] for i in range(h)])
                      for c in range(8)])
    assert np.abs(shift).max() > 100 * step.max()  # the pattern: zero-sum filters on an offset input
    assert np.all(np.abs(bias_after - (bias_before - shift)) <= step / 2 + 1e-9)  # to the int32 bias's step


@pytest.mark.skipif(REDUCE_RANGE, reason=EIGHT_BIT_PATTERN)
def test_gemm_bias_moves_by_delta_w_times_the_input_mean(tmp_path):
    model = build_sigmoid_tail(tmp_path / "tail.onnx")
    calibration = {"x": _features(32, seed=1)}
    plain = quantize_onnx(model, tmp_path / "plain.onnx", calibration)
    corrected = tmp_path / "corrected.onnx"
    shutil.copyfile(plain, corrected)
    correct_file(corrected, model, calibration)
    bias_before, weights, step = _bias_and_weights(plain, "fc1")
    bias_after, _, _ = _bias_and_weights(corrected, "fc1")
    floats = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(model)).graph.initializer}
    shift = calibration["x"].astype(np.float64).reshape(-1, 64).mean(axis=0) @ (weights - floats["w1"])
    assert np.all(np.abs(bias_after - (bias_before - shift)) <= step / 2 + 1e-9)
    # each feature on its own offset: the shift is the damage, and the correction repairs it (plain ORT)
    x = _features(16, seed=2)
    assert _psnr(corrected, model, x) > _psnr(plain, model, x) + 6


@pytest.mark.skipif(REDUCE_RANGE, reason=EIGHT_BIT_PATTERN)
def test_correction_repairs_the_offset_pattern(offset_pair):
    _, model, _, plain, corrected, _ = offset_pair
    x = offset_samples(8, seed=2)
    assert _psnr(corrected, model, x) > _psnr(plain, model, x) + 3


def test_run_with_bias_correction_reports_it_and_its_figures_are_plain_onnxruntime(offset_pair, agent_cache):
    tmp, model, calibration, _, _, _ = offset_pair
    x = offset_samples(8, seed=2)
    np.savez(tmp / "eval.npz", x=x)
    np.savez(tmp / "calib.npz", **calibration)
    proc = qbench("run", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--bias-correction",
                  "--accuracy-only", "--out", "run", cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp / "run")
    assert report["bias_correction"]["layers"] == 3
    assert any(n.startswith("bias correction: 3 layer(s) corrected") for n in report["notes"])
    assert "bias correction: 3 layer(s)" in proc.stderr
    int8 = tmp / "run" / "model.int8.onnx"
    assert report["outputs"][0]["psnr_db"] == pytest.approx(_psnr(int8, model, x), abs=1e-3)


def test_bias_correction_with_a_given_int8_model_is_one_line(offset_pair, agent_cache):
    tmp, model, _, plain, _, _ = offset_pair
    proc = qbench("run", str(model), "--int8", str(plain), "--bias-correction", "--out", "given", cwd=tmp,
                  cache=agent_cache)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        "qbench: error: --bias-correction corrects the int8 model qbench makes: not with --int8"]


def test_fix_takes_the_bias_correction_when_it_meets_the_target_all_int8(offset_pair, agent_cache):
    tmp, model, calibration, plain, corrected, _ = offset_pair
    x = offset_samples(8, seed=2)
    np.savez(tmp / "eval.npz", x=x)
    np.savez(tmp / "calib.npz", **calibration)
    target = (_psnr(plain, model, x) + _psnr(corrected, model, x)) / 2  # between plain and corrected min/max
    proc = qbench("fix", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--target-psnr",
                  f"{target:.2f}", "--methods", "minmax", "--blocks", "3", "--out", "fix", *FAST, cwd=tmp,
                  cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    section = load_report(tmp / "fix")["fix"]
    rows = {(r["method"], r["bias_correction"]): r for r in section["methods"]}
    assert set(rows) == {("minmax", False), ("minmax", True)}
    assert section["bias_correction"] and section["settings"]["bias_correction"]
    assert section["chosen"]["int8_share"] == 1.0 and section["chosen"]["family"] == "baseline"
    final = tmp / "fix" / "model.int8.onnx"
    assert section["chosen"]["output_psnr_db"] == pytest.approx(_psnr(final, model, x), abs=1e-3)
    assert "minmax calibration with bias correction" in proc.stdout


@pytest.mark.skipif(REDUCE_RANGE, reason=EIGHT_BIT_PATTERN)
def test_fix_with_bias_correction_given_corrects_every_variant_once(offset_pair, agent_cache):
    tmp, model, calibration, plain, corrected, _ = offset_pair
    x = offset_samples(8, seed=2)
    np.savez(tmp / "eval.npz", x=x)
    np.savez(tmp / "calib.npz", **calibration)
    proc = qbench("fix", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--target-psnr", "1",
                  "--methods", "minmax", "--bias-correction", "--out", "fixed", *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    section = load_report(tmp / "fixed")["fix"]
    [row] = section["methods"]  # no second correction of the corrected model
    assert section["settings"]["bias_correction"] and not row["bias_correction"]
    # corrected once: the figure of quantize + correct_file, not that of a second correction on top
    assert row["output_psnr_db"] == pytest.approx(_psnr(corrected, model, x), abs=0.05)
    assert _psnr(tmp / row["model"], model, x) > _psnr(plain, model, x) + 3


@pytest.mark.slow
def test_bias_correction_repairs_a_published_wake_word_head(tmp_path):
    """oww-hey-jarvis: its first Gemm's weights times the embeddings' offsets are the damage (README)."""
    published, m = fetched("oww-hey-jarvis")
    calibration = published.data(m, 32, split="calib")
    x = published.data(m, 16, split="eval")[m.input_name]
    plain = quantize_onnx(m.path, tmp_path / "plain.onnx", calibration)
    corrected = tmp_path / "corrected.onnx"
    shutil.copyfile(plain, corrected)
    correct_file(corrected, m.path, calibration)

    def psnr(path) -> float:
        f, q = (np.concatenate([plain_session(p).run(None, {m.input_name: a})[0] for a in x]).astype(np.float64)
                for p in (m.path, path))
        return float(10 * np.log10(np.abs(f).max() ** 2 / np.mean((q - f) ** 2)))

    assert psnr(corrected) > psnr(plain) + 6
