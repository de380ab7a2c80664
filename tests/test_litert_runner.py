"""The LiteRT runner with real LiteRT inference on models built by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tflite_models as M

from qbench.agent.runners import available_runtimes, runner_class
from qbench.agent.runners.litert import LiteRTRunner, delegate_partitions, dequantize
from qbench.protocols.messages import ErrorCode, LiteRTRunnerConfig, ProtocolError


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from qbench.host.quantize.tflite import quantize_tflite

    directory = tmp_path_factory.mktemp("tflite")
    paths = M.write_models(directory)
    calibration = {"input": M.calibration_samples()}
    for role, recipe in (("aeq_int8", "static_wi8_ai8"), ("aeq_int16", "static_wi8_ai16")):
        paths[role] = quantize_tflite(paths["float_nosig"], directory / f"{role}.tflite", calibration, recipe).path
    return paths


def run(path: Path, delegate: str | None = None, extras=(), dequantize_extras: bool = False, **config):
    runner = LiteRTRunner(str(path), LiteRTRunnerConfig(delegate=delegate, **config), list(extras),
                          dequantize=dequantize_extras)
    runner.load()
    return runner


SAMPLE = M.calibration_samples(4, seed=7)


def test_registered_with_version_and_delegates():
    assert runner_class("tflite") is LiteRTRunner
    info = available_runtimes(["tflite"])["tflite"]
    assert "ai-edge-litert" in info.version
    assert {"xnnpack", "none"} <= set(info.providers)


def test_model_without_signature_defs_runs(models):
    runner = run(models["float_nosig"])
    assert [(s.name, s.dtype, s.shape) for s in runner.inputs()] == [("input", "float32", [1, 8, 8, 3])]
    assert [(s.name, s.shape) for s in runner.outputs()] == [("probs", [1, M.CLASSES])]
    out = runner.infer({"input": SAMPLE[0]})["probs"]
    reference = run(models["float"]).infer({"input": SAMPLE[0]})["probs"]
    np.testing.assert_allclose(out, reference, rtol=1e-6)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_delegate_on_and_off(models):
    on, off = run(models["float"], "xnnpack"), run(models["float"], "none")
    assert on.providers_used() == ["xnnpack"]
    assert on.coverage.fraction == 1.0 and on.coverage.total_ops == 7
    assert off.providers_used() == ["cpu"]
    assert off.coverage.delegated_ops == 0
    np.testing.assert_allclose(on.infer({"input": SAMPLE[1]})["probs"], off.infer({"input": SAMPLE[1]})["probs"],
                               rtol=1e-4, atol=1e-6)


def test_partial_delegation_is_reported_consistently(models):
    runner = run(models["int8"], "xnnpack")
    cov = runner.coverage
    assert cov.total_ops == 9 and cov.delegated_ops > 0
    assert runner.providers_used() == (["xnnpack"] if cov.delegated_ops == cov.total_ops else ["xnnpack", "cpu"])


def test_hand_built_int8_model_agrees_with_float(models):
    f, q = run(models["float"], "none"), run(models["int8"], "none")
    for sample in SAMPLE:
        pf, pq = f.infer({"input": sample})["probs"], q.infer({"input": sample})["probs"]
        assert np.abs(pf - pq).max() < 0.1


def test_capture_dequantizes_per_channel_weights_within_half_a_step(models):
    weights = M.convnet_weights()
    raw = run(models["int8"], "none", ["conv1/weights", "dw/weights"])
    deq = run(models["int8"], "none", ["conv1/weights", "dw/weights"], dequantize_extras=True)
    out_raw, out_deq = raw.infer({"input": SAMPLE[0]}), deq.infer({"input": SAMPLE[0]})
    for name, axis in (("conv1/weights", 0), ("dw/weights", 3)):
        qp = raw.qparams(name)
        assert qp.axis == axis and len(qp.scale) == M.CHANNELS
        assert out_raw[name].dtype == np.int8 and out_deq[name].dtype == np.float32
        # independent of the runner: the float weights the model was built from, channel by channel
        shape = [1] * 4
        shape[axis] = M.CHANNELS
        step = np.asarray(qp.scale).reshape(shape)
        assert np.all(np.abs(out_deq[name] - weights[name]) <= step / 2 + 1e-7)
        by_hand = (out_raw[name].astype(np.float64) - np.asarray(qp.zero_point).reshape(shape)) * step
        np.testing.assert_allclose(out_deq[name], by_hand, rtol=1e-6)


@pytest.mark.parametrize("role, dtype", [("aeq_int8", np.int8), ("aeq_int16", np.int16), ("int8", np.int8)])
def test_capture_of_activations_matches_hand_dequantization(models, role, dtype):
    names = ["conv1", "add", "logits"] if role != "int8" else [M.RENAMED["conv1"], "add", M.RENAMED["logits"]]
    raw = run(models[role], "none", names)
    deq = run(models[role], "none", names, dequantize_extras=True)
    reference = run(models["float"], "none", ["conv1", "add", "logits"])
    for sample in SAMPLE[:2]:
        out_raw, out_deq = raw.infer({"input": sample}), deq.infer({"input": sample})
        ref = reference.infer({"input": sample})
        for name, float_name in zip(names, ["conv1", "add", "logits"]):
            qp = raw.qparams(name)
            assert out_raw[name].dtype == dtype and qp.dtype == np.dtype(dtype).name
            by_hand = (out_raw[name].astype(np.float64) - qp.zero_point[0]) * qp.scale[0]
            np.testing.assert_allclose(out_deq[name], by_hand, rtol=1e-6, atol=1e-7)
            # and it is the same layer: close to the float model's value
            spread = np.ptp(ref[float_name])
            assert np.abs(out_deq[name] - ref[float_name]).max() < 0.1 * spread


def test_uint8_capture_and_float_feed_quantization(models):
    runner = run(models["uint8"], "none", ["x_uint8"], dequantize_extras=True)
    raw = run(models["uint8"], "none", ["x_uint8"])
    x = np.linspace(-2.5, 4, 16, dtype=np.float32)[None]
    deq, q = runner.infer({"x": x})["x_uint8"], raw.infer({"x": x})["x_uint8"]
    expected_q = np.clip(np.rint(x / 0.02) + 100, 0, 255)
    np.testing.assert_array_equal(q, expected_q.astype(np.uint8))
    np.testing.assert_allclose(deq, (expected_q - 100) * 0.02, rtol=1e-6)


def test_integer_input_is_fed_float_values_quantized(models):
    runner = run(models["aeq_int8"], "none", ["input"])
    spec = runner.inputs()[0]
    assert spec.dtype == "int8"
    qp = runner.qparams("input")
    got = runner.infer({"input": SAMPLE[0]})["input"]
    expected = np.clip(np.rint(SAMPLE[0] / qp.scale[0]) + qp.zero_point[0], -128, 127).astype(np.int8)
    np.testing.assert_array_equal(got, expected)


def test_capture_with_xnnpack_sees_every_tensor(models):
    names = ["conv1", "dw", "add", "pool", "flatten", "logits"]
    on = run(models["aeq_int8"], "xnnpack", names)
    off = run(models["aeq_int8"], "none", names)
    assert on.unobservable == []
    got_on, got_off = on.infer({"input": SAMPLE[0]}), off.infer({"input": SAMPLE[0]})
    for name in names:
        assert np.abs(got_on[name].astype(int) - got_off[name].astype(int)).max() <= 1, name


def test_delegate_partitions_finds_hidden_tensors():
    # a -> A -> t1 -> B -> t2 -> C -> t3 -> D -> t4; the delegate took A..C (constant w = 9 is an input)
    nodes = [
        {"op_name": "CONV_2D", "inputs": [0, 9], "outputs": [1]},
        {"op_name": "ADD", "inputs": [1, 1], "outputs": [2]},
        {"op_name": "RELU", "inputs": [2], "outputs": [3]},
        {"op_name": "SOFTMAX", "inputs": [3], "outputs": [4]},
        {"op_name": "DELEGATE", "inputs": [0, 9], "outputs": [3]},
    ]
    assert delegate_partitions(nodes) == (3, 4, 1, {1, 2}, {"SOFTMAX": 1})
    per_op = nodes[:4] + [
        {"op_name": "DELEGATE", "inputs": [0, 9], "outputs": [1]},
        {"op_name": "DELEGATE", "inputs": [1], "outputs": [2]},
    ]
    assert delegate_partitions(per_op) == (2, 4, 2, set(), {"RELU": 1, "SOFTMAX": 1})


def test_delegate_partitions_on_a_real_clustered_graph(models):
    runner = run(models["int8"], "xnnpack")
    nodes = runner.interpreter._get_ops_details()
    delegated, total, partitions, hidden, outside = delegate_partitions(nodes)
    assert (delegated, total) == (runner.coverage.delegated_ops, runner.coverage.total_ops)
    assert sum(outside.values()) == total - delegated
    boundary = {int(t) for n in nodes if n["op_name"] == "DELEGATE" for t in n["outputs"]}
    assert not hidden & boundary
    assert runner.interpreter.get_output_details()[0]["index"] not in hidden
    if delegated > partitions:  # some partition fused several ops: their inner tensors are hidden
        assert hidden


def test_dequantize_per_channel_axis():
    q = np.array([[[10, -10]], [[4, 0]]], dtype=np.int8)  # channels along axis 0
    out = dequantize(q, [0.5, 0.25], [2, -4], axis=0)
    np.testing.assert_allclose(out, [[[4.0, -6.0]], [[2.0, 1.0]]])
    assert out.dtype == np.float32


def test_onnx_model_given_to_tflite_runner(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, ir_version=10), path)
    with pytest.raises(ProtocolError) as err:
        run(path)
    assert err.value.info.code == ErrorCode.MODEL_INVALID.value
    assert "not a TFLite model" in err.value.info.message


def test_corrupt_tflite_is_model_invalid(models, tmp_path):
    data = models["float"].read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ProtocolError) as err:
        run(path)
    assert err.value.info.code == ErrorCode.MODEL_INVALID.value


@pytest.mark.parametrize("config", [
    {"delegate": "edgetpu"},
    {"delegate": "mynpu"},
    {"delegate": "mynpu", "delegate_path": "/nonexistent/libmynpu_delegate.so"},
])
def test_missing_delegate_names_what_is_available(models, config):
    with pytest.raises(ProtocolError) as err:
        run(models["float"], **config)
    assert err.value.info.code == ErrorCode.PROVIDER_MISSING.value
    assert "available" in err.value.info.message and "xnnpack" in err.value.info.message


def test_unknown_capture_tensor(models):
    with pytest.raises(ProtocolError) as err:
        run(models["float"], "none", ["no_such_tensor"])
    assert err.value.info.code == ErrorCode.BAD_INPUT.value
    assert "no_such_tensor" in err.value.info.message


def test_threads_do_not_change_results(models):
    one, two = run(models["float"], "xnnpack", threads=1), run(models["float"], "xnnpack", threads=2)
    np.testing.assert_allclose(one.infer({"input": SAMPLE[2]})["probs"], two.infer({"input": SAMPLE[2]})["probs"],
                               rtol=1e-5, atol=1e-7)


def _fake_packages(root: Path, tflite_runtime_error: str | None) -> None:
    """ai_edge_litert that fails to import, and optionally a tflite_runtime failing like a numpy-1 build."""
    (root / "ai_edge_litert").mkdir()
    (root / "ai_edge_litert" / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    if tflite_runtime_error is not None:
        (root / "tflite_runtime").mkdir()
        (root / "tflite_runtime" / "__init__.py").write_text("")
        (root / "tflite_runtime" / "interpreter.py").write_text(f"raise ImportError({tflite_runtime_error!r})\n")


_PROBE = textwrap.dedent("""
    from qbench.agent.runners import runner_class
    from qbench.protocols.messages import ProtocolError
    try:
        runner_class("tflite")
    except ProtocolError as exc:
        print(exc.info.code, exc.info.message)
""")


# The numpy-1 build of tflite_runtime cannot be installed next to numpy 2 here: a stand-in package
# raises the ImportError such a build raises.
@pytest.mark.parametrize("error, expected", [
    ("numpy.core.multiarray failed to import", ["runtime_missing", "numpy", "pip install ai-edge-litert"]),
    (None, ["runtime_missing", "not installed", "pip install ai-edge-litert"]),
])
def test_fallback_errors_without_ai_edge_litert(tmp_path, error, expected):
    _fake_packages(tmp_path, error)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
