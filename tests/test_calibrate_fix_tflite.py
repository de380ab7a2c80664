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
from fix_checks import FAST, run_fix, sha
from published_models import fetched
from qbench.host.quantize.tflite import quantize_tflite

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
    """The model's single output for every sample, float64 (see :func:`_all_outputs`)."""
    (values,) = _all_outputs(path, samples).values()
    return values


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


def build_argmax_head() -> bytes:
    """x [1,8,8,4] -> stem (3x3 conv, stride 2, relu) -> logits (1x1 conv, 16 classes, channel 0 biased
    by -1000) -> softmax -> probs [1,4,4,16], the output, read by argmax at 16 positions per sample (no
    axis long enough for a CTC reading): int8 logits lose the classes' differences."""
    rng = np.random.default_rng(1)
    g = M.Graph()
    x = g.tensor("x", (1, 8, 8, 4))

    def conv(name, source, channels_in, channels_out, kernel, stride, relu, bias, gain):
        out = g.tensor(name, (1, 4, 4, channels_out))
        weights = (rng.standard_normal((channels_out, kernel, kernel, channels_in)) * gain).astype(np.float32)
        options = fb.Conv2DOptionsT()
        options.padding, options.strideW, options.strideH = fb.Padding.SAME, stride, stride
        options.fusedActivationFunction = fb.ActivationFunctionType.RELU if relu else fb.ActivationFunctionType.NONE
        g.op(fb.BuiltinOperator.CONV_2D, [source, g.const(f"{name}/weights", weights), g.const(f"{name}/bias", bias)],
             [out], options)
        return out

    stem = conv("stem", x, 4, 8, 3, 2, True, np.zeros(8, np.float32), 0.5)
    bias = np.zeros(16, np.float32)
    bias[0] = -1000.0
    logits = conv("logits", stem, 8, 16, 1, 1, False, bias, 3.0)  # classes apart: a float argmax without near-ties
    probs = g.tensor("probs", (1, 4, 4, 16))
    softmax = fb.SoftmaxOptionsT()
    softmax.beta = 1.0
    g.op(fb.BuiltinOperator.SOFTMAX, [logits], [probs], softmax)
    return g.to_bytes([x], [probs])


def _top1(float_path, int8_path, eval_npz: Path) -> float:
    """Top-1 agreement recomputed here: argmax along the last axis, share of positions that agree."""
    samples = next(iter(np.load(eval_npz).values()))
    f, q = _outputs(float_path, samples), _outputs(int8_path, samples)
    return float(np.mean(f.argmax(-1) == q.argmax(-1)))


def _check_rewrites(settings: dict, final: Path, workdir: Path, name: str) -> None:
    """The recorded edits, written from one new calibration with the recorded settings, give the final
    model byte for byte (trials quantize edited recipes over the kept calibration)."""
    from qbench.host.formats.tflite import TFLiteFormat

    calibration = dict(np.load(settings["calibration"]))
    graph = TFLiteFormat().calibrated(settings, workdir / f"{name}-base.tflite", calibration, False)
    edits = settings["edits"]
    again = graph.write(workdir / f"{name}-again.tflite", edits["float_tensors"], edits["int16_tensors"],
                        edits["float_weights"])
    assert sha(again) == sha(final)


def test_fix_keeps_the_sensitive_block_in_float(workdir, agent_cache):
    out = workdir / "fix"
    proc, report = run_fix(workdir, "wide.tflite", out, "--target-psnr", "35", "--blocks", "5", "--methods", "minmax",
                           "--remedies", "float", cache=agent_cache)
    section = report["fix"]
    assert section["met"] and section["method"] == "minmax"
    final = out / "model.int8.tflite"
    psnr = _psnr(workdir / "wide.tflite", final, workdir / "eval.npz")
    assert report["summary"]["output_psnr_db"] == pytest.approx(psnr, abs=1e-3) and psnr >= 35
    assert section["pareto"][0]["family"] == "baseline" and section["pareto"][0]["output_psnr_db"] < 35
    # the trials are real: each one's figure is plain LiteRT's on its file
    for row in section["pareto"]:
        assert row["output_psnr_db"] == pytest.approx(_psnr(workdir / "wide.tflite", row["model"],
                                                            workdir / "eval.npz"), abs=1e-3)
    types = _tensor_types(final)
    assert types["probs"] == "float32" and types["stem"] == "int8"
    _check_rewrites(section["settings"], final, workdir, "fix-float")


