"""Pairing float and int8 TFLite tensors, and driving the capture accumulators with the pairs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tflite_models as M

from qbench.agent.capture import PairAccumulator
from qbench.agent.runners.litert import LiteRTRunner
from qbench.host.compare.tflite_matching import match_tflite, read_graph
from qbench.host.errors import UserError
from qbench.host.quantize.tflite import quantize_tflite
from qbench.protocols.messages import CapturePair, LiteRTRunnerConfig

LAYERS = ["conv1", "dw", "add", "pool", "flatten", "logits", "probs"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tflite")
    paths = M.write_models(directory)
    calibration = {"input": M.calibration_samples()}
    paths["aeq_int8"] = quantize_tflite(paths["float_nosig"], directory / "aeq8.tflite", calibration).path
    paths["aeq_int16"] = quantize_tflite(paths["float"], directory / "aeq16.tflite", calibration,
                                         "static_wi8_ai16").path
    paths["mixed"] = quantize_tflite(paths["float"], directory / "mixed.tflite", calibration, keep_float=["dw"]).path
    variant = directory / "sigmoid.tflite"
    variant.write_bytes(M.float_convnet(head="LOGISTIC", probs_name="sigmoid"))
    paths["sigmoid"] = variant
    return paths


def _runner(path: Path, names) -> LiteRTRunner:
    runner = LiteRTRunner(str(path), LiteRTRunnerConfig(delegate="none"), list(names))
    runner.load()
    return runner


def test_quantizer_output_matches_by_name_with_the_runtime_qparams(models):
    m = match_tflite(models["float_nosig"], models["aeq_int8"])
    assert [(l.name, l.rule) for l in m.layers] == [("input", "name")] + [(n, "name") for n in LAYERS]
    assert m.unmatched == []
    runner = _runner(models["aeq_int8"], [])
    for layer in m.layers:
        assert layer.pair.int8_name == layer.name
        assert layer.pair.qparams == runner.qparams(layer.name)  # flatbuffer read == LiteRT's own view
    assert [(o.name, o.pair.int8_name, o.pair.qparams.dtype) for o in m.outputs] == [("probs", "probs", "int8")]
    by_name = {l.name: l for l in m.layers}
    assert by_name["add"].parents == ["conv1", "dw"]
    assert by_name["conv1"].pair.nbytes == 8 * 8 * 4 * 4 + 8 * 8 * 4  # float32 + int8, per sample


def test_int16_activation_pairs(models):
    m = match_tflite(models["float"], models["aeq_int16"])
    assert {l.pair.qparams.dtype for l in m.layers} == {"int16"}
    assert len(m.layers) == 1 + len(LAYERS)


def test_converter_style_boundaries_and_renamed_tensors(models):
    m = match_tflite(models["float"], models["int8"])
    got = {l.name: (l.pair.int8_name, l.rule) for l in m.layers}
    assert got == {
        "input": ("input_int8", "boundary"),  # QUANTIZE of the float model input
        "conv1": (M.RENAMED["conv1"], "position"),
        "dw": ("dw", "name"),
        "add": ("add", "name"),
        "pool": ("pool", "name"),
        "flatten": ("flatten", "name"),
        "logits": (M.RENAMED["logits"], "position"),
        "probs": ("probs_int8", "boundary"),  # the int8 tensor behind the output's DEQUANTIZE
    }
    assert all(l.pair.qparams is not None for l in m.layers)
    assert [l.name for l in m.layers] == ["input", *LAYERS]  # the float graph's order
    (out,) = m.outputs
    assert (out.pair.int8_name, out.pair.qparams) == ("probs", None)  # float on both sides


def test_op_kept_in_float_is_compared_at_its_quantize_boundary(models):
    m = match_tflite(models["float"], models["mixed"])
    dw = next(l for l in m.layers if l.name == "dw")
    assert (dw.rule, dw.pair.int8_name, dw.pair.qparams.dtype) == ("boundary", "dw_quantized", "int8")


def test_unmatched_layer_has_a_reason(models):
    m = match_tflite(models["float"], models["sigmoid"])
    assert [(u.name, u.op_type) for u in m.unmatched] == [("probs", "SOFTMAX")]
    assert "no int8 tensor named 'probs'" in m.unmatched[0].reason
    assert [l.rule for l in m.layers if l.name in LAYERS] == ["float"] * (len(LAYERS) - 1)
    assert m.outputs[0].pair.int8_name == "sigmoid"  # outputs pair by position


def test_different_networks_are_refused(models):
    with pytest.raises(UserError, match="not the same network"):
        match_tflite(models["float"], models["uint8"])


def test_read_graph_sees_ops_and_per_channel_quantization(models):
    g = read_graph(models["int8"])
    assert [op.type for op in g.ops] == ["QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D",
                                         "RESHAPE", "FULLY_CONNECTED", "SOFTMAX", "DEQUANTIZE"]
    weights = next(t for t in g.tensors if t.name == "dw/weights")
    assert weights.constant and weights.qparams.axis == 3 and len(weights.qparams.scale) == M.CHANNELS


def test_not_a_tflite_file(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a TFLite model"):
        read_graph(path)


def test_pairs_drive_the_capture_accumulators(models):
    """Raw int8 values + pair qparams give the same errors as the runner's own dequantization."""
    m = match_tflite(models["float"], models["int8"])
    pairs = m.pairs()
    f = _runner(models["float"], [p.float_name for p in pairs])
    q = _runner(models["int8"], [p.int8_name for p in pairs])
    q_deq = LiteRTRunner(str(models["int8"]), LiteRTRunnerConfig(delegate="none"),
                         [p.int8_name for p in pairs], dequantize=True)
    q_deq.load()
    raw_accs = [PairAccumulator(p) for p in pairs]
    deq_accs = [PairAccumulator(CapturePair(p.float_name, p.int8_name)) for p in pairs]
    for sample in M.calibration_samples(4, seed=3):
        fo, qo, do = f.infer({"input": sample}), q.infer({"input": sample}), q_deq.infer({"input": sample})
        for p, raw, deq in zip(pairs, raw_accs, deq_accs):
            raw.update(fo[p.float_name], qo[p.int8_name])
            deq.update(fo[p.float_name], do[p.int8_name])
    for p, raw, deq in zip(pairs, raw_accs, deq_accs):
        r, d = raw.stats(), deq.stats()
        assert r.error is None and r.count > 0
        assert r.sum_sq_err == pytest.approx(d.sum_sq_err, rel=1e-5, abs=1e-9), p.float_name
        snr = 10 * math.log10(r.sum_sq_float / max(r.sum_sq_err, 1e-30))
        assert snr > 15, (p.float_name, snr)


def test_position_never_takes_a_tensor_named_after_another_float_tensor(models, tmp_path):
    ranges = M.activation_ranges(models["float"].read_bytes(), M.calibration_samples())
    swapped = tmp_path / "swapped.tflite"
    swapped.write_bytes(M.int8_convnet(ranges, rename={"conv1": "dw", "dw": "dw_int8"}))
    m = match_tflite(models["float"], swapped)
    assert [(u.name, u.op_type) for u in m.unmatched] == [("conv1", "CONV_2D")]
    assert "is 'dw'" in m.unmatched[0].reason
