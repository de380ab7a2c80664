"""Who may drive an agent: CURVE with per-run keys, binds, and which delegate libraries a job may load."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tflite_delegate as TD
import tflite_models
from raw_agent import dealer
from qbench.agent.auth import is_local
from qbench.host.transport.base import RunKeys
from qbench.host.transport.client import AgentClient, AgentError
from qbench.host.transport.local import LocalTransport
from qbench.protocols import codec
from qbench.protocols.messages import BenchmarkRequest, LiteRTRunnerConfig, Message, TimingConfig
from qbench.protocols.version import PROTOCOL_VERSION

QUICK = TimingConfig(warmup=0, runs=1, min_seconds=0)

HOSTILE_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void pwned(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("ran", f); fclose(f); }
}
"""


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.8.9.10:1", True), ("tcp://[::1]:5555", True),
    ("tcp://localhost:5555", True), ("ipc:///tmp/qbench.sock", True), ("inproc://x", True),
    ("tcp://localhost.attacker.example:5555", False), ("tcp://127.0.0.1.attacker.example:5555", False),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://eth0:5555", False),
    ("tcp://10.0.0.2:5555", False), ("tcp://[::]:5555", False), ("tcp://127.0.0.1", False),
    ("tcp://127.0.0.1;10.0.0.2:5555", False), ("udp://127.0.0.1:5555", False), ("127.0.0.1:5555", False),
])
def test_only_loopback_addresses_count_as_local(endpoint, local):
    assert is_local(endpoint) is local


@pytest.mark.parametrize("bind", ["tcp://localhost.attacker.example:5555", "tcp://0.0.0.0:5555", "tcp://*:0"])
def test_a_bind_beyond_loopback_without_keys_is_refused(tmp_path, bind):
    done = subprocess.run([sys.executable, "-m", "qbench.agent", "--no-auth", "--bind", bind, "--cache-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"refusing to bind {bind} without CURVE keys" in done.stderr
    assert "Traceback" not in done.stderr and not done.stdout


@pytest.mark.parametrize("stdin", ["", "QBENCH_KEYS short key\n", "hello\n"])
def test_an_agent_without_valid_keys_does_not_start(tmp_path, stdin):
    done = subprocess.run([sys.executable, "-m", "qbench.agent", "--keys-stdin", "--cache-dir", str(tmp_path)],
                          input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--keys-stdin: expected 'QBENCH_KEYS" in done.stderr and not done.stdout


@pytest.fixture
def agent(tmp_path):
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"))
    endpoint = transport.start()
    client = AgentClient(endpoint, timeout_s=60)
    client.hello(["tflite"])
    yield client, transport, tmp_path
    client.close()
    transport.stop()


def _hello_frames() -> list:
    return codec.encode(Message(type="hello_request", id="x", content={"protocol_version": PROTOCOL_VERSION}))


def test_only_the_host_that_started_the_agent_is_answered(agent):
    client, transport, _ = agent
    endpoint = client.endpoint
    assert endpoint.keys is not None
    cmdline = Path(f"/proc/{transport._proc.pid}/cmdline").read_bytes()
    assert endpoint.keys.agent_secret not in cmdline and b"QBENCH_KEYS" not in cmdline  # on stdin, never argv
    other = RunKeys.fresh()
    strangers = {
        "no keys": None,  # a plain client: the CURVE handshake never completes
        "another host's keys": other,  # knows nothing of this run
        "the agent's public key, its own client key": RunKeys(endpoint.keys.agent_public, b"", other.host_public,
                                                              other.host_secret),
    }
    for what, keys in strangers.items():
        sock = dealer(endpoint, keys)
        sock.send_multipart(_hello_frames())
        assert not sock.poll(1500), f"{what}: answered"
        sock.close()
    assert client.hello().agent_version  # the agent serves its host on


def _hostile_library(tmp: Path, marker: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a library with a constructor")
    source = tmp / "hostile.c"
    source.write_text(HOSTILE_C)
    out = tmp / "libhostile.so"
    subprocess.run([cc, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(out), str(source)], check=True,
                   timeout=60, capture_output=True)
    return out


def test_no_request_makes_a_worker_load_a_library_the_agent_was_not_started_with(agent):
    client, _, tmp = agent
    marker = tmp / "constructor-ran"
    library = _hostile_library(tmp, marker)
    model = tmp / "m.tflite"
    model.write_bytes(tflite_models.float_convnet())
    ref = client.ensure_model(model, "tflite")
    # the library uploaded as a "model": it is in the cache under a name the host can compute
    fake = client.ensure_model(library, "tflite")
    cached = tmp / "cache" / f"{fake.sha256}.tflite"
    assert cached.read_bytes() == library.read_bytes()
    x = {"input": np.zeros((1, *tflite_models.INPUT_SHAPE), np.float32)}
    for path in (cached, library, tmp / "cache" / ".." / "libhostile.so"):
        runner = LiteRTRunnerConfig(delegate="npu", delegate_path=str(path))
        with pytest.raises(AgentError) as err:
            client.benchmark(BenchmarkRequest(model=ref, runner=runner, timing=QUICK), x)
        assert err.value.info.code == "provider_missing" and "not given to the agent at start" in err.value.info.message
    assert not marker.exists()


def test_a_library_in_the_model_cache_is_refused_even_when_allowed(tmp_path):
    marker = tmp_path / "constructor-ran"
    library = _hostile_library(tmp_path, marker)
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / f"{hashlib.sha256(library.read_bytes()).hexdigest()}.tflite"
    shutil.copy(library, cached)
    transport = LocalTransport(cache_dir=str(cache))
    transport.allow_delegate(str(cached))  # a misconfiguration: the cache is writable by whoever uploads
    client = AgentClient(transport.start(), timeout_s=60)
    try:
        client.hello(["tflite"])
        model = tmp_path / "m.tflite"
        model.write_bytes(tflite_models.float_convnet())
        ref = client.ensure_model(model, "tflite")
        runner = LiteRTRunnerConfig(delegate="npu", delegate_path=str(cached))
        with pytest.raises(AgentError) as err:
            client.benchmark(BenchmarkRequest(model=ref, runner=runner, timing=QUICK),
                             {"input": np.zeros((1, *tflite_models.INPUT_SHAPE), np.float32)})
        assert err.value.info.code == "provider_missing"
        assert not marker.exists()
    finally:
        client.close()
        transport.stop()


def test_an_allowed_delegate_loads(tmp_path):
    library = TD.build_delegate(tmp_path)
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"))
    transport.allow_delegate(str(library))
    client = AgentClient(transport.start(), timeout_s=60)
    try:
        client.hello(["tflite"])
        model = tmp_path / "relu_chain.tflite"
        model.write_bytes(TD.relu_chain())
        ref = client.ensure_model(model, "tflite")
        runner = LiteRTRunnerConfig(delegate="relu", delegate_path=str(library),
                              delegate_options={"claim": "relu"})
        reply = client.benchmark(BenchmarkRequest(model=ref, runner=runner, timing=QUICK),
                                 {"x": np.zeros((1, 1, TD.WIDTH), np.float32)})
        assert reply.coverage["delegate"] == "relu" and reply.coverage["delegated_ops"] == 2
    finally:
        client.close()
        transport.stop()
