"""inspect_model: formats told apart by content, inputs and outputs read, every bad file a UserError."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import build_control_flow, build_convnet, build_dynamic_opset11, build_two_inputs_int64
from qbench.host.errors import UserError
from qbench.host.models import InputSpec, inspect_model


def test_convnet_is_described(tmp_path):
    path = build_convnet(tmp_path / "convnet.onnx")
    info = inspect_model(path)
    assert info.format == "onnx"
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.size_bytes == path.stat().st_size
    assert info.inputs == [InputSpec("x", "float32", (1, 3, 16, 16))]
    assert info.outputs == [InputSpec("probs", "float32", (1, 10))]
    assert info.opset == 13
    assert info.ir_version == 8


def test_dynamic_dims_are_symbols(tmp_path):
    info = inspect_model(build_dynamic_opset11(tmp_path / "dyn.onnx"))
    (spec,) = info.inputs
    assert spec.shape == ("N", 3, "H", "W")
    assert not spec.is_static
    assert spec.shape_text() == "[N,3,H,W]"
    assert info.opset == 11


def test_int64_input_and_output(tmp_path):
    info = inspect_model(build_two_inputs_int64(tmp_path / "two.onnx"))
    assert [(s.name, s.dtype, s.shape) for s in info.inputs] == [("x", "float32", (1, 16)), ("mask", "int64", (1, 16))]
    assert [(s.name, s.dtype) for s in info.outputs] == [("probs", "float32"), ("label", "int64")]


def test_control_flow_model_is_described(tmp_path):
    info = inspect_model(build_control_flow(tmp_path / "cf.onnx"))
    assert [s.name for s in info.inputs] == ["x"]
    assert [s.name for s in info.outputs] == ["y"]


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path):
    # IR 3 exporters listed every weight among the graph inputs.
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3), path)
    assert [s.name for s in inspect_model(path).inputs] == ["x"]


def test_input_without_shape_has_unknown_rank(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "norank.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    (spec,) = inspect_model(path).inputs
    assert spec.shape is None and not spec.is_static
    assert spec.shape_text() == "[unknown rank]"


def test_format_comes_from_content_not_extension(tmp_path):
    onnx_named_tflite = tmp_path / "model.tflite"
    onnx_named_tflite.write_bytes(build_convnet(tmp_path / "c.onnx").read_bytes())
    assert inspect_model(onnx_named_tflite).format == "onnx"


def test_tflite_model_is_described(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert (the tflite extra) is not installed")
    from tflite_models import INPUT_SHAPE, float_convnet

    path = tmp_path / "net.bin"  # the extension says nothing; the TFL3 identifier does
    path.write_bytes(float_convnet())
    info = inspect_model(path)
    assert info.format == "tflite"
    assert info.opset is None
    (spec,) = info.inputs
    assert spec.dtype == "float32" and spec.shape == INPUT_SHAPE


def test_truncated_tflite_is_a_user_error(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert (the tflite extra) is not installed")
    from tflite_models import float_convnet

    data = float_convnet()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.tflite"):
        inspect_model(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n", "not an ONNX or TFLite model"),
        (np.random.default_rng(0).bytes(4096), "not an ONNX or TFLite model"),
        (b"\x1c\x00\x00\x00TFL3" + b"\x00" * 8, "TFLite"),
    ],
    ids=["empty", "text", "random", "tflite-header-only"],
)
def test_not_a_model_is_a_user_error(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as caught:
        inspect_model(path)
    assert "model.onnx" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        inspect_model(tmp_path / "absent.onnx")
    with pytest.raises(UserError, match="is a directory"):
        inspect_model(tmp_path)


def test_every_truncation_is_a_user_error(tmp_path):
    data = build_convnet(tmp_path / "full.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    failures = []
    for length in range(1, len(data)):
        cut.write_bytes(data[:length])
        try:
            inspect_model(cut)
        except UserError:
            continue
        failures.append(length)
    assert failures == []


def test_model_without_opset_is_a_user_error(tmp_path):
    model = onnx.load(build_convnet(tmp_path / "c.onnx"))
    del model.opset_import[:]
    path = tmp_path / "noopset.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UserError, match="opset"):
        inspect_model(path)


def test_missing_external_weights_is_a_user_error(tmp_path):
    model = onnx.load(build_convnet(tmp_path / "c.onnx"))
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.weights", size_threshold=0)
    assert inspect_model(path).format == "onnx"
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(UserError, match="ext.weights"):
        inspect_model(path)
