"""quantize_onnx with onnxruntime's real quantizer: QDQ int8 models that load and stay close."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import build_control_flow, build_convnet, build_dynamic_opset11, build_two_inputs_int64
from qbench.host.data import random_samples
from qbench.host.errors import UserError
from qbench.host.quantize.compat import ort_max_ir_version
from qbench.host.quantize.onnx import METHODS, quantize_onnx
from qbench.host.quantize.prepare import prepare_float


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("convnet")
    prepared = prepare_float(build_convnet(root / "convnet.onnx"), {}, root)
    return prepared, random_samples(prepared.inputs, 12, seed=3)


def _run(path, samples):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    count = len(next(iter(samples.values())))
    return [session.run(None, {k: np.asarray(v[i]) for k, v in samples.items()}) for i in range(count)]


def _initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _max_error(float_path, int8_path, samples, output=0):
    pairs = zip(_run(float_path, samples), _run(int8_path, samples))
    return max(float(np.abs(f[output] - q[output]).max()) for f, q in pairs)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_close_int8_model(convnet, tmp_path, method):
    prepared, samples = convnet
    out = quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples, method=method)
    model = onnx.load(out)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert model.ir_version <= ort_max_ir_version()
    # Softmax probabilities: int8 rounding moves them by a few thousandths, not tenths.
    assert _max_error(prepared.path, out, samples) < 0.05


def test_weights_are_per_channel_int8(convnet, tmp_path):
    prepared, samples = convnet
    model = onnx.load(quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples))
    weights = _initializers(model)
    dq_w1 = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w1"))
    assert weights[dq_w1.input[0]].dtype == np.int8
    assert weights[dq_w1.input[1]].shape == (8,)  # one scale per output channel of conv1


def test_per_tensor_weights(convnet, tmp_path):
    prepared, samples = convnet
    model = onnx.load(quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples, per_channel=False))
    weights = _initializers(model)
    dq_w1 = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w1"))
    assert weights[dq_w1.input[1]].size == 1


def test_int8_activations_are_stored_as_uint8_with_the_same_values(convnet, tmp_path):
    """int8 and uint8 calibrate the same asymmetric ranges; int8 is stored as uint8 (zero point + 128),
    the type ONNX Runtime's x86 kernels take: same scales, same outputs bit for bit."""
    prepared, samples = convnet
    models = {t: quantize_onnx(prepared.path, tmp_path / f"{t}.onnx", samples, activation_type=t)
              for t in ("int8", "uint8")}
    pairs = {}
    for kind, path in models.items():
        model = onnx.load(path)
        weights = _initializers(model)
        q_x = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
        pairs[kind] = weights[q_x.input[1]], weights[q_x.input[2]]
        dq_w1 = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w1"))
        assert weights[dq_w1.input[0]].dtype == np.int8  # weights stay int8
    assert pairs["int8"][1].dtype == pairs["uint8"][1].dtype == np.uint8
    assert pairs["int8"][0] == pairs["uint8"][0] and pairs["int8"][1] == pairs["uint8"][1]
    for a, b in zip(_run(models["int8"], samples), _run(models["uint8"], samples)):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_excluded_node_keeps_float_weights(convnet, tmp_path):
    prepared, samples = convnet
    model = onnx.load(quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples, nodes_to_exclude=["conv2"]))
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert conv2.input[1] == "w2"  # the float initializer itself, no DequantizeLinear in between
    assert conv1.input[1] != "w1"


def test_tensor_overrides_set_scale_and_zero_point(convnet, tmp_path):
    prepared, samples = convnet
    overrides = {"relu1": [{"scale": np.array(0.05, np.float32), "zero_point": np.array(-128, np.int8)}]}
    model = onnx.load(quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples, tensor_overrides=overrides))
    weights = _initializers(model)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "relu1")
    assert float(weights[q.input[1]]) == pytest.approx(0.05)
    assert int(weights[q.input[2]]) == 0  # int8 -128, stored as uint8 (zero point + 128)


def test_two_inputs_with_int64_mask(tmp_path):
    prepared = prepare_float(build_two_inputs_int64(tmp_path / "two.onnx"), {}, tmp_path)
    samples = random_samples(prepared.inputs, 8, seed=4)
    out = quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples)
    model = onnx.load(out)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "mask" for n in model.graph.node)
    assert _max_error(prepared.path, out, samples) < 0.05
    float_labels = [f[1] for f in _run(prepared.path, samples)]
    int8_labels = [q[1] for q in _run(out, samples)]
    assert sum(np.array_equal(a, b) for a, b in zip(float_labels, int8_labels)) >= 6


def test_dynamic_opset11_after_preparation(tmp_path):
    prepared = prepare_float(build_dynamic_opset11(tmp_path / "dyn.onnx"), {"x": [2, 3, 8, 8]}, tmp_path)
    samples = random_samples(prepared.inputs, 6, seed=5)
    out = quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples)
    assert _max_error(prepared.path, out, samples) < 0.05


