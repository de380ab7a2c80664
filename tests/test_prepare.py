"""prepare_float on real onnx/onnxruntime: shapes fixed, opsets upgraded, nodes named, same numbers."""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import build_control_flow, build_convnet, build_dynamic_opset11, build_two_inputs_int64
from qbench.host.data import sample_shapes
from qbench.host.errors import UserError
from qbench.host.formats.onnx import OnnxFormat
from qbench.host.models import default_opset, inspect_model
from qbench.host.quantize.compat import name_nodes, ort_max_ir_version
from qbench.host.quantize.prepare import PREPARED_NAME, parse_input_shapes, prepare_float
from qbench.host.run_state import RunSettings
from local_cpu import REDUCE_RANGE


def _run(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _assert_same_outputs(original, prepared, feed):
    for before, after in zip(_run(original, feed), _run(prepared, feed)):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


# --- parse_input_shapes -------------------------------------------------------------------------


def test_parse_input_shapes():
    assert parse_input_shapes(["x:1,3,224,224", "mask:1, 16"]) == {"x": [1, 3, 224, 224], "mask": [1, 16]}


def test_parse_keeps_colons_in_names_and_allows_scalars():
    assert parse_input_shapes(["input:0:1,8", "sr:"]) == {"input:0": [1, 8], "sr": []}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x", "expected NAME:D0,D1"),
        (":1,2", "expected NAME:D0,D1"),
        ("x:1,a", "'a' is not an integer"),
        ("x:1,,2", "'' is not an integer"),
        ("x:1,0", "must be positive"),
        ("x:1,-3", "must be positive"),
    ],
)
def test_parse_rejects_malformed(spec, message):
    with pytest.raises(UserError, match=message):
        parse_input_shapes([spec])


def test_parse_rejects_repeated_name():
    with pytest.raises(UserError, match="'x' given twice"):
        parse_input_shapes(["x:1", "x:2"])


# --- prepare_float --------------------------------------------------------------------------------


def test_convnet_prepared_keeps_names_and_numbers(tmp_path):
    original = build_convnet(tmp_path / "convnet.onnx")
    prepared = prepare_float(original, {}, tmp_path / "out")
    assert prepared.path == tmp_path / "out" / PREPARED_NAME
    assert prepared.input_shapes == {"x": [1, 3, 16, 16]}
    assert [(s.name, s.shape) for s in prepared.inputs] == [("x", (1, 3, 16, 16))]
    assert [s.name for s in prepared.outputs] == ["probs"]
    assert "ran onnxruntime's quantization pre-processing" in prepared.notes
    model = onnx.load(prepared.path)
    assert [n.name for n in model.graph.node][:2] == ["conv1", "relu1"]
    assert model.ir_version <= ort_max_ir_version()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32)
    _assert_same_outputs(original, prepared.path, {"x": x})


def test_dynamic_dims_default_to_one_and_say_so(tmp_path):
    original = build_dynamic_opset11(tmp_path / "dyn.onnx")
    prepared = prepare_float(original, {}, tmp_path / "out")
    assert prepared.input_shapes == {"x": [1, 3, 1, 1]}
    note = next(n for n in prepared.notes if "dynamic dims set to 1" in n)
    assert "[N,3,H,W]" in note and "--input-shape x:" in note
    assert inspect_model(prepared.path).inputs[0].shape == (1, 3, 1, 1)


def test_dynamic_dims_come_from_the_data_samples(tmp_path):
    # A newcomer gives --data and --calibration, not --input-shape: their samples' shape decides
    original = build_dynamic_opset11(tmp_path / "dyn.onnx")
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 1, 3, 12, 20), np.float32))
    np.savez(tmp_path / "eval.npz", x=np.zeros((2, 1, 3, 12, 20), np.float32))
    settings = RunSettings(model=original, out_dir=tmp_path / "out", data=tmp_path / "eval.npz",
                           calibration=tmp_path / "calib.npz")
    prepared = OnnxFormat().prepare_float(settings)
    assert prepared.input_shapes == {"x": [1, 3, 12, 20]}
    assert "dynamic dims taken from the data's samples -> [1,3,12,20]" in " ".join(prepared.notes)
    assert inspect_model(prepared.path).inputs[0].shape == (1, 3, 12, 20)


def test_dynamic_dims_come_from_samples_stacked_along_the_batch_dim(tmp_path):
    original = build_dynamic_opset11(tmp_path / "dyn.onnx")  # x: [N,3,H,W]
    np.savez(tmp_path / "eval.npz", x=np.zeros((2, 3, 12, 20), np.float32))
    settings = RunSettings(model=original, out_dir=tmp_path / "out", data=tmp_path / "eval.npz")
    assert OnnxFormat().prepare_float(settings).input_shapes == {"x": [1, 3, 12, 20]}


