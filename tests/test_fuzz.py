"""The agent as a hostile client finds it: mutated messages, each answered with a documented code, never
``internal``; a valid hello answered after every batch; worker faults survived."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest

import protocol_fuzz
from models import build_convnet
from raw_agent import dealer
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.transport.client import AgentClient
from qbench.host.transport.local import LocalTransport
from qbench.protocols import codec
from qbench.protocols.messages import ErrorCode

import numpy as np

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
    print(dict(codes))
    assert sum(codes.values()) == 2000 and codes["bad_message"] > 500 and codes["ok"] > 0, codes
    assert _rss_mb(fuzzed_agent[1]._proc.pid) < rss_before + 100  # nothing held from message to message


@pytest.mark.slow
def test_ten_thousand_mutated_messages_get_documented_codes(fuzzed_agent):
    codes = _fuzz(fuzzed_agent, 10_000, seed=2)
    assert sum(codes.values()) == 10_000, codes