def test_control_flow_quantizes_outside_the_if(tmp_path):
    prepared = prepare_float(build_control_flow(tmp_path / "cf.onnx"), {}, tmp_path)
    samples = random_samples(prepared.inputs, 8, seed=6)
    out = quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples)
    model = onnx.load(out)
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    branch_ops = {n.op_type for a in if_node.attribute for n in a.g.node}
    assert "QuantizeLinear" not in branch_ops  # onnxruntime leaves subgraphs in float
    assert any(n.op_type == "DequantizeLinear" and n.input[0].startswith("w1") for n in model.graph.node)
    assert _max_error(prepared.path, out, samples) < 0.1


def test_quantizing_is_quiet_unless_debug(tmp_path, capfd, caplog):
    # An unprepared model makes onnxruntime's quantizer log a "Please consider to run
    # pre-processing" warning through the root logger.
    path = build_convnet(tmp_path / "raw.onnx")
    samples = random_samples([_spec("x", (1, 3, 16, 16))], 2)
    quantize_onnx(path, tmp_path / "quiet.onnx", samples)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name == "root"]
    quantize_onnx(path, tmp_path / "loud.onnx", samples, debug=True)
    assert any("pre-processing" in r.getMessage() for r in caplog.records if r.name == "root")


def _spec(name, shape, dtype="float32"):
    from qbench.host.models import InputSpec

    return InputSpec(name, dtype, shape)


def test_opset_below_13_needs_preparation(tmp_path):
    path = build_dynamic_opset11(tmp_path / "dyn.onnx")
    samples = {"x": np.zeros((2, 1, 3, 4, 4), np.float32)}
    with pytest.raises(UserError, match="per-channel int8 needs opset >= 13"):
        quantize_onnx(path, tmp_path / "int8.onnx", samples)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "kl"}, "calibration method 'kl' is not one of minmax, entropy"),
        ({"activation_type": "int4"}, "activation type 'int4' is not one of int8, uint8"),
    ],
)
def test_bad_options(convnet, tmp_path, kwargs, message):
    prepared, samples = convnet
    with pytest.raises(UserError, match=message):
        quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples, **kwargs)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ({}, "no calibration samples"),
        ({"y": np.zeros((2, 1, 3, 16, 16), np.float32)}, r"missing input\(s\) x; unknown key\(s\) y"),
        ({"x": np.zeros((2, 1, 3, 8, 8), np.float32)}, r"expected shape \(N, 1, 3, 16, 16\)"),
        ({"x": np.zeros((1, 3, 16, 16), np.float32)}, r"expected shape \(N, 1, 3, 16, 16\)"),
        ({"x": np.zeros((0, 1, 3, 16, 16), np.float32)}, "same number"),
        ({"x": np.zeros((2, 1, 3, 16, 16), np.complex64)}, "dtype complex64"),
    ],
    ids=["empty", "wrong-key", "wrong-shape", "no-sample-axis", "no-samples", "complex"],
)
def test_calibration_that_does_not_fit(convnet, tmp_path, samples, message):
    prepared, _ = convnet
    with pytest.raises(UserError, match=message):
        quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples)


def test_inconsistent_sample_counts(tmp_path):
    prepared = prepare_float(build_two_inputs_int64(tmp_path / "two.onnx"), {}, tmp_path)
    samples = {"x": np.zeros((3, 1, 16), np.float32), "mask": np.ones((2, 1, 16), np.int64)}
    with pytest.raises(UserError, match="x: 3, mask: 2"):
        quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples)


def _all_in_if_model(path):
    """Every quantizable op lives inside the If's branches (as in silero-vad's exported model)."""
    def branch(name, op):
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], [f"{name}_mm"], name=f"{name}_mm"),
             helper.make_node(op, [f"{name}_mm"], [f"{name}_out"], name=f"{name}_act")],
            name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 4])],
        )

    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="branch",
                          then_branch=branch("then", "Relu"), else_branch=branch("else", "Sigmoid"))],
        "all_in_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_nothing_to_quantize_names_the_subgraphs(tmp_path, method):
    prepared = prepare_float(_all_in_if_model(tmp_path / "if.onnx"), {}, tmp_path)
    samples = {"x": np.ones((2, 1, 4), np.float32), "flag": np.array([True, False])}
    with pytest.raises(UserError, match="4 of its 5 nodes sit inside If/Loop/Scan bodies"):
        quantize_onnx(prepared.path, tmp_path / "int8.onnx", samples, method=method)


def test_not_a_model(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.onnx"):
        quantize_onnx(path, tmp_path / "int8.onnx", {"x": np.zeros((1, 1), np.float32)})
