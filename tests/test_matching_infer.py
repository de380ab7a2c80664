"""Shape inference without the weights' values, and models parsed once per file version (compare/matching.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import IR_VERSION, build_convnet
from qbench.host.compare import matching


def _reshaping_model() -> onnx.ModelProto:
    """Conv (a 1728-element weight) -> Reshape to a constant shape -> MatMul (40960 elements) -> Softmax."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(64, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),  # read by inference: its value decides
        numpy_helper.from_array(rng.normal(size=(64 * 8 * 8, 10)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Reshape", ["relu", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "reshaping", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)


def _types(graph: onnx.GraphProto) -> dict[str, tuple]:
    out = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        tt = vi.type.tensor_type
        out[vi.name] = (tt.elem_type, [d.dim_value for d in tt.shape.dim] if tt.HasField("shape") else None)
    return out


def test_inference_without_weight_values_gives_the_full_inference_types():
    model = _reshaping_model()
    full = onnx.shape_inference.infer_shapes(model).graph  # the weights' values included
    typed = matching.infer(model)
    assert _types(typed) == _types(full)
    assert _types(typed)["flat"] == (TensorProto.FLOAT, [1, 4096])  # the small shape tensor kept its values
    graph = matching._Graph(model, typed)
    assert graph.nbytes("flat") == 4096 * 4 and graph.nbytes("probs") == 10 * 4
    assert graph.inputs == ["x"]
    np.testing.assert_array_equal(graph.constant("fc"), numpy_helper.to_array(model.graph.initializer[2]))
    assert len(model.graph.initializer[0].raw_data) == 1728 * 4  # the caller's model is left whole


def test_a_model_is_parsed_once_per_version_of_its_file(tmp_path):
    path = build_convnet(tmp_path / "convnet.onnx")
    first = matching.load_model(path)
    assert matching.load_model(str(path)) is first
    changed = onnx.load(str(path))
    changed.graph.name = "convnet, saved again under a longer name"
    onnx.save(changed, str(path))
    again = matching.load_model(path)
    assert again is not first and again.graph.name == changed.graph.name
