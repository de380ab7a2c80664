"""The model cache shared by several agents: uploads of one model at once, expiry of abandoned parts, LRU eviction."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import published as P
from qbench.agent import cache as cache_mod
from qbench.agent.cache import ModelCache
from qbench.host.transport.client import AgentClient
from qbench.host.transport.local import LocalTransport
from qbench.protocols.messages import BenchmarkRequest, ModelRef, ProtocolError, TimingConfig

MIB = 1024 * 1024


def _ref(data: bytes, fmt: str = "onnx") -> ModelRef:
    return ModelRef(hashlib.sha256(data).hexdigest(), fmt)


def test_interleaved_uploads_of_one_model_by_three_agents_all_complete(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 20 * MIB, dtype=np.uint8).tobytes()
    ref, chunk = _ref(data), 8 * MIB
    caches = [ModelCache(tmp_path, 1 << 30) for _ in range(3)]  # three agents, one directory
    for offset in range(0, len(data), chunk):  # chunk by chunk, in turn: the interleaving that broke .part
        for cache in caches:
            received, complete = cache.write_chunk(ref, len(data), offset, memoryview(data[offset:offset + chunk]))
            assert received == min(offset + chunk, len(data)) and complete == (received == len(data))
    assert (tmp_path / f"{ref.sha256}.onnx").read_bytes() == data
    assert not list(tmp_path.glob("*.part"))


def test_an_upload_stops_once_another_agent_published_the_model(tmp_path):
    data = os.urandom(3 * MIB)
    ref = _ref(data)
    first, second = ModelCache(tmp_path, 1 << 30), ModelCache(tmp_path, 1 << 30)
    assert second.write_chunk(ref, len(data), 0, memoryview(data[:MIB])) == (MIB, False)
    assert first.write_chunk(ref, len(data), 0, memoryview(data)) == (len(data), True)
    assert second.write_chunk(ref, len(data), MIB, memoryview(data[MIB:2 * MIB])) == (len(data), True)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("sha", ["0" * 64 + "\n", "0" * 63, "A" * 64, "0" * 64 + "\n0"])
def test_a_sha256_must_match_whole(tmp_path, sha):
    with pytest.raises(ProtocolError) as err:
        ModelCache(tmp_path, 1 << 20).path(ModelRef(sha, "onnx"))
    assert err.value.info.code == "bad_message"


def test_stale_partial_uploads_expire(tmp_path):
    stale, fresh = tmp_path / f"{'a' * 64}.onnx.1.part", tmp_path / f"{'b' * 64}.onnx.2.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - cache_mod.PART_EXPIRY_S - 60
    os.utime(stale, (old, old))
    ModelCache(tmp_path, 1 << 20)  # an agent starting up
    assert not stale.exists() and fresh.exists()


def test_the_least_recently_used_models_are_evicted_over_the_cap(tmp_path):
    cache = ModelCache(tmp_path, 1 << 30, max_bytes=3 * MIB)
    models = [os.urandom(MIB) for _ in range(4)]
    old = time.time() - cache_mod.IN_USE_S - 60
    for k, data in enumerate(models[:3]):
        assert cache.write_chunk(_ref(data), len(data), 0, memoryview(data))[1]
        os.utime(cache.path(_ref(data)), (old + k, old + k))  # used in order 0, 1, 2, long ago
    cache.require(_ref(models[0]))  # 0 is used again now: 1 is the least recently used
    assert cache.write_chunk(_ref(models[3]), MIB, 0, memoryview(models[3]))[1]
    assert [cache.has(_ref(d)) for d in models] == [True, False, True, True]


def test_a_model_used_recently_is_not_evicted_even_over_the_cap(tmp_path):
    cache = ModelCache(tmp_path, 1 << 30, max_bytes=MIB)
    a, b = os.urandom(MIB), os.urandom(MIB)
    for data in (a, b):
        assert cache.write_chunk(_ref(data), MIB, 0, memoryview(data))[1]
    assert cache.has(_ref(a)) and cache.has(_ref(b))  # a may be about to load in another agent's job


def test_three_agents_upload_one_published_pair_at_once_and_time_it(tmp_path):
    """Three runs' agents on one cache, a float model over the 8 MiB chunk (ppocr-v4-rec, 10.4 MiB), rounds."""
    model = P.model("ppocr-v4-rec")
    path = Path(model.path)
    assert path.stat().st_size > 8 * MIB
    x = P.data(model, 1, split="eval")  # (samples, *input shape)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    agents = [LocalTransport(cache_dir=str(cache)) for _ in range(3)]
    clients = [AgentClient(t.start(), timeout_s=300) for t in agents]
    try:
        for client in clients:
            client.hello(["onnxruntime"])
        for _ in range(3):
            for f in cache.glob("*.onnx"):
                f.unlink()
            results: list = [None] * 3

            def run(k: int) -> None:
                try:
                    ref = clients[k].ensure_model(path, "onnx")
                    timing = TimingConfig(warmup=0, runs=1, min_seconds=0)
                    results[k] = clients[k].benchmark(BenchmarkRequest(model=ref, timing=timing), x).latency.runs
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    results[k] = exc

            threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            assert results == [1, 1, 1]
            assert hashlib.sha256((cache / f"{sha}.onnx").read_bytes()).hexdigest() == sha
            assert not list(cache.glob("*.part"))
    finally:
        for client, transport in zip(clients, agents):
            client.close()
            transport.stop()


def test_a_devices_cache_cap_reaches_its_agent(tmp_path):
    """devices.yaml ``cache_max_mb`` is the agent's cap: its next upload evicts an old model above it."""
    from qbench.host.inventory import Device
    from qbench.host.transport.factory import transport_for

    transport = transport_for(Device(name="small-disk", transport="local", cache_max_mb=1))
    transport.cache_dir = str(tmp_path / "cache")
    old_model = os.urandom(2 * MIB)
    old_path = tmp_path / "cache" / f"{_ref(old_model).sha256}.onnx"
    old_path.parent.mkdir()
    old_path.write_bytes(old_model)
    long_ago = time.time() - cache_mod.IN_USE_S - 60
    os.utime(old_path, (long_ago, long_ago))
    new_model = tmp_path / "new.onnx"
    new_model.write_bytes(os.urandom(4096))
    client = AgentClient(transport.start(), timeout_s=60)
    try:
        client.hello()
        client.ensure_model(new_model, "onnx")
    finally:
        client.close()
        transport.stop()
    assert not old_path.exists()
    assert (tmp_path / "cache" / f"{_ref(new_model.read_bytes()).sha256}.onnx").exists()
