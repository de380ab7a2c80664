"""The agent as a real process on loopback: typed errors, caps, cache safety, worker isolation."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import zmq

from models import build_convnet
from raw_agent import raw
from qbench.host.transport.client import AgentClient, AgentError
from qbench.host.transport.local import LocalTransport
from qbench.protocols import codec
from qbench.protocols.messages import BenchmarkRequest, Message, MsgType, TimingConfig


@pytest.fixture
def agent(tmp_path):
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"))
    client = AgentClient(transport.start(), timeout_s=60)
    client.hello()
    yield client, transport, tmp_path
    client.close()
    transport.stop()


def test_hello_describes_the_agent(agent):
    client, _, _ = agent
    info = client.info
    assert info.protocol_version and info.cpu_count >= 1 and info.total_memory_bytes > 0
    assert "onnxruntime" in info.runtimes and "CPUExecutionProvider" in info.runtimes["onnxruntime"].providers


def test_version_mismatch_is_a_typed_error(agent):
    client, _, _ = agent
    frames = codec.encode(Message(type="hello_request", id="1", content={"protocol_version": "99.0"}, version="99.0"))
    reply = raw(client.endpoint, frames)
    assert reply.status == "error" and reply.content["code"] == "version_mismatch"


def test_malformed_and_unknown_messages_get_typed_errors_and_the_agent_stays_up(agent):
    client, _, _ = agent
    assert raw(client.endpoint, [b"{not json"]).content["code"] == "bad_message"
    assert raw(client.endpoint, codec.encode(Message(type="exec_request", id="2"))).content["code"] == "unknown_type"
    assert client.hello().agent_version  # still serving


def test_model_reference_cannot_name_a_path(agent):
    client, _, tmp = agent
    for sha in ("../../etc/passwd", "a" * 63 + "/", "A" * 64):
        with pytest.raises(AgentError) as err:
            client.request(MsgType.MODEL_STATUS, {"model": {"sha256": sha, "format": "onnx"}})
        assert err.value.info.code == "bad_message"
    with pytest.raises(AgentError) as err:
        client.request(MsgType.MODEL_STATUS, {"model": {"sha256": "a" * 64, "format": "../x"}})
    assert err.value.info.code == "bad_message"


def test_upload_is_content_addressed_and_verified(agent):
    client, _, tmp = agent
    model = build_convnet(tmp / "m.onnx")
    ref = client.ensure_model(model, "onnx")
    assert (tmp / "cache" / f"{ref.sha256}.onnx").read_bytes() == model.read_bytes()
    sent = client.uploaded_bytes
    client.ensure_model(model, "onnx")
    assert client.uploaded_bytes == sent  # the agent has it: nothing is sent again
    data = b"not the bytes that hash to this"
    content = {"model": {"sha256": hashlib.sha256(b"other").hexdigest(), "format": "onnx"},
               "total_bytes": len(data), "offset": 0}
    with pytest.raises(AgentError) as err:
        client.request(MsgType.MODEL_UPLOAD, content, {"chunk": np.frombuffer(data, np.uint8)})
    assert err.value.info.code == "model_corrupt"


def test_model_over_the_cap_is_rejected(tmp_path):
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"))
    transport.command = lambda runtimes=(): [sys.executable, "-m", "qbench.agent", "--cache-dir", str(tmp_path / "cache"),
                                 "--max-model-mb", "0", "--exit-on-stdin-eof", "--keys-stdin"]
    client = AgentClient(transport.start())
    try:
        client.hello()
        with pytest.raises(AgentError) as err:
            client.ensure_model(build_convnet(tmp_path / "m.onnx"), "onnx")
        assert err.value.info.code == "too_large"
    finally:
        client.close()
        transport.stop()


def test_a_crashing_worker_is_a_typed_error_and_the_agent_survives(agent):
    client, _, tmp = agent
    bad = tmp / "bad.onnx"
    bad.write_bytes(b"\x08\x07" + b"\xff" * 64)  # a protobuf that is not a model
    ref = client.ensure_model(bad, "onnx")
    x = np.zeros((1, 1, 3, 16, 16), np.float32)
    with pytest.raises(AgentError) as err:
        client.benchmark(BenchmarkRequest(model=ref), {"x": x})
    assert err.value.info.code in ("model_invalid", "worker_crashed")
    good = client.ensure_model(build_convnet(tmp / "m.onnx"), "onnx")
    reply = client.benchmark(BenchmarkRequest(model=good, timing=TimingConfig(warmup=0, runs=2, min_seconds=0)), {"x": x})
    assert reply.latency.runs >= 2


def _big_activation_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1024, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 1024, 1024])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_worker_out_of_memory_is_typed_and_the_agent_survives(tmp_path):
    # 400 MB of address space imports the runtime but cannot hold a 256 MB output plus its arena.
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"), memory_limit_mb=400)
    client = AgentClient(transport.start())
    try:
        assert client.hello().emulation["memory_limit_mb"] == 400
        ref = client.ensure_model(_big_activation_model(tmp_path / "big.onnx"), "onnx")
        with pytest.raises(AgentError) as err:
            client.benchmark(BenchmarkRequest(model=ref), {"x": np.zeros((1, 1, 3, 1024, 1024), np.float32)})
        assert err.value.info.code == "out_of_memory", err.value.info
        assert client.hello().agent_version
    finally:
        client.close()
        transport.stop()


def test_unknown_provider_names_what_is_available(agent):
    client, _, tmp = agent
    ref = client.ensure_model(build_convnet(tmp / "m.onnx"), "onnx")
    req = BenchmarkRequest(model=ref)
    req.runner.providers = ["NoSuchExecutionProvider"]
    with pytest.raises(AgentError) as err:
        client.benchmark(req, {"x": np.zeros((1, 1, 3, 16, 16), np.float32)})
    assert err.value.info.code == "provider_missing" and "CPUExecutionProvider" in err.value.info.message


def test_wrong_inputs_are_bad_input(agent):
    client, _, tmp = agent
    ref = client.ensure_model(build_convnet(tmp / "m.onnx"), "onnx")
    with pytest.raises(AgentError) as err:
        client.benchmark(BenchmarkRequest(model=ref), {"y": np.zeros((1, 1, 3, 16, 16), np.float32)})
    assert err.value.info.code == "bad_input"


def test_agent_exits_when_its_stdin_closes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "qbench.agent", "--cache-dir", str(tmp_path), "--exit-on-stdin-eof",
                             "--no-auth"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("QBENCH_AGENT_READY tcp://127.0.0.1:")
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0


def test_silent_agent_times_out_in_bounded_time():
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)  # accepts, never answers
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = AgentClient(f"tcp://127.0.0.1:{port}", timeout_s=0.5)
    with pytest.raises(AgentError) as err:
        client.hello()
    assert err.value.info.code == "timeout"
    client.close()
    router.close(0)
