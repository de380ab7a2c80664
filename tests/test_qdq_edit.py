"""QDQ graph edits (qbench.host.quantize.qdq_edit) checked with plain ONNX Runtime sessions and numpy.

The model: x -> conv1 -> relu1 (dropped by the min/max quantizer: its clamp is the range) -> conv2 -> y.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from plain_ort import session
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.quantize.qdq_edit import QdqGraph


def _build(path):
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.4).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.4).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
             helper.make_node("Conv", ["relu1", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "edit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qdq-edit")
    float_path = _build(tmp / "float.onnx")
    rng = np.random.default_rng(2)
    calib = {"x": rng.standard_normal((8, 1, 3, 8, 8)).astype(np.float32)}
    int8 = quantize_onnx(float_path, tmp / "int8.onnx", calib, method="minmax")
    x = rng.standard_normal((4, 1, 3, 8, 8)).astype(np.float32)
    return tmp, float_path, int8, x


def _run(path, x, names=("y",)):
    s = session(path, [n for n in names if n != "y"])
    return [np.stack([s.run([n], {"x": sample})[0] for sample in x]) for n in names]


def test_the_index_names_float_tensors_and_ops(models):
    _, float_path, int8, _ = models
    graph = QdqGraph(int8, float_path)
    assert set(graph.pairs) == {"x", "relu1", "y"}  # the Relu was dropped: its output carries conv1's pair
    assert [op.name for op in graph.ops] == ["conv1", "conv2"]
    assert graph.ops[0].writes == ["relu1"] and graph.ops[1].reads == ["relu1"] and graph.ops[1].writes == ["y"]
    assert graph.ops[0].weights and graph.ops[1].weights


def test_a_float_tensor_really_runs_float(models):
    tmp, float_path, int8, x = models
    graph = QdqGraph(int8, float_path)
    edited = graph.write(tmp / "relu1-float.onnx", float_tensors=["relu1"])
    nodes = onnx.load(str(edited)).graph.node
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "relu1" for n in nodes)
    assert [n.op_type for n in nodes if n.name == "relu1"] == ["Relu"]  # the dropped clamp is back
    (relu,) = _run(edited, x, ["relu1"])
    (scale,) = [numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer if t.name == "relu1_scale"]
    steps = relu[relu > 0] / scale
    assert relu.min() >= 0 and np.mean(np.abs(steps - np.round(steps)) > 1e-3) > 0.9  # not on the int8 grid
    # every pair removed and every weight float: the float model itself, to the last bit
    exact = graph.write(tmp / "all-float.onnx", float_tensors=graph.pairs, float_weights=["conv1", "conv2"])
    np.testing.assert_array_equal(_run(exact, x)[0], _run(float_path, x)[0])


def test_an_int16_pair_runs_int16_and_improves_the_error(models):
    tmp, float_path, int8, x = models
    graph = QdqGraph(int8, float_path)
    edited = graph.write(tmp / "relu1-int16.onnx", int16_tensors=["relu1"])
    model = onnx.load(str(edited))
    (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "relu1"]
    assert q.domain == "com.microsoft"  # opset 13: ONNX Runtime's own int16 Q/DQ
    (quantized,) = _run(edited, x, [q.output[0]])
    assert quantized.dtype == np.int16 and np.abs(quantized.astype(np.int32)).max() > 127
    (scale8,) = [numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer if t.name == "relu1_scale"]
    (scale16,) = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name == q.input[1]]
    # the Relu output is asymmetric (zero point -128): the same calibrated range over 65536 steps, 257x finer
    assert scale16 == pytest.approx(scale8 * 255 / 65535, rel=1e-6)
    # with every other pair and every weight in float, relu1's own quantization is the only error left
    rest = {"float_tensors": ["x", "y"], "float_weights": ["conv1", "conv2"]}
    only8 = graph.write(tmp / "only-relu1-int8.onnx", **rest)
    only16 = graph.write(tmp / "only-relu1-int16.onnx", int16_tensors=["relu1"], **rest)
    f = _run(float_path, x)[0].astype(np.float64)
    err8, err16 = (np.mean((_run(path, x)[0] - f) ** 2) for path in (only8, only16))
    assert 0 < err16 < err8 / 1000


def test_another_calibrations_range_replaces_a_pairs_own(models, tmp_path):
    tmp, float_path, int8, x = models
    calib = {"x": np.random.default_rng(2).standard_normal((8, 1, 3, 8, 8)).astype(np.float32)}
    other = QdqGraph(quantize_onnx(float_path, tmp_path / "percentile.onnx", calib, method="percentile"), float_path)
    graph = QdqGraph(int8, float_path)
    scale, zero_point = other.ranges()["relu1"]
    assert scale != graph.ranges()["relu1"][0]
    edited = graph.write(tmp_path / "relu1-percentile.onnx", ranges={"relu1": (scale, zero_point)})
    assert QdqGraph(edited, float_path).ranges()["relu1"] == (scale, zero_point)
    assert QdqGraph(edited, float_path).ranges()["x"] == graph.ranges()["x"]  # the other pairs keep theirs
    (q_out,) = _run(edited, x, [n.output[0] for n in onnx.load(str(edited)).graph.node
                                if n.op_type == "QuantizeLinear" and n.input[0] == "relu1"])
    values = (np.unique(q_out).astype(np.float64) - int(zero_point)) * float(scale)  # on the new grid
    top = np.iinfo(np.asarray(zero_point).dtype).max  # activations are stored as uint8 (int8 + 128)
    assert values.max() <= (top - int(zero_point)) * float(scale) + 1e-6
    np.testing.assert_allclose(values / float(scale), np.round(values / float(scale)), atol=1e-6)


def _build_with_branch(path):
    """x -> fc1 -> h; If (sum(h) > 0): then h * gain, else relu(h) -> fc2 -> y. ``gain`` is an initializer only
    the then-branch reads, and both branches read ``h`` from the enclosing graph (as openwakeword's heads do)."""
    rng = np.random.default_rng(3)
    then_branch = helper.make_graph([helper.make_node("Mul", ["h", "gain"], ["then_out"], name="then_mul")],
                                    "then_branch", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 8])])
    else_branch = helper.make_graph([helper.make_node("Relu", ["h"], ["else_out"], name="else_relu")],
                                    "else_branch", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 8])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("ReduceSum", ["h"], ["total"], name="sum", keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"], name="is_positive"),
             helper.make_node("If", ["positive"], ["branch"], name="branch", then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("MatMul", ["branch", "w2"], ["y"], name="fc2")]
    inits = [numpy_helper.from_array((rng.standard_normal((16, 8)) * 0.4).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.4).astype(np.float32), "w2"),
             numpy_helper.from_array(np.full(8, 0.5, np.float32), "gain"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    graph = helper.make_graph(nodes, "branch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_edits_keep_what_if_branches_read_from_the_enclosing_graph(tmp_path):
    float_path = _build_with_branch(tmp_path / "float.onnx")
    rng = np.random.default_rng(4)
    int8 = quantize_onnx(float_path, tmp_path / "int8.onnx", {"x": rng.standard_normal((8, 1, 16)).astype(np.float32)})
    graph = QdqGraph(int8, float_path)
    x = rng.standard_normal((6, 1, 16)).astype(np.float32)

    def outputs(path):
        s = session(path)
        return np.concatenate([s.run(None, {"x": sample})[0] for sample in x])

    reference = outputs(float_path)
    every_pair = graph.write(tmp_path / "all.onnx", float_tensors=list(graph.pairs),
                             float_weights=[op.name for op in graph.ops if op.weights])
    # the branch's own initializer survives, and with every pair and weight float the model is the float one
    assert "gain" in {t.name for t in onnx.load(str(every_pair)).graph.initializer}
    np.testing.assert_allclose(outputs(every_pair), reference, rtol=1e-5, atol=1e-5)
    for tensor in graph.pairs:  # each edit alone loads and runs
        assert outputs(graph.write(tmp_path / "one.onnx", float_tensors=[tensor])).shape == reference.shape
