"""`qbench calibrate` and `qbench fix` on .tflite models: real CLI, real local agent, real LiteRT.

``wide.tflite`` mirrors the ONNX test's model (tests/test_calibrate_fix.py): ONE sensitive spot by
construction, a 1x1 conv giving 16 logits of which one carries a -1000 bias; its int8 step (about 4)
wipes out the other logits, and the softmax over them turns that into a large output error. Every
figure qbench reports is checked against plain LiteRT interpreters on the files it wrote, and numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tflite_models as M
from ai_edge_litert import interpreter as tfl
from ai_edge_litert import schema_py_generated as fb

from cli import load_report, qbench
from fix_checks import (
    FAST, check_moved_one_layer, check_steps_are_real, check_stops_at_the_step_budget, run_fix, sha,
)
from qbench.host.quantize.tflite import quantize_tflite, quantize_with_recipe

METHODS = {"minmax": "min_max_uniform_quantize", "extremes": "min_max_uniform_quantize",
           "moving-average": "min_max_uniform_quantize", "octav": "OCTAV", "mse": "MSE", "gptq": "GPTQ"}
SENSITIVE = "probs"  # the softmax output: the drop happens there, from its wide-range logits input


def build_wide_logits() -> bytes:
    """x [1,8,8,4] -> stem (3x3 conv, relu) -> conv1 (3x3 conv, relu) -> logits (1x1 conv, channel 0
    biased by -1000) -> softmax -> probs -> y (1x1 conv)."""
    rng = np.random.default_rng(0)
    g = M.Graph()
    x = g.tensor("x", (1, 8, 8, 4))

    def conv(name: str, source: int, channels_in: int, channels_out: int, kernel: int, relu: bool, gain: float,
             bias: np.ndarray | None = None) -> int:
        out = g.tensor(name, (1, 8, 8, channels_out))
        weights = (rng.standard_normal((channels_out, kernel, kernel, channels_in)) * gain).astype(np.float32)
        options = fb.Conv2DOptionsT()
        options.padding, options.strideW, options.strideH = fb.Padding.SAME, 1, 1
        options.fusedActivationFunction = fb.ActivationFunctionType.RELU if relu else fb.ActivationFunctionType.NONE
        bias = np.zeros(channels_out, np.float32) if bias is None else bias
        g.op(fb.BuiltinOperator.CONV_2D, [source, g.const(f"{name}/weights", weights), g.const(f"{name}/bias", bias)],
             [out], options)
        return out

    stem = conv("stem", x, 4, 4, 3, True, 0.3)
    conv1 = conv("conv1", stem, 4, 8, 3, True, 0.3)
    bias = np.zeros(16, np.float32)
    bias[0] = -1000.0  # a channel the softmax ignores, but it sets the int8 range of the logits
    logits = conv("logits", conv1, 8, 16, 1, False, 0.5, bias)
    probs = g.tensor(SENSITIVE, (1, 8, 8, 16))
    softmax = fb.SoftmaxOptionsT()
    softmax.beta = 1.0
    g.op(fb.BuiltinOperator.SOFTMAX, [logits], [probs], softmax)
    y = conv("y", probs, 16, 4, 1, False, 0.5)
    return g.to_bytes([x], [y])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("calibrate-fix-tflite")
    (tmp / "wide.tflite").write_bytes(build_wide_logits())
    (tmp / "net.tflite").write_bytes(M.float_convnet())
    rng = np.random.default_rng(3)
    np.savez(tmp / "calib.npz", x=rng.standard_normal((16, 1, 8, 8, 4)).astype(np.float32))
    np.savez(tmp / "eval.npz", x=rng.standard_normal((4, 1, 8, 8, 4)).astype(np.float32))
    np.savez(tmp / "net-calib.npz", input=M.calibration_samples(16, seed=1))
    np.savez(tmp / "net-eval.npz", input=M.calibration_samples(4, seed=5))
    return tmp


def _outputs(path, samples: np.ndarray) -> np.ndarray:
    """The model's single output for every sample, float64: a plain LiteRT interpreter (default
    delegate, as the agent's), an integer input quantized and an integer output dequantized here."""
    interpreter = tfl.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    got = []
    for sample in samples:
        value = sample
        if np.issubdtype(inp["dtype"], np.integer):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.rint(sample.astype(np.float64) / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"]).astype(np.float64)
        if np.issubdtype(out["dtype"], np.integer):
            scale, zero = out["quantization"]
            result = (result - zero) * scale
        got.append(result)
    return np.stack(got)


def _psnr(float_path, int8_path, eval_npz: Path) -> float:
    """Output PSNR recomputed here: pooled over samples, peak = max|float|."""
    samples = next(iter(np.load(eval_npz).values()))
    f, q = _outputs(float_path, samples), _outputs(int8_path, samples)
    return 10 * math.log10(np.max(np.abs(f)) ** 2 / np.mean((f - q) ** 2))


def _tensor_types(path) -> dict[str, str]:
    interpreter = tfl.Interpreter(model_path=str(path))
    return {d["name"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}


@pytest.fixture(scope="module")
def calibrated(workdir, agent_cache):
    out = workdir / "calibrate"
    proc = qbench("calibrate", "net.tflite", "--device", "local", "--data", "net-eval.npz", "--calibration",
                  "net-calib.npz", "--out", str(out), "--json", *FAST, cwd=workdir, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    return out, load_report(out), json.loads(proc.stdout)


@pytest.mark.slow
def test_calibrate_measures_every_ai_edge_quantizer_algorithm(calibrated, workdir):
    out, report, printed = calibrated
    rows = {row["method"]: row for row in report["calibration"]["methods"]}
    assert {m: r["algorithm"] for m, r in rows.items()} == METHODS  # all of them, by default, in this order
    assert list(rows) == list(METHODS) and printed["methods"] == report["calibration"]["methods"]
    assert "moving-average = ai-edge-quantizer's own" in report["calibration"]["note"]
    assert "keeps no histograms" in report["calibration"]["note"]
    assert {m: r["activation_ranges"] for m, r in rows.items()} == {
        "minmax": "minmax", "extremes": "extremes", "moving-average": "moving-average", "octav": "minmax",
        "mse": "minmax", "gptq": "minmax"}
    calibration = dict(np.load(workdir / "net-calib.npz"))
    for method, row in rows.items():
        own = load_report(out / method)
        model = out / method / "model.int8.tflite"
        assert row["output_psnr_db"] == own["summary"]["output_psnr_db"]
        assert row["latency_int8_ms"] == own["latency"]["int8"]["median_ms"]
        assert own["models"]["int8"]["sha256"] == row["sha256"] == sha(model)
        assert own["models"]["float"]["sha256"] == sha(workdir / "net.tflite")  # the user's float model
        assert own["device"]["agent_version"] and own["device"]["runtime"] == "tflite"
        assert row["output_psnr_db"] == pytest.approx(_psnr(workdir / "net.tflite", model, workdir / "net-eval.npz"),
                                                      abs=1e-3)
        # the same calibration samples for every method: quantizing here with the file gives the same bytes
        again = quantize_tflite(workdir / "net.tflite", workdir / f"again-{method}.tflite", calibration, method=method)
        assert sha(again.path) == row["sha256"]
    # the methods really differ: ranges over samples, and how the algorithms set this net's weights
    assert len({row["sha256"] for row in rows.values()}) == len(METHODS)
    best = max(rows.values(), key=lambda r: (r["output_psnr_db"], -r["latency_int8_ms"]))
    assert report["calibration"]["winner"] == printed["winner"] == best["method"]
    assert sha(out / "model.int8.tflite") == best["sha256"] == report["models"]["int8"]["sha256"]
    assert report["summary"]["output_psnr_db"] == best["output_psnr_db"]


def _check_steps_are_real(section: dict, workdir: Path) -> None:
    check_steps_are_real(section, lambda model: _psnr(workdir / "wide.tflite", model, workdir / "eval.npz"))


def _check_reproduces(settings: dict, final: Path, workdir: Path, name: str) -> None:
    """The recorded settings give the final model byte for byte: through qbench's quantize_tflite, and
    through the ai-edge-quantizer recipe they hold."""
    calibration = dict(np.load(settings["calibration"]))
    again = quantize_tflite(settings["float_path"], workdir / f"{name}-args.tflite", calibration,
                            recipe=settings["recipe"], keep_float=settings["keep_float"], method=settings["method"],
                            int16=settings["int16"])
    assert sha(again.path) == sha(final)
    again = quantize_with_recipe(settings["float_path"], workdir / f"{name}-recipe.tflite", calibration,
                                 settings["quantizer_recipe"], ranges=settings["ranges"])
    assert sha(again.path) == sha(final)


@pytest.mark.slow
def test_fix_reaches_the_target_by_keeping_the_sensitive_layer_in_float(workdir, agent_cache):
    out = workdir / "fix"
    proc, report = run_fix(workdir, "wide.tflite", out, "--target-psnr", "35", cache=agent_cache)
    section = report["fix"]
    check_moved_one_layer(section, SENSITIVE)
    _check_steps_are_real(section, workdir)
    final = out / "model.int8.tflite"
    assert report["models"]["int8"]["path"] == str(final.resolve()) and report["models"]["int8"]["sha256"] == sha(final)
    assert report["summary"]["output_psnr_db"] >= 35
    assert report["summary"]["output_psnr_db"] == pytest.approx(
        _psnr(workdir / "wide.tflite", final, workdir / "eval.npz"), abs=1e-3)
    # moving probs: the softmax, the conv writing its logits input and the conv reading it stay float
    settings = section["settings"]
    assert settings["keep_float"] == ["logits", "probs", "y"] and settings["int16"] == []
    assert [(e["regex"], e["algorithm_key"]) for e in settings["quantizer_recipe"][1:]] == [
        ("(^|;)logits;", "no_quantize"), ("(^|;)probs;", "no_quantize"), ("(^|;)y;", "no_quantize")]
    types = _tensor_types(final)
    assert types["probs"] == types["logits"] == "float32" and types["conv1"] == "int8"
    _check_reproduces(settings, final, workdir, "fix-float")
    assert "in float: probs" in proc.stderr and "baseline" in proc.stdout


@pytest.mark.slow
def test_fix_with_int16_activations(workdir, agent_cache):
    out = workdir / "fix16"
    _, report = run_fix(workdir, "wide.tflite", out,
                        "--target-psnr", "35", "--precision", "int16", "--json", cache=agent_cache)
    section = report["fix"]
    check_moved_one_layer(section, SENSITIVE, "int16")
    _check_steps_are_real(section, workdir)
    settings = section["settings"]
    # a16w8 on the ops writing probs and its logits input; ai-edge-quantizer requantizes around them
    assert settings["int16"] == ["logits", "probs"] and settings["keep_float"] == []
    final = out / "model.int8.tflite"
    types = _tensor_types(final)
    assert types["logits"] == types["probs"] == "int16" and types["conv1"] == types["y"] == "int8"
    _check_reproduces(settings, final, workdir, "fix-int16")


@pytest.mark.slow
def test_fix_exits_3_when_the_budget_ends_before_the_target(workdir, agent_cache):
    check_stops_at_the_step_budget(workdir, "wide.tflite", agent_cache, SENSITIVE)


def test_calibrate_offers_only_ai_edge_quantizers_methods(workdir):
    proc = qbench("calibrate", "net.tflite", "--methods", "minmax,percentile", cwd=workdir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "TFLite calibration method 'percentile': ai-edge-quantizer keeps no histograms" in proc.stderr
    proc = qbench("calibrate", "net.tflite", "--methods", "minmax,minmax", cwd=workdir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert ("--methods: give distinct methods among minmax, extremes, moving-average, octav, mse, gptq "
            "(for tflite models)") in proc.stderr
    proc = qbench("fix", "net.tflite", "--target-psnr", "30", "--activation-type", "uint8", cwd=workdir)
    assert proc.returncode == 1 and "int8 or int16" in proc.stderr and "Traceback" not in proc.stderr
