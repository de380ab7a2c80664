"""The ``evaluate`` job end to end: real local agent, real ZeroMQ, real ONNX Runtime; every figure is
recomputed here with plain onnxruntime sessions and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import build_convnet
from plain_ort import session
from qbench.host.evaluator import Evaluator
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.transport.local import LocalTransport
from qbench.protocols.messages import OrtRunnerConfig


def _plain(path, x: np.ndarray) -> np.ndarray:
    s = session(path)
    return np.stack([s.run(["probs"], {"x": sample})[0] for sample in x]).astype(np.float64)


def test_evaluate_matches_plain_onnxruntime(tmp_path, agent_cache):
    float_path = build_convnet(tmp_path / "convnet.onnx")
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32)}
    x = rng.standard_normal((3, 1, 3, 16, 16)).astype(np.float32)
    candidates = [quantize_onnx(float_path, tmp_path / f"{m}.onnx", calib, method=m) for m in ("minmax", "percentile")]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    transport = LocalTransport(cache_dir=str(agent_cache / "agent-cache"))
    with Evaluator(transport, float_path, {"x": x}, OrtRunnerConfig()) as evaluator:
        figures = evaluator.evaluate([*candidates, float_path, broken])
    f = _plain(float_path, x)
    for path, got in zip(candidates, figures):
        q = _plain(path, x)
        mse = np.mean((f - q) ** 2)
        (out,) = got.outputs
        assert out["name"] == "probs" and out["count"] == f.size
        assert out["mse"] == pytest.approx(mse, rel=1e-6)
        assert out["peak"] == pytest.approx(np.max(np.abs(f)), rel=1e-7)
        assert got.psnr_db == pytest.approx(10 * math.log10(np.max(np.abs(f)) ** 2 / mse), abs=1e-4)
        assert got.sqnr_db == pytest.approx(10 * math.log10(np.sum(f ** 2) / np.sum((f - q) ** 2)), abs=1e-4)
        assert 0 < got.psnr_db < 200
    assert figures[2].psnr_db == math.inf and figures[2].outputs[0]["mse"] == 0  # the float model itself: exact
    assert figures[3].psnr_db is None and figures[3].error  # a broken candidate costs only its own figures
