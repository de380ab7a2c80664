"""Matching rules on graphs made by onnxruntime's own quantizer, QDQ and QOperator formats."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from cli import load_report, qbench
from models import build_convnet, build_two_inputs_int64
from qbench.host.compare.matching import match
from qbench.host.errors import UserError


class _Reader(CalibrationDataReader):
    def __init__(self, n=8):
        rng = np.random.default_rng(3)
        self.items = iter([{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.items, None)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("match")
    float_path = build_convnet(tmp / "f.onnx")
    for fmt, name in ((QuantFormat.QDQ, "qdq.onnx"), (QuantFormat.QOperator, "qop.onnx")):
        quantize_static(str(float_path), str(tmp / name), _Reader(), quant_format=fmt,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return tmp


def test_qdq_rule_pairs_the_int8_quantize_output(pair):
    m = match(onnx.load(str(pair / "f.onnx")), onnx.load(str(pair / "qdq.onnx")))
    layers = {x.name: x for x in m.layers}
    assert layers["relu1"].rule == "qdq" and layers["relu1"].pair.int8_name == "relu1_QuantizeLinear_Output"
    assert layers["probs"].pair.int8_name == "probs_QuantizeLinear_Output"  # via probs_QuantizeLinear_Input
    assert layers["relu1"].pair.qparams.dtype == "int8" and len(layers["relu1"].pair.qparams.scale) == 1
    assert layers["add"].parents == ["relu1", "relu2"]
    assert {u.name for u in m.unmatched} >= {"conv1"}
    assert [o.name for o in m.outputs] == ["probs"]


def test_qoperator_rule_and_an_end_to_end_run(pair, agent_cache):
    m = match(onnx.load(str(pair / "f.onnx")), onnx.load(str(pair / "qop.onnx")))
    rules = {x.name: x.rule for x in m.layers}
    assert "qoperator" in rules.values(), rules
    rng = np.random.default_rng(5)
    np.savez(pair / "eval.npz", x=rng.normal(size=(2, 1, 3, 16, 16)).astype(np.float32))
    proc = qbench("run", "f.onnx", "--int8", "qop.onnx", "--data", "eval.npz", "--out", "o", "--runs", "2",
                  "--min-seconds", "0", "--quiet", cwd=pair, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(pair / "o")
    qop_layers = [x for x in report["layers"] if x["rule"] == "qoperator"]
    assert qop_layers and all(x["psnr_db"] is not None and x["psnr_db"] > 15 for x in qop_layers)


def test_different_networks_are_refused(pair, tmp_path):
    other = build_two_inputs_int64(tmp_path / "other.onnx")
    with pytest.raises(UserError, match="not the same network"):
        match(onnx.load(str(pair / "f.onnx")), onnx.load(str(other)))
