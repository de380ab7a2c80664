"""The agent over SSH: started through the tunnel, used, stopped, and killed under our feet."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.host.errors import UserError
from qbench.host.transport.client import AgentClient, AgentError
from qbench.host.transport.ssh import SSHTransport
from qbench.protocols.messages import BenchmarkRequest, TimingConfig
from ssh_helpers import agent_pids, listening_addresses, wait_until

pytestmark = pytest.mark.ssh

EXIT_WAIT_S = 15.0


def _tiny_model(path: Path) -> Path:
    """x [1,4] -> MatMul -> Relu -> y [1,4]."""
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 0.5, "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
            helper.make_node("Relu", ["mm"], ["y"], name="relu"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    # onnx 1.23 would stamp IR 14, which onnxruntime 1.31 refuses to load.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(path))
    return path


def _inputs(samples: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.ones((samples, 1, 4), dtype=np.float32)}


@pytest.fixture
def started(ssh_home, make_device, tmp_path):
    """A started SSHTransport, its local endpoint and the device workdir; stopped afterwards."""
    device = make_device()
    transport = SSHTransport(device)
    endpoint = transport.start()
    yield transport, endpoint, Path(device.workdir)
    transport.stop()


def test_hello_and_benchmark_through_the_tunnel_then_no_agent_left(started, tmp_path):
    transport, endpoint, workdir = started
    assert endpoint.startswith("tcp://127.0.0.1:")
    pids = agent_pids(workdir)
    assert len(pids) == 1
    assert listening_addresses(pids[0]) == {"127.0.0.1"}  # nothing beyond the device's loopback
    client = AgentClient(endpoint, timeout_s=30)
    try:
        hello = client.hello()
        assert hello.machine == os.uname().machine and "onnxruntime" in hello.runtimes
        ref = client.ensure_model(_tiny_model(tmp_path / "tiny.onnx"), "onnx")
        timing = TimingConfig(warmup=1, runs=3, min_seconds=0.0)
        reply = client.benchmark(BenchmarkRequest(model=ref, timing=timing), _inputs())
        assert reply.latency.runs >= 3 and reply.latency.median_ms > 0
    finally:
        client.close()
    transport.stop()
    assert agent_pids(workdir) == []
    transport.stop()  # twice is fine


def test_model_cache_lives_in_the_workdir(started, tmp_path):
    transport, endpoint, workdir = started
    client = AgentClient(endpoint, timeout_s=30)
    try:
        client.hello()
        ref = client.ensure_model(_tiny_model(tmp_path / "tiny.onnx"), "onnx")
    finally:
        client.close()
    cached = [p for p in (workdir / "cache").rglob("*") if p.is_file() and ref.sha256 in p.name]
    assert cached, f"no cached model named after {ref.sha256} under {workdir / 'cache'}"


def _kill_ssh_sessions(sshd) -> int:
    sessions = sshd.session_processes()
    for proc in sessions:
        proc.send_signal(signal.SIGKILL)
    return len(sessions)


@pytest.mark.slow  # waits out the client's silence timeout, by design
def test_connection_killed_mid_benchmark_fails_in_bounded_time(started, sshd, tmp_path):
    transport, endpoint, workdir = started
    client = AgentClient(endpoint, timeout_s=5)
    outcome: list[BaseException] = []
    try:
        client.hello(["onnxruntime"])  # not every runtime's probe: under load it alone can outlast the 5 s
        ref = client.ensure_model(_tiny_model(tmp_path / "tiny.onnx"), "onnx")
        # Long enough that it is surely still running when the connection dies.
        timing = TimingConfig(warmup=1, runs=10, min_seconds=60.0, max_seconds=120.0)

        def bench() -> None:
            try:
                client.benchmark(BenchmarkRequest(model=ref, timing=timing), _inputs())
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        runner = threading.Thread(target=bench, daemon=True)
        runner.start()
        agent = psutil.Process(agent_pids(workdir)[0])
        assert wait_until(lambda: agent.children(recursive=True), 20.0), "no worker started"
        assert _kill_ssh_sessions(sshd) > 0
        runner.join(30.0)
        assert not runner.is_alive(), "the benchmark call did not fail within its timeout"
    finally:
        client.close()
    assert len(outcome) == 1 and isinstance(outcome[0], AgentError)
    assert "no answer from the agent" in str(outcome[0])
    assert "SSH connection to testbox" in transport.problem() and "lost" in transport.problem()
    assert "[qbench] SSH connection to testbox" in transport.stderr_tail()
    # The agent's stdin was the SSH channel: it ends with it, and takes its worker along.
    assert wait_until(lambda: not agent_pids(workdir), EXIT_WAIT_S), agent_pids(workdir)
    transport.stop()


def test_agent_killed_on_the_device_is_reported(started):
    transport, endpoint, workdir = started
    (pid,) = agent_pids(workdir)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: transport.problem() is not None, 10.0)
    assert "the agent on testbox exited" in transport.problem()
    assert "[qbench] the agent on testbox exited" in transport.stderr_tail()
    client = AgentClient(endpoint, timeout_s=2)
    try:
        with pytest.raises(AgentError, match="no answer"):
            client.hello()
    finally:
        client.close()


def test_agent_dying_before_ready_shows_its_stderr(ssh_home, make_device, tmp_path):
    # The device's Python works for the checks but the agent itself fails at start.
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in *qbench-agent-*) echo "agent: cannot start: out of luck" >&2; exit 3;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    transport = SSHTransport(make_device(python=str(wrapper)))
    try:
        with pytest.raises(UserError, match=r"(?s)exited \(status 3\) before it was ready.*out of luck"):
            transport.start()
    finally:
        transport.stop()


def test_stop_kills_an_agent_that_ignores_its_stdin_closing(ssh_home, make_device, tmp_path):
    # A device Python that drops --exit-on-stdin-eof: the agent outlives its channel unless killed.
    wrapper = tmp_path / "python-deaf"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do shift; [ "$a" = --exit-on-stdin-eof ] || set -- "$@" "$a"; done\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    device = make_device(python=str(wrapper))
    transport = SSHTransport(device, stop_wait_s=0.5)
    try:
        transport.start()
        assert len(agent_pids(device.workdir)) == 1
    finally:
        transport.stop()
    assert wait_until(lambda: not agent_pids(device.workdir), EXIT_WAIT_S)


def test_stop_without_start_and_start_after_failed_deploy(ssh_home, make_device):
    SSHTransport(make_device()).stop()
    transport = SSHTransport(make_device(python="/nonexistent/python3"))
    try:
        with pytest.raises(UserError, match="no Python"):
            transport.start()
    finally:
        transport.stop()