def test_fix_reaches_a_top1_target(workdir, agent_cache):
    (workdir / "argmax.tflite").write_bytes(build_argmax_head())
    out = workdir / "fix-top1"
    baseline = workdir / "argmax-int8.tflite"
    calibration = dict(np.load(workdir / "calib.npz"))
    quantize_tflite(workdir / "argmax.tflite", baseline, calibration)
    assert _top1(workdir / "argmax.tflite", baseline, workdir / "eval.npz") < 0.9  # the premise
    _, report = run_fix(workdir, "argmax.tflite", out, "--target-top1", "0.95", "--blocks", "3", "--methods",
                        "minmax", "--remedies", "float", "--json", cache=agent_cache)
    section = report["fix"]
    assert section["met"] and section["target"] == {"psnr_db": None, "top1": 0.95, "not_broken": True}
    top1 = _top1(workdir / "argmax.tflite", out / "model.int8.tflite", workdir / "eval.npz")
    assert top1 >= 0.95 and report["summary"]["top1_agreement"] == pytest.approx(top1)
    for row in section["pareto"]:
        assert row["top1_agreement"] == pytest.approx(_top1(workdir / "argmax.tflite", row["model"],
                                                            workdir / "eval.npz"), abs=1e-4)
    assert section["pareto"][0]["top1_agreement"] < 0.95


@pytest.mark.slow
def test_fix_repairs_a_published_mediapipe_model(tmp_path, agent_cache):
    published, m = fetched("mp-iris_landmark")
    published.write_npz(m, 8, tmp_path / "calib.npz", split="calib")
    published.write_npz(m, 4, tmp_path / "eval.npz")
    _, report = run_fix(tmp_path, str(m.path), tmp_path / "out", "--target-psnr", "36", "--blocks", "6",
                        "--methods", "minmax", "--remedies", "float", "--json", cache=agent_cache)
    section = report["fix"]
    final = tmp_path / "out" / "model.int8.tflite"
    lowest = min(_psnr_all(m.path, final, tmp_path / "eval.npz"))
    assert section["met"] and lowest >= 36 and section["pareto"][0]["output_psnr_db"] < 36
    assert report["summary"]["output_psnr_db"] == pytest.approx(lowest, abs=1e-3)


def _psnr_all(float_path, int8_path, eval_npz: Path) -> list[float]:
    """Each output's PSNR recomputed here (a model of several outputs), pooled over samples."""
    samples = next(iter(np.load(eval_npz).values()))
    f, q = _all_outputs(float_path, samples), _all_outputs(int8_path, samples)
    return [10 * math.log10(np.max(np.abs(f[k])) ** 2 / np.mean((f[k] - q[k]) ** 2)) for k in f]


def _all_outputs(path, samples: np.ndarray) -> dict[str, np.ndarray]:
    """Every output for every sample, float64: a plain LiteRT interpreter (default delegate, as the
    agent's), an integer input quantized and an integer output dequantized here."""
    interpreter = tfl.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), outs = interpreter.get_input_details(), interpreter.get_output_details()
    got: dict[str, list] = {o["name"]: [] for o in outs}
    for sample in samples:
        value = sample
        if np.issubdtype(inp["dtype"], np.integer):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.rint(sample.astype(np.float64) / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        for o in outs:
            result = interpreter.get_tensor(o["index"]).astype(np.float64)
            if np.issubdtype(o["dtype"], np.integer):
                scale, zero = o["quantization"]
                result = (result - zero) * scale
            got[o["name"]].append(result)
    return {k: np.stack(v) for k, v in got.items()}


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


def test_sensitivity_sweeps_a_tflite_model(workdir, agent_cache):
    """`qbench sensitivity` on TFLite: each block's "only int8" trial, written from one calibration, is plain
    LiteRT's figure on its file; the softmax block is where the damage is."""
    out = workdir / "sensitivity"
    proc = qbench("sensitivity", "wide.tflite", "--device", "local", "--blocks", "5", "--data", "eval.npz",
                  "--calibration", "calib.npz", "--out", str(out), *FAST, cwd=workdir, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    rows = {r["first_op"]: r for r in load_report(out)["sensitivity"]["blocks"]}
    assert min(rows.values(), key=lambda r: r["only_int8_psnr_db"])["first_op"] in ("logits", SENSITIVE)
    trials = sorted((out / "trials").glob("trial-*.tflite"))
    assert trials and all(t.read_bytes()[4:8] == b"TFL3" for t in trials)
