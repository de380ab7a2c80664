"""The benchmark model builders produce valid, runnable models of the advertised size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"


@pytest.fixture(scope="module")
def models():
    # Loaded by path: `benchmarks` is a folder of scripts, not an installed package.
    spec = importlib.util.spec_from_file_location("benchmark_models", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_detection_model_has_600_to_700_nodes_and_runs(models):
    model = models.detection_model(size=128)
    assert 600 <= len(model.graph.node) <= 700
    assert model.ir_version <= 10
    scores, boxes = _run(model, models.random_samples(model, 1, seed=0)[0])
    anchors = sum((128 // s) ** 2 for s in (8, 16, 32, 64, 128))
    assert scores.shape == (1, anchors, 80) and boxes.shape == (1, anchors, 4)
    assert np.isfinite(scores).all() and np.isfinite(boxes).all()
    assert scores.std() > 1e-3  # random weights must not collapse the signal


def test_detection_model_rejects_sizes_p7_cannot_upsample(models):
    with pytest.raises(ValueError, match="multiple of 128"):
        models.detection_model(size=100)


def test_deep_model_grows_by_four_nodes_per_block(models):
    small, large = models.deep_model(10, size=16), models.deep_model(20, size=16)
    assert len(large.graph.node) - len(small.graph.node) == 40
    (y,) = _run(large, models.random_samples(large, 1, seed=0)[0])
    assert y.shape == (1, 32) and np.isfinite(y).all()


def test_samples_round_trip_through_npz(models, tmp_path):
    model = models.tiny_model()
    samples = models.random_samples(model, 3, seed=0)
    loaded = models.load_samples(models.save_samples(samples, tmp_path / "d.npz"))
    assert len(loaded) == 3
    np.testing.assert_array_equal(loaded[2]["x"], samples[2]["x"])
