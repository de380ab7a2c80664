"""The agent as a hostile client finds it: mutated messages, each answered with a documented code, never
``internal``; a valid hello answered after every batch; worker faults survived."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import protocol_fuzz
from models import build_convnet
from raw_agent import dealer
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.transport.client import AgentClient, AgentError
from qbench.host.transport.local import LocalTransport
from qbench.protocols import codec
from qbench.protocols.messages import BenchmarkRequest, ErrorCode, TimingConfig

DOCUMENTED = {c.value for c in ErrorCode} - {ErrorCode.INTERNAL.value}
BATCH = 100


@pytest.fixture(scope="module")
def fuzzed_agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    float_path = build_convnet(tmp / "net.onnx")
    x = np.random.default_rng(0).normal(size=(4, 1, 3, 16, 16)).astype(np.float32)
    int8_path = quantize_onnx(float_path, tmp / "net.int8.onnx", {"x": x})
    transport = LocalTransport(cache_dir=str(tmp / "cache"))
    client = AgentClient(transport.start(), timeout_s=120)
    client.hello(["onnxruntime"])
    refs = [client.ensure_model(p, "onnx") for p in (float_path, int8_path)]
    yield client, transport, refs
    client.close()
    transport.stop()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _fuzz(fuzzed_agent, count: int, seed: int) -> Counter:
    client, transport, (ref, ref8) = fuzzed_agent
    sock = dealer(client.endpoint)
    codes: Counter = Counter()
    try:
        for k, frames in enumerate(protocol_fuzz.messages(count, ref.sha256, ref8.sha256, seed)):
            sock.send_multipart(frames)
            while True:  # progress messages come before a job's reply
                assert sock.poll(120_000), f"message {k} unanswered: {frames[0][:300]!r}"
                reply = codec.decode(sock.recv_multipart(), 1 << 30)
                if reply.type != "progress":
                    break
            assert reply.type.endswith("_reply") and reply.status in ("ok", "error"), reply
            code = "ok" if reply.status == "ok" else reply.content.get("code")
            assert code == "ok" or code in DOCUMENTED, (code, reply.content.get("message"), frames[0][:300])
            codes[code] += 1
            if k % BATCH == BATCH - 1:
                assert client.hello().agent_version  # a valid client is served after every batch
    finally:
        sock.close()
    return codes


def test_two_thousand_mutated_messages_get_documented_codes(fuzzed_agent):
    rss_before = _rss_mb(fuzzed_agent[1]._proc.pid)
    codes = _fuzz(fuzzed_agent, 2000, seed=1)
    assert sum(codes.values()) == 2000 and codes["bad_message"] > 500 and codes["ok"] > 0, codes
    assert _rss_mb(fuzzed_agent[1]._proc.pid) < rss_before + 100  # nothing held from message to message


@pytest.mark.slow
def test_ten_thousand_mutated_messages_get_documented_codes(fuzzed_agent):
    rss_before = _rss_mb(fuzzed_agent[1]._proc.pid)
    codes = _fuzz(fuzzed_agent, 10_000, seed=2)
    rss_after = _rss_mb(fuzzed_agent[1]._proc.pid)
    print(f"10,000 fuzzed messages: {dict(codes)}; agent RSS {rss_before:.1f} -> {rss_after:.1f} MB")
    assert sum(codes.values()) == 10_000, codes
    assert rss_after < rss_before + 100


def _worker_of(agent_pid: int, timeout_s: float = 60.0) -> int:
    """The pid of the worker running now: a child of one of the agent's zygotes."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for zygote in psutil.Process(agent_pid).children():
            workers = [c for c in zygote.children() if c.status() != psutil.STATUS_ZOMBIE]
            if workers:
                return workers[0].pid
        time.sleep(0.05)
    raise AssertionError("no worker started")


def test_worker_faults_in_a_row_are_typed_and_survived(tmp_path):
    """Each kind of worker death, three rounds: out of memory, SIGKILL, SIGSEGV, timeout, a corrupt model."""
    from test_agent import _big_activation_model

    transport = LocalTransport(cache_dir=str(tmp_path / "cache"), memory_limit_mb=400)
    client = AgentClient(transport.start(), timeout_s=120)
    try:
        client.hello(["onnxruntime"])
        good = client.ensure_model(build_convnet(tmp_path / "m.onnx"), "onnx")
        big = client.ensure_model(_big_activation_model(tmp_path / "big.onnx"), "onnx")
        (tmp_path / "bad.onnx").write_bytes(b"\x08\x07" + b"\xff" * 64)
        corrupt = client.ensure_model(tmp_path / "bad.onnx", "onnx")
        x = {"x": np.zeros((1, 1, 3, 16, 16), np.float32)}
        quick = TimingConfig(warmup=0, runs=1, min_seconds=0)
        endless = TimingConfig(warmup=0, runs=10**8, max_runs=10**8, min_seconds=600, max_seconds=600)
        client.benchmark(BenchmarkRequest(model=good, timing=quick), x)  # the baseline job is done

        def killed(sig: int) -> AgentError:
            outcome: list = []
            job = threading.Thread(target=lambda: outcome.append(_error(
                lambda: client.benchmark(BenchmarkRequest(model=good, timing=endless), x))))
            job.start()
            os.kill(_worker_of(transport._proc.pid), sig)
            job.join(120)
            return outcome[0]

        faults = {
            "out_of_memory": lambda: _error(lambda: client.benchmark(
                BenchmarkRequest(model=big), {"x": np.zeros((1, 1, 3, 1024, 1024), np.float32)})),
            "worker_crashed SIGKILL": lambda: killed(signal.SIGKILL),
            "worker_crashed SIGSEGV": lambda: killed(signal.SIGSEGV),
            "worker_timeout": lambda: _error(lambda: client.benchmark(
                BenchmarkRequest(model=good, timing=endless, timeout_s=1.0), x)),
            "model_invalid": lambda: _error(lambda: client.benchmark(BenchmarkRequest(model=corrupt), x)),
        }
        for _ in range(3):
            for expected, fault in faults.items():
                code, _, signame = expected.partition(" ")
                error = fault()
                assert error is not None and error.info.code == code, (expected, error)
                assert signame in error.info.message
                assert client.benchmark(BenchmarkRequest(model=good, timing=quick), x).latency.runs == 1
    finally:
        client.close()
        transport.stop()


def _error(call) -> AgentError | None:
    try:
        call()
    except AgentError as exc:
        return exc
    return None