def test_data_shapes_that_do_not_fit_leave_the_default_and_given_shapes_win(tmp_path):
    original = build_dynamic_opset11(tmp_path / "dyn.onnx")
    wrong_rank = prepare_float(original, {}, tmp_path / "a", data_shapes={"x": (12, 20)})
    assert wrong_rank.input_shapes == {"x": [1, 3, 1, 1]}
    wrong_channels = prepare_float(original, {}, tmp_path / "b", data_shapes={"x": (1, 4, 12, 20)})
    assert wrong_channels.input_shapes == {"x": [1, 3, 1, 1]}
    given = prepare_float(original, {"x": [2, 3, 8, 8]}, tmp_path / "c", data_shapes={"x": (1, 3, 12, 20)})
    assert given.input_shapes == {"x": [2, 3, 8, 8]}


def test_sample_shapes_reads_headers_of_every_npy_version(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((5, 2, 3), np.float32), y=np.zeros((5,), np.int64))
    with zipfile.ZipFile(tmp_path / "b.npz", "w") as archive:  # headers of versions 3.0 and 2.0
        with archive.open("x.npy", "w") as f:  # a.npz's x comes first
            np.lib.format.write_array(f, np.zeros((1, 7), np.float32))
        with archive.open("w.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros((1, 7), np.float32), version=(3, 0))
        with archive.open("z.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros((4, 9), np.float32), version=(2, 0))
    (tmp_path / "c.npz").write_text("not a zip")
    assert sample_shapes(None, tmp_path / "c.npz", tmp_path / "a.npz", tmp_path / "b.npz") == {
        "x": (2, 3), "y": (), "w": (7,), "z": (9,)}


def test_input_shape_fixes_dims_upgrades_opset_and_names_nodes(tmp_path):
    original = build_dynamic_opset11(tmp_path / "dyn.onnx")
    prepared = prepare_float(original, {"x": [2, 3, 8, 8]}, tmp_path / "out")
    assert prepared.input_shapes == {"x": [2, 3, 8, 8]}
    assert not any("dynamic dims" in n for n in prepared.notes)
    assert any("opset 11 upgraded to 13" in n for n in prepared.notes)
    assert any("named 7 unnamed" in n for n in prepared.notes)
    model = onnx.load(prepared.path)
    assert default_opset(model) == 13 and prepared.opset == 13
    assert model.graph.node[0].name == "Conv_0"
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 8, 8]
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8), dtype=np.float32)
    _assert_same_outputs(original, prepared.path, {"x": x})


def test_two_inputs_with_int64(tmp_path):
    original = build_two_inputs_int64(tmp_path / "two.onnx")
    prepared = prepare_float(original, {}, tmp_path / "out")
    assert [(s.name, s.dtype) for s in prepared.inputs] == [("x", "float32"), ("mask", "int64")]
    rng = np.random.default_rng(2)
    feed = {"x": rng.standard_normal((1, 16), dtype=np.float32), "mask": rng.integers(0, 2, (1, 16))}
    _assert_same_outputs(original, prepared.path, feed)


def test_control_flow_subgraphs_survive(tmp_path):
    original = build_control_flow(tmp_path / "cf.onnx")
    prepared = prepare_float(original, {}, tmp_path / "out")
    model = onnx.load(prepared.path)
    assert "If" in {n.op_type for n in model.graph.node}
    for sign in (1.0, -1.0):
        x = np.full((1, 8), sign, dtype=np.float32)
        _assert_same_outputs(original, prepared.path, {"x": x})


def test_unknown_input_name_lists_the_inputs(tmp_path):
    original = build_two_inputs_int64(tmp_path / "two.onnx")
    with pytest.raises(UserError) as caught:
        prepare_float(original, {"y": [1, 16]}, tmp_path / "out")
    message = str(caught.value)
    assert "no input 'y'" in message
    assert "x (rank 2: [1,16])" in message and "mask (rank 2: [1,16])" in message


def test_wrong_rank_is_a_user_error(tmp_path):
    original = build_dynamic_opset11(tmp_path / "dyn.onnx")
    with pytest.raises(UserError, match=r"has rank 4 \[N,3,H,W\], got 3 dims \[1,3,8\]"):
        prepare_float(original, {"x": [1, 3, 8]}, tmp_path / "out")


def test_contradicting_a_fixed_dim_is_a_user_error(tmp_path):
    original = build_dynamic_opset11(tmp_path / "dyn.onnx")
    with pytest.raises(UserError, match="dim 1 of 'x' is fixed at 3"):
        prepare_float(original, {"x": [1, 4, 8, 8]}, tmp_path / "out")


