"""`benchmark_request.return_outputs`: a real agent returns the timed session's outputs as tensor frames."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from models import build_convnet, build_two_inputs_int64
from qbench.host.transport.client import AgentClient
from qbench.host.transport.local import LocalTransport
from qbench.protocols.messages import BenchmarkRequest, TimingConfig

FAST = TimingConfig(warmup=0, runs=2, min_seconds=0.0)


def _agent(tmp_path, *extra: str):
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"))
    if extra:
        transport.command = lambda runtimes=(): [sys.executable, "-m", "qbench.agent", "--cache-dir", str(tmp_path / "cache"),
                                     "--exit-on-stdin-eof", "--keys-stdin", *extra]
    client = AgentClient(transport.start(), timeout_s=60)
    client.hello()
    return client, transport


def _plain(path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every sample through a plain ORT session, outputs stacked: what the agent should return."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    count = next(iter(feeds.values())).shape[0]
    runs = [session.run(names, {k: v[i] for k, v in feeds.items()}) for i in range(count)]
    return {name: np.stack([run[j] for run in runs]) for j, name in enumerate(names)}


def _expand_model(path) -> None:
    """x [1,1,64,64] -> Expand -> y [1,64,64,64]: 16 KB in, 1 MiB of float32 out per sample."""
    shape = numpy_helper.from_array(np.array([1, 64, 64, 64], dtype=np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"], name="expand")], "expand",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 64, 64])],
                              initializer=[shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_outputs_are_the_models_outputs_stacked_over_samples(tmp_path):
    model = build_two_inputs_int64(tmp_path / "two.onnx")
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=(3, 1, 16)).astype(np.float32),
             "mask": rng.integers(0, 2, size=(3, 1, 16)).astype(np.int64)}
    client, transport = _agent(tmp_path)
    try:
        ref = client.ensure_model(model, "onnx")
        reply, outputs = client.benchmark_outputs(BenchmarkRequest(model=ref, timing=FAST, return_outputs=True), feeds)
        plain_reply, none = client.benchmark_outputs(BenchmarkRequest(model=ref, timing=FAST), feeds)
    finally:
        client.close()
        transport.stop()
    expected = _plain(model, feeds)
    assert list(outputs) == list(expected) == ["probs", "label"]
    for name, array in expected.items():
        assert outputs[name].dtype == array.dtype and outputs[name].shape == array.shape
        np.testing.assert_array_equal(outputs[name], array)
    assert reply.outputs_omitted is None and reply.latency.runs >= 2
    assert none == {} and plain_reply.latency.runs >= 2  # not asked: no frames


def test_outputs_over_the_frame_cap_are_omitted_and_the_timing_kept(tmp_path):
    _expand_model(tmp_path / "expand.onnx")
    feeds = {"x": np.ones((2, 1, 1, 64, 64), dtype=np.float32)}  # 2 MiB of output: over a 1 MiB frame cap
    client, transport = _agent(tmp_path, "--max-frame-mb", "1")
    try:
        ref = client.ensure_model(tmp_path / "expand.onnx", "onnx")
        reply, outputs = client.benchmark_outputs(BenchmarkRequest(model=ref, timing=FAST, return_outputs=True), feeds)
        one, single = client.benchmark_outputs(BenchmarkRequest(model=ref, timing=FAST, return_outputs=True),
                                               {"x": feeds["x"][:1]})
    finally:
        client.close()
        transport.stop()
    assert outputs == {} and reply.latency.runs >= 2
    assert "'y'" in reply.outputs_omitted and "frame cap of 1048576 bytes" in reply.outputs_omitted
    # Exactly at the cap (one sample of 1 MiB) still travels.
    assert one.outputs_omitted is None and single["y"].shape == (1, 1, 64, 64, 64)


def test_outputs_are_read_before_the_job_directory_goes(tmp_path):
    model = build_convnet(tmp_path / "convnet.onnx")
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 1, 3, 16, 16)).astype(np.float32)}
    client, transport = _agent(tmp_path)
    try:
        ref = client.ensure_model(model, "onnx")
        _, outputs = client.benchmark_outputs(BenchmarkRequest(model=ref, timing=FAST, return_outputs=True), feeds)
    finally:
        client.close()
        transport.stop()
    np.testing.assert_array_equal(outputs["probs"], _plain(model, feeds)["probs"])
    assert not any((tmp_path / "cache" / "jobs").iterdir())

