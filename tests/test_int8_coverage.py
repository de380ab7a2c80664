"""int8 models whose convolutions ONNX Runtime really runs as int8 kernels, and the coverage figure.

Known answers: the graph ONNX Runtime saves after optimizing (``optimized_model_filepath``), MACs
counted by hand from the builder's shapes, kernel times summed here from the report's own profile.
"""

from __future__ import annotations

import collections
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from cli import load_report, qbench
from coverage_models import (PADDLE_MACS, build_nothing_to_quantize, build_paddle_style, build_shape_inference_gap,
                             build_upsampling_head)
from qbench.host.quantize.kernels import int8_kernels
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.quantize.prepare import prepare_float

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet"]
INT8_OPS = {"QLinearConv", "QLinearMatMul", "QGemm"}  # the int8 kernels these models can fuse to
FLOAT_OPS = {"Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul"}


def _calibration(count=8, seed=1):
    return {"x": np.random.default_rng(seed).standard_normal((count, 1, 3, 32, 32)).astype(np.float32)}


def _kernel_ops(path, tmp) -> collections.Counter:
    """Op types of the graph ONNX Runtime runs (default optimization level, CPU), as it saves it itself."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(Path(tmp) / (Path(path).stem + ".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.fixture(scope="module")
def paddle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paddle")
    original = build_paddle_style(tmp / "paddle.onnx")
    prepared = prepare_float(original, {}, tmp)
    return tmp, original, prepared


def test_preparation_keeps_the_float_outputs(paddle):
    _, original, prepared = paddle
    x = _calibration(3, seed=5)["x"]
    a = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"])
    for sample in x:
        np.testing.assert_allclose(a.run(None, {"x": sample})[0], b.run(None, {"x": sample})[0], rtol=1e-5, atol=1e-6)


def test_every_conv_and_matmul_runs_as_an_int8_kernel(paddle):
    tmp, _, prepared = paddle
    int8 = quantize_onnx(prepared.path, tmp / "qbench.int8.onnx", _calibration())
    ops = _kernel_ops(int8, tmp)
    assert ops["QLinearConv"] == 4, ops
    assert not FLOAT_OPS & set(ops), ops
    assert sum(ops[op] for op in INT8_OPS) == 5  # the four convs and the matmul
    analysis = int8_kernels(int8)
    assert analysis["fraction"] == 1.0 and analysis["macs_total"] == sum(PADDLE_MACS.values())
    assert {n["name"]: n["macs"] for n in analysis["nodes"]} == PADDLE_MACS


def test_upsampling_conv_transpose_runs_as_an_int8_conv(tmp_path):
    """ONNX Runtime's CPU provider has no int8 ConvTranspose: preparation rewrites kernel = stride ones as
    1x1 Conv + DepthToSpace, with the same outputs."""
    original = build_upsampling_head(tmp_path / "head.onnx")
    prepared = prepare_float(original, {}, tmp_path)
    assert any("rewrote 1 ConvTranspose" in note for note in prepared.notes)
    x = np.random.default_rng(4).standard_normal((3, 1, 4, 16, 16)).astype(np.float32)
    a = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"])
    for sample in x:
        np.testing.assert_allclose(a.run(None, {"x": sample})[0], b.run(None, {"x": sample})[0], rtol=1e-5, atol=1e-6)
    int8 = quantize_onnx(prepared.path, tmp_path / "head.int8.onnx", {"x": x})
    ops = _kernel_ops(int8, tmp_path)
    assert ops["QLinearConv"] == 3 and not {"ConvTranspose", *FLOAT_OPS} & set(ops), ops
    assert int8_kernels(int8)["fraction"] == 1.0


class _Reader(CalibrationDataReader):
    def __init__(self, samples):
        self._it = iter({"x": s} for s in samples["x"])

    def get_next(self):
        return next(self._it, None)


@pytest.fixture(scope="module")
def plain_s8(paddle):
    """ONNX Runtime's own S8S8 QDQ model of the graph (int8 activations, as its quantizer makes them), as a
    user's --int8 model, and evaluation data."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ARM's CPU provider fuses int8 x int8 directly")
    tmp, _, prepared = paddle
    plain = tmp / "plain.int8.onnx"
    quantize_static(str(prepared.path), str(plain), _Reader(_calibration()), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    np.savez(tmp / "eval.npz", **_calibration(2, seed=7))
    return tmp, prepared.path, plain


#: In the S8S8 model the x86 provider rewrites a pair as uint8 only when its QuantizeLinear has one reader:
#: conv1's output (HardSwish: HardSigmoid and Mul) and conv2's input (conv2 and the residual Add) and output
#: (the Add and the Mul of x * Clip(x + 3, 0, 6)) have two, so conv1 and conv2 see int8 and stay float;
#: conv3, conv4 and the matmul fuse.
PLAIN_FLOAT = ("conv1", "conv2")


def test_plain_int8_activations_leave_fanned_out_convs_float(plain_s8):
    tmp, _, plain = plain_s8
    ops = _kernel_ops(plain, tmp)
    assert ops["Conv"] + ops["FusedConv"] == len(PLAIN_FLOAT), ops
    floats = [n for n in int8_kernels(plain)["nodes"] if not n["int8"]]
    assert tuple(n["name"] for n in floats) == PLAIN_FLOAT
    assert all("int8 activations" in n["reason"] for n in floats)


def test_coverage_from_the_profile_and_from_macs(plain_s8, agent_cache):
    tmp, float_path, int8 = plain_s8
    out = tmp / "profiled"
    proc = qbench("run", str(float_path), "--int8", str(int8), "--data", "eval.npz", "--profile-runs", "4",
                  "--out", str(out), *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(out)
    cov = report["int8_coverage"]
    # kernel time: summed here from the int8 model's profile entries
    entries = report["profile"]["int8"]
    int8_ms = sum(e["total_ms"] for e in entries if e["op_type"] in INT8_OPS)
    float_ms = sum(e["total_ms"] for e in entries if e["op_type"] in FLOAT_OPS)
    assert cov["basis"] == "kernel time" and float_ms > 0 and int8_ms > 0
    assert report["summary"]["int8_coverage"] == pytest.approx(int8_ms / (int8_ms + float_ms))
    # MACs, counted by hand
    total = sum(PADDLE_MACS.values())
    float_macs = sum(PADDLE_MACS[name] for name in PLAIN_FLOAT)
    assert (cov["macs"]["int8"], cov["macs"]["total"]) == (total - float_macs, total)
    assert [n["name"] for n in cov["float_nodes"]] == list(PLAIN_FLOAT)
    if cov["fraction"] < 0.9:  # their share of kernel time varies with the machine; of MACs it is 45%
        assert "conv1" in cov["note"] and "conv1" in proc.stdout
    assert "int8 coverage:" in proc.stdout

    out = tmp / "unprofiled"
    proc = qbench("run", str(float_path), "--int8", str(int8), "--data", "eval.npz", "--accuracy-only",
                  "--out", str(out), *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(out)
    cov = report["int8_coverage"]
    assert cov["basis"] == "MACs" and report["summary"]["int8_coverage"] == pytest.approx(1 - float_macs / total)
    assert "2 Conv (conv1, conv2): int8 activations" in cov["note"]
    printed = " ".join(proc.stdout.split())
    assert "int8 coverage: only 55% of convolution/matmul MACs runs in int8 kernels; float: 2 Conv" in printed


def test_quantizer_failure_leaves_its_report_and_models(tmp_path, agent_cache):
    build_nothing_to_quantize(tmp_path / "exp.onnx")
    out = tmp_path / "out"
    proc = qbench("run", "exp.onnx", "--out", str(out), *FAST, cwd=tmp_path, cache=agent_cache)
    assert proc.returncode != 0
    report = load_report(out)
    assert report["status"] == "failed" and report["error"]["stage"] == "quantize"
    assert "nothing was quantized" in report["error"]["message"]
    kept = {Path(p).name for p in report["error"]["files"]}
    assert {"float.prepared.onnx", "model.int8.onnx"} <= kept
    assert all((out / name).is_file() for name in kept)
    last = " ".join(proc.stderr.split())
    assert f"quantize failed: float.prepared.onnx: nothing was quantized (partial report in {out / 'report.json'}; " \
        f"kept {out / 'float.prepared.onnx'}, {out / 'model.int8.onnx'})" in last
    assert "Traceback" not in proc.stderr


def test_nothing_lands_outside_out(tmp_path, agent_cache):
    """Symbolic shape inference stays incomplete on this model: its temporary files go to a removed folder."""
    model = build_shape_inference_gap(tmp_path / "gap.onnx")
    cwd = tmp_path / "clean"
    cwd.mkdir()
    out = tmp_path / "out"
    proc = qbench("run", str(model), "--out", str(out), "--accuracy-only", *FAST, cwd=cwd, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    assert any("Incomplete symbolic shape inference" in note for note in load_report(out)["notes"])
    assert list(cwd.iterdir()) == []


def test_published_ppocr_classifier_runs_in_int8_kernels(tmp_path, agent_cache):
    from benchmarks import published

    m = published.model("ppocr-cls")
    for split, count in (("calib", 8), ("eval", 2)):  # (N, 1, C, H, W): one batch-1 input per sample
        np.savez(tmp_path / f"{split}.npz", **published.data(m, count, split))
    out = tmp_path / "out"
    proc = qbench("run", str(m.path), "--input-shape", m.input_shape, "--calibration", "calib.npz",
                  "--data", "eval.npz", "--profile-runs", "3", "--out", str(out), *FAST, cwd=tmp_path,
                  cache=agent_cache, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = load_report(out)
    assert report["int8_coverage"]["basis"] == "kernel time"
    assert report["summary"]["int8_coverage"] >= 0.9
    assert report["int8_coverage"]["macs"]["fraction"] == 1.0


def test_the_kernel_analysis_waits_for_its_first_ask_and_a_failure_is_a_note(tmp_path):
    import threading

    from qbench.host.formats.onnx import _analyze_kernels
    from qbench.host.report.coverage import coverage_section
    from qbench.host.run_state import Deferred, RunSettings, RunState

    calls = []
    deferred = Deferred(lambda: calls.append(1) or len(calls))
    threads = [threading.Thread(target=deferred.result) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert deferred.result() == 1 and calls == [1]  # computed once, whoever asked first

    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    state = RunState(RunSettings(model=tmp_path / "bad.onnx", out_dir=tmp_path))
    _analyze_kernels(state, tmp_path / "bad.onnx")
    assert state.notes == []  # nothing ran yet: the prefetch asks while the device captures, else the report
    assert coverage_section(state) is None
    assert len(state.notes) == 1 and state.notes[0].startswith("int8 coverage not analyzed on the host: ")


def test_matmuls_in_a_loop_body_are_float_and_the_loop_is_not_counted_twice(tmp_path, agent_cache):
    """SLANet's decoder: its MatMuls run in a Loop body, which the quantizer leaves float. Coverage names
    them; the profile's Loop entry, whose time holds those kernels, is not added to them again."""
    from verdict_models import build_loop_decoder

    model = build_loop_decoder(tmp_path / "decoder.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(2, 1, 16)).astype(np.float32))
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(8, 1, 16)).astype(np.float32))
    common = ["--data", "eval.npz", "--calibration", "calib.npz", *FAST]
    proc = qbench("run", str(model), "--profile-runs", "2", "--out", "profiled", *common, cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "profiled")
    body = [n for n in report["int8_coverage"]["float_nodes"] if "inside the body of Loop decode" in n["reason"]]
    assert sorted(n["name"] for n in body) == ["rotate_state", "score"] and all(n["macs"] is None for n in body)
    assert any(e["op_type"] == "Loop" for e in report["profile"]["int8"])
    assert "Loop" not in [f["family"] for f in report["profile"]["families"]]
    proc = qbench("run", str(model), "--accuracy-only", "--out", "macs", *common, cwd=tmp_path, cache=agent_cache)
    cov = load_report(tmp_path / "macs")["int8_coverage"]
    assert cov["basis"] == "MACs" and "counting only the ops whose MACs are known" in cov["note"]
    assert "2 MatMul (rotate_state, score): inside the body of Loop decode" in cov["note"]