def test_not_a_model_is_a_user_error(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("not a model")
    with pytest.raises(UserError, match="notes.onnx: not an ONNX or TFLite model"):
        prepare_float(path, {}, tmp_path / "out")
    with pytest.raises(UserError, match="no such file"):
        prepare_float(tmp_path / "absent.onnx", {}, tmp_path / "out")


def test_newest_ir_version_is_lowered_for_onnxruntime(tmp_path):
    if onnx.IR_VERSION <= ort_max_ir_version():
        pytest.skip(f"onnx writes IR {onnx.IR_VERSION}, which this onnxruntime loads")
    model = onnx.load(build_convnet(tmp_path / "c.onnx"))
    model.ir_version = onnx.IR_VERSION
    path = tmp_path / "new_ir.onnx"
    onnx.save(model, path)
    prepared = prepare_float(path, {}, tmp_path / "out")
    assert onnx.load(prepared.path).ir_version == ort_max_ir_version()
    assert any(f"IR version {onnx.IR_VERSION} lowered" in n for n in prepared.notes)


def _concat_last_axis_model(path):
    # Symbolic shape inference asserts that constant-valued Concats run along axis 0; axis -1 on
    # 1-D tensors is the same thing in valid ONNX (PaddleOCR's exports have it).
    nodes = [
        helper.make_node("Concat", ["c1", "c2"], ["k"], name="concat", axis=-1),
        helper.make_node("Cast", ["k"], ["kf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "kf"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "concat_last_axis",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "c1"),
         numpy_helper.from_array(np.array([3, 4], np.int64), "c2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_goes_on_when_symbolic_shape_inference_fails(tmp_path):
    original = _concat_last_axis_model(tmp_path / "concat.onnx")
    prepared = prepare_float(original, {}, tmp_path / "out")
    assert any("retried without symbolic shape inference" in n for n in prepared.notes)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_array_equal(_run(prepared.path, {"x": x})[0], x + [1, 2, 3, 4])


def test_runtime_warnings_only_with_debug(tmp_path, capfd):
    # An unused initializer makes onnxruntime warn "Removing initializer 'unused'" from C++.
    model = onnx.load(build_convnet(tmp_path / "c.onnx"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))
    path = tmp_path / "unused.onnx"
    onnx.save(model, path)
    prepare_float(path, {}, tmp_path / "quiet")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    prepare_float(path, {}, tmp_path / "loud", debug=True)
    assert "unused" in capfd.readouterr().err


def test_name_nodes_fills_gaps_and_duplicates():
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"], name="Relu_0"),
            helper.make_node("Relu", ["b"], ["c"], name="dup"),
            helper.make_node("Relu", ["c"], ["d"], name="dup"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1])],
    )
    assert name_nodes(graph) == 2
    names = [n.name for n in graph.node]
    assert names == ["Relu_0_1", "Relu_0", "dup", "Relu_3"]


def test_a_gemm_bias_of_shape_1_n_is_written_as_n_so_the_quantizer_takes_it(tmp_path):
    """magika's final Gemm (bias [1, 214]): onnxruntime's per-channel quantizer indexes the bias by channel and
    stopped with "The truth value of an array with more than one element is ambiguous"."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from qbench.host.quantize.onnx import quantize_onnx

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(1, 8)).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "gemm_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "gemm.onnx"))
    calib = rng.normal(size=(8, 1, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter({"x": s} for s in calib)

        def get_next(self):
            return next(self.samples, None)

    with pytest.raises(ValueError, match="truth value of an array"):  # the precondition: ORT's own quantizer fails
        quantize_static(str(tmp_path / "gemm.onnx"), str(tmp_path / "plain.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True)
    prepared = prepare_float(tmp_path / "gemm.onnx", {}, tmp_path / "out")
    assert any("Gemm bias(es) of shape [1, N] as [N]" in n for n in prepared.notes)
    int8 = quantize_onnx(prepared.path, tmp_path / "gemm.int8.onnx", {"x": calib}, reduce_range=REDUCE_RANGE)
    x = calib[0]
    f = ort.InferenceSession(str(tmp_path / "gemm.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    q = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert 10 * np.log10(np.sum(f ** 2) / np.sum((f - q) ** 2)) > 20


def test_a_prepared_model_left_dynamic_takes_its_sample_shapes_from_the_data(tmp_path):
    """silero VAD v5 (an If around the whole graph) does not load with static shapes, so its prepared model
    keeps dynamic inputs: the samples' shapes must still come from the data, not default to 1."""
    from qbench.host import session
    from qbench.host.run_state import RunState

    original = build_dynamic_opset11(tmp_path / "dyn.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((2, 1, 3, 12, 20), np.float32))
    state = RunState(RunSettings(model=original, out_dir=tmp_path / "out", data=tmp_path / "eval.npz"))
    state.float_info = inspect_model(original)  # dynamic, as such a prepared model stays
    assert [spec.shape for spec in session._static_inputs(state)] == [(1, 3, 12, 20)]
    session._static_inputs(state)
    assert sum("dynamic dims taken from the data's samples" in n for n in state.notes) == 1
