"""Cross-target agreement of integer outputs: dequantized PSNR, known answers computed with numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tflite_models as M
from ai_edge_litert import schema_py_generated as fb
from onnx import TensorProto, helper, numpy_helper

from qbench.host.compare import cross
from qbench.host.compare.output_quant import int8_output_qparams
from qbench.protocols.messages import QParams


def _one_step_apart(shape, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.integers(-128, 127, size=shape).astype(np.int8)
    other = ref.copy()
    flat = other.reshape(-1)
    flat[::7] = np.clip(flat[::7].astype(np.int16) + 1, -128, 127).astype(np.int8)  # one step, as OpenVINO's
    return ref, other


def test_int8_codes_one_step_apart_read_as_a_dequantized_psnr():
    ref, other = _one_step_apart((3, 1, 10))
    qp = QParams(scale=[0.05], zero_point=[3])
    row = cross.compare_tensor(ref, other, qp)
    real_ref, real_other = (ref.astype(np.float64) - 3) * 0.05, (other.astype(np.float64) - 3) * 0.05
    mse = np.mean((real_other - real_ref) ** 2)
    assert row["kind"] == "dequantized" and row["exact"] is False
    assert row["mse"] == pytest.approx(mse)
    assert row["psnr_db"] == pytest.approx(10 * np.log10(np.max(np.abs(real_ref)) ** 2 / mse), abs=1e-3)
    assert row["max_abs_diff"] == pytest.approx(0.05)
    assert cross.compare_tensor(ref, ref.copy(), qp)["exact"] is True
    # Without quantization parameters the same codes are class indices: counted, not measured.
    plain = cross.compare_tensor(ref, other)
    assert plain["kind"] == "exact" and plain["mismatches"] == int(np.count_nonzero(ref != other))


def test_per_channel_outputs_use_their_channels_scale():
    ref, other = _one_step_apart((2, 4, 5), seed=1)
    scale, zero = [0.1, 0.2, 0.4, 0.8], [0, 1, -1, 2]
    row = cross.compare_tensor(ref, other, QParams(scale=scale, zero_point=zero, axis=0))
    s, z = np.array(scale).reshape(1, 4, 1), np.array(zero).reshape(1, 4, 1)
    real_ref, real_other = (ref - z) * s, (other - z) * s
    mse = np.mean((real_other - real_ref) ** 2)
    assert row["psnr_db"] == pytest.approx(10 * np.log10(np.max(np.abs(real_ref)) ** 2 / mse), abs=1e-3)


def test_rows_dequantize_only_the_int8_models_outputs_and_summary_counts_them():
    ref, other = _one_step_apart((2, 6))
    qp = {"y": QParams(scale=[0.1], zero_point=[0])}
    rows = cross.rows({"int8": {"y": ref}, "float": {"y": ref}}, "t", {"int8": {"y": other}, "float": {"y": other}}, qp)
    by_model = {row["model"]: row for row in rows}
    assert by_model["int8"]["kind"] == "dequantized" and by_model["float"]["kind"] == "exact"
    assert cross.summary(rows, "int8")["psnr_db"] == by_model["int8"]["psnr_db"] is not None


def test_onnx_output_qparams_from_a_final_quantizelinear(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4])],
        [numpy_helper.from_array(np.array(0.25, np.float32), "s"), numpy_helper.from_array(np.array(-5, np.int8), "z")],
    )
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    assert int8_output_qparams(path) == {"y": QParams(scale=[0.25], zero_point=[-5], axis=None, dtype="int8")}


def test_tflite_output_qparams_of_an_int8_output(tmp_path):
    g = M.Graph()
    x = g.tensor("x", (1, 16))
    xq = g.tensor("x_int8", (1, 16), np.int8, quant=M.qparams(0.02, -7))
    g.op(fb.BuiltinOperator.QUANTIZE, [x], [xq])
    path = tmp_path / "q.tflite"
    path.write_bytes(g.to_bytes([x], [xq], signature=None))
    (found,) = int8_output_qparams(path).items()
    assert found[0] == "x_int8" and found[1].zero_point == [-7] and found[1].scale == pytest.approx([0.02])
