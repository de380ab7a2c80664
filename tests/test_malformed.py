"""Known-answer cases of the malformed requests that once ended in ``internal`` or desynchronised the agent."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from models import build_convnet
from raw_agent import raw
from qbench.agent.launcher import Zygotes
from qbench.host.transport.client import AgentClient, AgentError
from qbench.host.transport.local import LocalTransport
from qbench.protocols.messages import BenchmarkRequest, ModelRef, MsgType, TimingConfig
from qbench.protocols.version import PROTOCOL_VERSION

QUICK = {"warmup": 0, "runs": 1, "min_seconds": 0.0}
X = np.zeros((1, 1, 3, 16, 16), np.float32)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("malformed")
    transport = LocalTransport(cache_dir=str(tmp / "cache"))
    client = AgentClient(transport.start(), timeout_s=120)
    client.hello(["onnxruntime"])
    ref = client.ensure_model(build_convnet(tmp / "net.onnx"), "onnx")
    yield client, {"sha256": ref.sha256, "format": "onnx"}
    client.close()
    transport.stop()


def _header(msg_type: str, content: dict, buffers: list | None = None) -> dict:
    return {"version": PROTOCOL_VERSION, "type": msg_type, "id": "m", "status": None, "content": content,
            "buffers": buffers if buffers is not None else []}


def _send(client, header: dict | str, frames: list = ()) -> tuple[str, str]:
    text = header if isinstance(header, str) else json.dumps(header)
    reply = raw(client.endpoint, [text.encode(), *frames], timeout_ms=120_000)
    return (reply.content.get("code", "ok") if reply.status == "error" else "ok"), reply.content.get("message", "")


def _benchmark(client, model: dict, text_patch: tuple[str, str] | None = None, x: np.ndarray = X, **fields):
    content = {"model": model, "timing": QUICK, "timeout_s": 60.0, **fields}
    header = _header("benchmark_request", content, [{"name": "x", "dtype": str(x.dtype), "shape": list(x.shape)}])
    text = json.dumps(header)
    if text_patch:
        text = text.replace(*text_patch)
    return _send(client, text, [x.tobytes()])


@pytest.mark.parametrize("timeout", ["NaN", "Infinity", "-Infinity", "1e300", "0", "-5", "1e9"])
def test_a_timeout_that_is_no_deadline_is_bad_message(agent, timeout):
    client, model = agent
    code, message = _benchmark(client, model, ('"timeout_s": 60.0', f'"timeout_s": {timeout}'))
    assert code == "bad_message", message
    assert client.benchmark(BenchmarkRequest(model=ModelRef(**model), timing=TimingConfig(**QUICK)),
                            {"x": X}).latency.runs == 1  # the next job is its own, not the refused one's


@pytest.mark.parametrize("runner, word", [
    ({"threads": 2**40}, "threads"), ({"threads": 0}, "threads"), ({"threads": -3}, "threads"),
    ({"graph_optimization": "ludicrous"}, "graph_optimization"), ({"accelerator": "tpu"}, "accelerator"),
])
def test_runner_fields_out_of_range_are_bad_message(agent, runner, word):
    client, model = agent
    code, message = _benchmark(client, model, runner=runner)
    assert code == "bad_message" and word in message, message


@pytest.mark.parametrize("timing", [{"runs": -1}, {"max_runs": 2**63}, {"warmup": 10**12}])
def test_timing_counts_out_of_range_are_bad_message(agent, timing):
    client, model = agent
    code, _ = _benchmark(client, model, timing={**QUICK, **timing})
    assert code == "bad_message"


def test_inputs_of_no_sample_are_bad_input(agent):
    client, model = agent
    code, message = _benchmark(client, model, x=np.zeros((0, 1, 3, 16, 16), np.float32))
    assert code == "bad_input" and "no sample" in message


@pytest.mark.parametrize("shape", [[2**62, 2**62, 0], [2**40, 2**40, 2**40, 0], [1] * 70, [-1], [1.5], [True]])
def test_shapes_whose_size_overflows_are_bad_message(agent, shape):
    client, model = agent
    header = _header("benchmark_request", {"model": model}, [{"name": "x", "dtype": "float32", "shape": shape}])
    assert _send(client, header, [b""])[0] == "bad_message"


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"type": "hello_request", "content": ' +
                                  '{"a": ' * 50 + "1" + "}" * 50 + "}"])
def test_json_nested_past_the_limit_is_bad_message(agent, text):
    client, _ = agent
    assert _send(client, text)[0] == "bad_message"
    assert client.hello().agent_version


def test_a_sha256_with_a_trailing_newline_is_bad_message(agent, tmp_path):
    client, model = agent
    header = _header("model_status_request", {"model": {**model, "sha256": model["sha256"] + "\n"}})
    assert _send(client, header)[0] == "bad_message"


def test_frames_over_the_count_or_byte_cap_are_too_large_and_not_held(tmp_path):
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"))
    transport.command = lambda runtimes=(): [sys.executable, "-m", "qbench.agent", "--cache-dir", str(tmp_path / "cache"),
                                             "--exit-on-stdin-eof", "--keys-stdin", "--max-frames", "8",
                                             "--max-message-mb", "4"]
    client = AgentClient(transport.start(), timeout_s=60)
    try:
        limits = client.hello().limits
        assert (limits.max_frames, limits.max_message_bytes) == (8, 4 * 1024 * 1024)
        frame = np.zeros(1024, np.uint8)
        descs = [{"name": f"t{k}", "dtype": "uint8", "shape": [1024]} for k in range(9)]
        header = json.dumps(_header("model_status_request", {}, descs)).encode()
        reply = raw(client.endpoint, [header, *[frame.tobytes()] * 9])
        assert reply.content["code"] == "too_large" and "8 tensor frames" in reply.content["message"]
        big = np.zeros(1024 * 1024, np.uint8).tobytes()
        descs = [{"name": f"t{k}", "dtype": "uint8", "shape": [len(big)]} for k in range(5)]
        header = json.dumps(_header("model_status_request", {}, descs)).encode()
        reply = raw(client.endpoint, [header, *[big] * 5])
        assert reply.content["code"] == "too_large" and "message over" in reply.content["message"]
        with pytest.raises(AgentError) as err:  # the host's client checks before it sends
            client.request(MsgType.MODEL_STATUS, {}, {f"t{k}": np.zeros(1024, np.uint8) for k in range(9)})
        assert err.value.info.code == "too_large" and err.value.info.origin == "host"
        assert client.hello().agent_version
    finally:
        client.close()
        transport.stop()


def test_an_error_between_a_fork_request_and_its_reply_drops_that_zygote(tmp_path):
    """The desync of old: a deadline select() cannot take (OverflowError) left the pid reply unread, and every
    later job read the previous job's pid and status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    zygotes = Zygotes([sys.executable], lambda: env, tmp_path / "logs", {"cpus": [], "memory_limit_mb": None})
    try:
        jobdir = tmp_path / "job"
        jobdir.mkdir()
        (jobdir / "job.json").write_text(json.dumps({"kind": "probe", "runtimes": [], "inputs": []}))
        with open(tmp_path / "stderr", "wb") as stderr:
            with pytest.raises(OverflowError):
                zygotes.start("", jobdir, stderr.fileno(), timeout_s=1e300)
            assert "" not in zygotes.pids()  # not asked again: its late pid reply would answer the next job
            worker = zygotes.start("", jobdir, stderr.fileno(), timeout_s=60)
            assert worker.wait(60) == 0 and Path(f"/proc/{worker.pid}").exists() is False
            assert (jobdir / "result.json").exists()
            worker.finish()
    finally:
        zygotes.close()
