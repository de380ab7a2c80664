"""Weight error (host/compare/weights.py) against an independent numpy computation.

The independent side reads the integer weights and their scales straight from the int8 model's
initializers (or, for TFLite, recomputes them the way the hand-made int8 model was quantized) and
computes PSNR with numpy; nothing of qbench's dequantization is reused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import tflite_models as tm
from models import build_convnet
from qbench.host.compare.weights import BINS
from qbench.host.formats import FORMATS
from qbench.host.quantize.onnx import quantize_onnx

CONVNET_LAYERS = ["x", "relu1", "relu2", "add", "conv3", "gap", "flat", "probs"]


def _psnr(f: np.ndarray, d: np.ndarray) -> float:
    return 10 * np.log10(np.abs(f).max() ** 2 / np.mean((f.astype(np.float64) - d) ** 2))


def _calibration() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(3).normal(size=(6, 1, 3, 16, 16)).astype(np.float32)}


def _dequantized(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = -1
    return (q.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape).astype(np.float64)


def _expected(float_w: np.ndarray, q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int):
    """(tensor PSNR, channel PSNRs along ``axis``) computed independently."""
    d = _dequantized(q, scale, zero, axis)
    channels = [_psnr(np.take(float_w, c, axis=axis), np.take(d, c, axis=axis)) for c in range(q.shape[axis])]
    return _psnr(float_w, d), channels


def _counts(values: np.ndarray, lo: float, hi: float) -> list[int]:
    """[below lo, np.histogram over BINS equal bins of [lo, hi], above hi]."""
    v = values.astype(np.float64).ravel()
    inside = np.histogram(v, bins=np.linspace(lo, hi, BINS + 1))[0]
    return [int((v < lo).sum()), *inside.tolist(), int((v > hi).sum())]


def _check(entry: dict, float_w, q, scale, zero, axis: int) -> None:
    psnr, channels = _expected(float_w, q, scale, zero, axis)
    assert entry["psnr_db"] == pytest.approx(psnr, abs=1e-3)
    assert entry["channel_psnr_db"] == pytest.approx(channels, abs=1e-3)
    assert entry["worst_channel"] == int(np.argmin(channels))
    hist = entry["histogram"]
    assert len(hist["float"]) == len(hist["int8"]) == BINS + 2
    assert sum(hist["float"]) == sum(hist["int8"]) == float_w.size
    assert hist["int8"][0] == hist["int8"][-1] == 0  # dequantized values never leave the int8 range
    lo, hi = hist["range"]
    assert lo <= float(np.min(float_w)) and hi >= float(np.max(float_w))  # min/max calibrated: no clipping
    assert hist["float"] == _counts(float_w, lo, hi)
    assert hist["int8"] == _counts(_dequantized(q, scale, zero, axis), lo, hi)


@pytest.mark.parametrize("per_channel", [True, False])
def test_qdq_weights_match_numpy(tmp_path, per_channel):
    model = build_convnet(tmp_path / "convnet.onnx")
    int8 = quantize_onnx(model, tmp_path / "int8.onnx", _calibration(), per_channel=per_channel)
    entries, unmatched = FORMATS["onnx"].weight_table(model, int8).for_layers(CONVNET_LAYERS)
    assert unmatched == []
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}
    ints = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer}
    by_name = {e["name"]: e for e in entries}
    assert sorted(by_name) == ["w1_quantized", "w2_quantized", "w3_quantized"]  # int32 biases left out
    # conv1's Relu was folded into the quantized conv: its weight reaches the layer relu1
    assert [by_name[n]["layer"] for n in sorted(by_name)] == ["relu1", "relu2", "conv3"]
    for n, entry in by_name.items():
        w = n.removesuffix("_quantized")
        assert entry["axis"] == (0 if per_channel else None) and entry["channel_axis"] == 0
        assert entry["op_type"] == "Conv"
        _check(entry, floats[w], ints[n], ints[f"{w}_scale"], ints[f"{w}_zero_point"], 0)


def test_qoperator_weights_match_numpy(tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from qbench.host.quantize.onnx import SampleReader

    model = build_convnet(tmp_path / "convnet.onnx")
    int8 = tmp_path / "qop.onnx"
    quantize_static(str(model), str(int8), SampleReader(_calibration()), quant_format=QuantFormat.QOperator,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    graph = onnx.load(str(int8)).graph
    assert {n.op_type for n in graph.node} >= {"QLinearConv"}
    ints = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}
    entries, unmatched = FORMATS["onnx"].weight_table(model, int8).for_layers(["conv1", "conv2", "conv3"])
    assert unmatched == [] and len(entries) == 3
    for node in (n for n in graph.node if n.op_type == "QLinearConv"):
        entry = next(e for e in entries if e["name"] == node.input[3])
        float_w = floats[node.name.removesuffix("_quant").replace("conv", "w")]
        assert entry["layer"] == node.name.removesuffix("_quant")
        _check(entry, float_w, ints[node.input[3]], ints[node.input[4]], ints[node.input[5]], 0)


def test_tflite_weights_match_numpy(tmp_path):
    paths = tm.write_models(tmp_path)
    entries, unmatched = FORMATS["tflite"].weight_table(paths["float"], paths["int8"]).for_layers(tm.ACTIVATIONS)
    assert unmatched == []
    by_name = {e["name"]: e for e in entries}
    assert sorted(by_name) == ["conv1/weights", "dw/weights", "fc/weights"]
    assert by_name["conv1/weights"]["layer"] == "conv1"  # renamed in the int8 model: found by position
    assert by_name["fc/weights"]["layer"] == "logits"
    w = tm.convnet_weights()
    for name, axis, per_channel in (("conv1/weights", 0, True), ("dw/weights", 3, True), ("fc/weights", 0, False)):
        f = w[name]
        if per_channel:
            q, scale = tm._per_channel(f, axis)
        else:
            scale = np.float32(np.abs(f).max() / 127.0)
            q = np.clip(np.round(f / scale), -127, 127).astype(np.int8)
        entry = by_name[name]
        assert entry["axis"] == (axis if per_channel else None) and entry["channel_axis"] == axis
        _check(entry, f, q, np.atleast_1d(scale), np.zeros(np.size(scale)), axis)


def test_weight_without_float_counterpart_is_listed(tmp_path):
    model = build_convnet(tmp_path / "convnet.onnx")
    int8 = quantize_onnx(model, tmp_path / "int8.onnx", _calibration())
    other = onnx.load(str(model))
    for node in other.graph.node:
        if node.name == "conv2":
            node.name, node.input[1] = "renamed", "w2_other"
    next(t for t in other.graph.initializer if t.name == "w2").name = "w2_other"
    onnx.save(other, str(tmp_path / "other.onnx"))
    entries, unmatched = FORMATS["onnx"].weight_table(tmp_path / "other.onnx", int8).for_layers(CONVNET_LAYERS)
    assert [e["name"] for e in entries] == ["w1_quantized", "w3_quantized"]
    assert unmatched == [{"name": "w2_quantized", "reason": "no float weight of the same node or name"}]


def test_non_finite_float_weight_is_listed_not_computed(tmp_path):
    model = build_convnet(tmp_path / "convnet.onnx")
    int8 = quantize_onnx(model, tmp_path / "int8.onnx", _calibration())
    broken = onnx.load(str(model))
    w3 = next(t for t in broken.graph.initializer if t.name == "w3")
    values = numpy_helper.to_array(w3).copy()
    values[0, 0, 0, 0] = np.nan
    w3.CopyFrom(numpy_helper.from_array(values, "w3"))
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    entries, unmatched = FORMATS["onnx"].weight_table(tmp_path / "broken.onnx", int8).for_layers(CONVNET_LAYERS)
    assert [e["name"] for e in entries] == ["w1_quantized", "w2_quantized"]
    assert unmatched == [{"name": "w3_quantized", "reason": "the float weight holds NaN or infinity"}]


def test_dead_channels_do_not_score(tmp_path):
    """A channel at 1e-9 of the others rounds to 0 under a per-tensor scale: harmless, so not the worst channel."""
    from qbench.host.compare.sensitivity import rank_sensitive
    from qbench.host.compare.weights import QuantizedWeight, weight_entry
    from qbench.protocols.messages import QParams

    rng = np.random.default_rng(0)
    w = rng.normal(scale=0.3, size=(4, 3, 3, 3)).astype(np.float32)
    w[2] *= 1e-9
    scale = float(np.abs(w).max()) / 127
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    assert not q[2].any()  # quantized to 0
    entry = weight_entry(QuantizedWeight("w", "Conv", w, q, QParams([scale], [0]), 0, ("conv",)))
    psnr, channels = _expected(w, q, np.array([scale]), np.array([0]), 0)
    assert channels[2] < 10  # against its own peak, a few dB
    assert entry["dead_channels"] == [2] and entry["channel_psnr_db"][2] is None
    live = [c for i, c in enumerate(channels) if i != 2]
    assert entry["worst_channel"] == [0, 1, 3][int(np.argmin(live))]
    assert entry["channel_psnr_db"][:2] == pytest.approx(channels[:2], abs=1e-3)
    layer = {"name": "conv", "op_type": "Conv", "parents": [], "sqnr_db": 40.0, "local_sqnr_db": 45.0}
    assert rank_sensitive([layer], [{**entry, "layer": "conv"}]) == []  # live channels are all above 40 dB
