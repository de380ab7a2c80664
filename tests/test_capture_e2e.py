"""Capture end to end: --save-tensors, histograms and the capture worker's memory, through the real CLI and agent.

Saved tensors are checked against plain onnxruntime sessions on the models qbench wrote;
histograms against numpy.histogram over those same tensors.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from cli import load_report, qbench
from models import build_convnet, write_convnet_samples
from plain_ort import session as _session
from qbench.host.compare import matching
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.transport.client import AgentClient, AgentError
from qbench.host.transport.local import LocalTransport
from qbench.protocols.messages import CaptureRequest, OrtRunnerConfig

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet"]
BINS = 16


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, agent_cache):
    # uint8 activations: ReLU outputs have zero point 0, so their many exact zeros sit on the first bin edge
    tmp = tmp_path_factory.mktemp("saved")
    model = build_convnet(tmp / "convnet.onnx")
    write_convnet_samples(tmp, 11)
    out = tmp / "out"
    proc = qbench("run", "--device", "local", str(model), "--data", "eval.npz", "--calibration", "calib.npz",
                  "--activation-type", "uint8", "--histogram-bins", str(BINS), "--save-tensors", "tensors",
                  "--out", str(out), *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp / "tensors" / "index.json").read_text())
    return tmp, load_report(out), index


def test_saved_tensors_equal_plain_onnxruntime_tensors(saved_run):
    tmp, report, index = saved_run
    x = np.load(tmp / "eval.npz")["x"]
    entries = index["tensors"]
    assert index["samples"] == 3 and len(entries) == len(report["layers"]) + len(report["outputs"])
    f_sess = _session(report["models"]["float"]["path"], [e["name"] for e in entries])
    q_sess = _session(report["models"]["int8"]["path"], [e["int8_name"] for e in entries])
    for entry in entries:
        assert entry["complete"], entry["name"]
        f = np.stack([f_sess.run([entry["name"]], {"x": s})[0] for s in x])
        q = np.stack([q_sess.run([entry["int8_name"]], {"x": s})[0] for s in x])
        if entry["dequantized"]:
            qp = entry["qparams"]
            q = (q.astype(np.float32) - np.float32(qp["zero_point"][0])) * np.float32(qp["scale"][0])
        saved_f, saved_q = np.load(tmp / "tensors" / entry["float"]), np.load(tmp / "tensors" / entry["int8"])
        assert saved_f.shape == f.shape and saved_q.dtype == q.dtype
        np.testing.assert_allclose(saved_f, f, rtol=1e-6, atol=1e-7, err_msg=entry["name"])
        np.testing.assert_array_equal(saved_q, q, err_msg=entry["name"])


def _numpy_histogram(x: np.ndarray, lo: float, hi: float) -> list[int]:
    x = x.astype(np.float64).ravel()
    inside, _ = np.histogram(x, bins=np.linspace(lo, hi, BINS + 1))
    return [int(np.sum(x < lo)), *map(int, inside), int(np.sum(x > hi))]


def test_histograms_equal_numpy_histogram_of_the_same_tensors(saved_run):
    tmp, report, index = saved_run
    files = {e["name"]: e for e in index["tensors"]}
    checked = 0
    for layer in report["layers"]:
        hist = layer.get("histogram")
        if hist is None:
            continue
        entry = files[layer["name"]]
        lo, hi = hist["range"]
        assert (lo, hi) == (layer["quant_min"], layer["quant_max"])
        assert hist["float"] == _numpy_histogram(np.load(tmp / "tensors" / entry["float"]), lo, hi), layer["name"]
        assert hist["int8"] == _numpy_histogram(np.load(tmp / "tensors" / entry["int8"]), lo, hi), layer["name"]
        checked += 1
    relu = next(layer for layer in report["layers"] if layer["name"] == "relu1")
    assert relu["histogram"]["range"][0] == 0.0 and relu["histogram"]["float"][1] > 0  # zeros land in bin 1
    assert checked >= 4


def test_capture_reports_its_worker_peak_and_phases(saved_run):
    _, report, _ = saved_run
    cap = report["capture"]
    assert report["settings"]["histogram_bins"] == BINS
    assert 20 < cap["peak_mb"] < 2000 and cap["fidelity_max_abs_diff"] == 0.0
    assert {"reference", "load", "infer", "reduce", "save"} <= set(cap["phases_s"])


_BENCH_MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"


def _deep_pair(tmp: Path, blocks: int, size: int) -> tuple[Path, Path, np.ndarray]:
    spec = importlib.util.spec_from_file_location("benchmark_models_capture", _BENCH_MODELS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        model = module.deep_model(blocks, size=size)
    finally:
        sys.modules.pop(spec.name, None)
    float_path, int8_path = tmp / "deep.onnx", tmp / "deep.int8.onnx"
    onnx.save(model, float_path)
    x = np.random.default_rng(2).normal(size=(1, 1, 3, size, size)).astype(np.float32)
    quantize_onnx(float_path, int8_path, {"x": x})
    return float_path, int8_path, x


@pytest.mark.slow
def test_a_deep_model_fits_a_hard_memory_limit_only_within_the_budget(tmp_path):
    # 24 blocks at 256x256: over 700 MB of float and int8 tensors per sample. The worker's address
    # space is capped at 900 MB, of which Python, numpy and the runtime reserve about 600:
    # capturing everything at once cannot fit; 128 MB passes do.
    float_path, int8_path, x = _deep_pair(tmp_path, blocks=24, size=256)
    pairs = matching.match(onnx.load(str(float_path)), onnx.load(str(int8_path))).pairs()
    assert sum(p.nbytes for p in pairs) > 700 * 2**20
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"), memory_limit_mb=900)
    client = AgentClient(transport.start(), timeout_s=120)
    try:
        client.hello()
        refs = client.ensure_model(float_path, "onnx"), client.ensure_model(int8_path, "onnx")

        def capture(budget_mb: int):
            req = CaptureRequest(float_model=refs[0], int8_model=refs[1], pairs=pairs,
                                 runner=OrtRunnerConfig(threads=2), budget_bytes=budget_mb * 2**20, histogram_bins=8)
            return client.capture(req, {"x": x})

        with pytest.raises(AgentError) as err:
            capture(4096)
        assert err.value.info.code == "out_of_memory", err.value.info
        reply = capture(128)
        assert len(reply.groups) > 4 and sorted(i for g in reply.groups for i in g) == list(range(len(pairs)))
        assert all(s.error is None and s.count > 0 for s in reply.stats)
        assert reply.peak_mb < 600 and reply.fidelity_max_abs_diff == 0.0
        auto = capture(0)  # the agent's choice: a quarter of the emulated 900 MB, fewer passes, same figures
        assert auto.budget_bytes == 225 * 2**20 and 1 < len(auto.groups) < len(reply.groups)
        # within float rounding: which tensors a pass exposes changes how ONNX Runtime fuses the float graph
        assert [s.sum_sq_err for s in auto.stats] == pytest.approx([s.sum_sq_err for s in reply.stats], rel=1e-3)
    finally:
        client.close()
        transport.stop()
