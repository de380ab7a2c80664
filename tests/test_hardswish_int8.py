"""HardSwish and squeeze-excitation gates run as int8 kernels; excluded convolutions stay float in ONNX Runtime.

Known answers: the graph ONNX Runtime (CPU provider, default optimization level) saves after optimizing
the int8 model, and the outputs of plain ONNX Runtime sessions. The net is built in
tests/hardswish_models.py (PP-LCNet's pattern: convolution, HardSwish, SE block).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hardswish_models import CONVS, GATES, build_hardswish_se, calibration
from plain_ort import session
from qbench.host.quantize.hard_sigmoid import restore_gates
from qbench.host.quantize.kernels import int8_kernels
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.quantize.prepare import prepare_float
from qbench.host.quantize.qdq_edit import QdqGraph

FLOAT_ELEMENTWISE = {"HardSigmoid", "Mul", "Add", "HardSwish", "Clip"}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardswish")
    prepared = prepare_float(build_hardswish_se(tmp / "net.onnx"), {}, tmp)
    int8 = quantize_onnx(prepared.path, tmp / "net.int8.onnx", calibration())
    return tmp, prepared.path, int8


def _optimized(path, tmp) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(Path(tmp) / (Path(path).stem + ".optimized.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def _run(path, x) -> np.ndarray:
    s = session(path)
    return np.stack([s.run(None, {"x": sample})[0] for sample in x])


def test_no_float_gate_or_product_between_the_int8_convolutions(net):
    tmp, _, int8 = net
    ops = collections.Counter(n.op_type for n in _optimized(int8, tmp).graph.node)
    assert ops["QLinearConv"] == len(CONVS)
    assert ops["QLinearAdd"] == GATES and ops["QLinearMul"] == GATES
    assert not FLOAT_ELEMENTWISE & set(ops), ops
    # DequantizeLinear/QuantizeLinear only at the model's float input and output
    assert ops["QuantizeLinear"] <= 1 and ops["DequantizeLinear"] <= 1, ops


def test_the_quantizers_own_graph_keeps_float_hardsigmoid_gates(net):
    """Without the rewrite (the graph restored from the float model) ONNX Runtime runs each gate in float."""
    tmp, prepared, int8 = net
    restored = onnx.load(str(int8))
    assert restore_gates(restored, onnx.load(str(prepared))) == GATES
    onnx.save(restored, str(tmp / "restored.onnx"))
    ops = collections.Counter(n.op_type for n in _optimized(tmp / "restored.onnx", tmp).graph.node)
    assert ops["HardSigmoid"] == GATES and "QLinearAdd" not in ops


def test_the_rewritten_gates_give_the_quantizers_levels(net):
    tmp, prepared, int8 = net
    restored = onnx.load(str(int8))
    restore_gates(restored, onnx.load(str(prepared)))
    onnx.save(restored, str(tmp / "restored.onnx"))
    x = calibration(16, seed=7)["x"]
    fast, plain, ref = _run(int8, x), _run(tmp / "restored.onnx", x), _run(prepared, x)
    step = np.abs(ref).max() / 127  # about one output level
    assert np.abs(fast - plain).max() <= step
    psnr = lambda q: 10 * np.log10(np.abs(ref).max() ** 2 / np.mean((q - ref) ** 2))  # noqa: E731
    assert abs(psnr(fast) - psnr(plain)) < 0.5 and psnr(fast) > 25


def test_a_gate_whose_range_does_not_clamp_stays_a_hardsigmoid(net, tmp_path):
    """A range below 0 would let the Add's negative values through: that gate keeps its HardSigmoid."""
    _, prepared, _ = net
    gate = next(n.output[0] for n in onnx.load(str(prepared)).graph.node if n.op_type == "HardSigmoid")
    overrides = {gate: [{"rmin": np.array(-1.0, np.float32), "rmax": np.array(1.0, np.float32)}]}
    int8 = quantize_onnx(prepared, tmp_path / "override.int8.onnx", calibration(), tensor_overrides=overrides)
    ops = collections.Counter(n.op_type for n in _optimized(int8, tmp_path).graph.node)
    assert ops["HardSigmoid"] == 1 and ops["QLinearAdd"] == GATES - 1


def test_edited_trials_restore_the_gates_and_rewrite_them(net, tmp_path):
    tmp, prepared, int8 = net
    graph = QdqGraph(int8, prepared)
    assert sum(op.op_type == "HardSigmoid" for op in graph.ops) == GATES
    x = calibration(4, seed=3)["x"]
    same = graph.write(tmp_path / "same.onnx")
    np.testing.assert_array_equal(_run(same, x), _run(int8, x))
    # every pair removed and every weight float: the float model's values, which a misread second
    # DequantizeLinear (or a gate left without its clamp) would spoil
    all_float = graph.write(tmp_path / "float.onnx", float_tensors=list(graph.pairs),
                            float_weights=[op.name for op in graph.ops if op.weights])
    np.testing.assert_allclose(_run(all_float, x), _run(prepared, x), rtol=1e-4, atol=1e-4)


def _conv_kernels(path) -> dict[str, bool]:
    return {n["name"]: n["int8"] for n in int8_kernels(path)["nodes"] if n["op_type"] == "Conv"}


def test_an_excluded_convolution_stays_float_in_onnx_runtime(net, tmp_path):
    _, prepared, _ = net
    int8 = quantize_onnx(prepared, tmp_path / "excluded.int8.onnx", calibration(), nodes_to_exclude=["dw"])
    kernels = _conv_kernels(int8)
    assert kernels.pop("dw") is False
    assert all(kernels.values()), kernels


def test_an_excluded_convolution_without_the_fix_runs_as_qlinearconv(net, tmp_path):
    """ONNX Runtime's WeightBiasQuantization takes the excluded conv when its bias is an initializer."""
    _, prepared, _ = net
    int8 = quantize_onnx(prepared, tmp_path / "excluded.int8.onnx", calibration(), nodes_to_exclude=["dw"])
    model = onnx.load(str(int8))
    producer = {o: n for n in model.graph.node for o in n.output}
    dw = next(n for n in model.graph.node if n.name == "dw")
    bias_dq = producer[dw.input[2]]
    levels, scale = (onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in bias_dq.input[:2])
    model.graph.initializer.append(onnx.numpy_helper.from_array((levels * scale).astype(np.float32), "dw_bias_float"))
    dw.input[2] = "dw_bias_float"
    model.graph.node.remove(bias_dq)
    onnx.save(model, str(tmp_path / "unfixed.onnx"))
    assert _conv_kernels(tmp_path / "unfixed.onnx")["dw"] is True


def test_a_trials_float_weights_stay_float_in_onnx_runtime(net, tmp_path):
    _, prepared, int8 = net
    trial = QdqGraph(int8, prepared).write(tmp_path / "trial.onnx", float_weights=["pw"])
    kernels = _conv_kernels(trial)
    assert kernels.pop("pw") is False
    assert all(kernels.values()), kernels
