"""Per-op kernel times measured by a real agent with the real ONNX Runtime profiler.

The op types and call counts are checked against an independent source: the graph ONNX Runtime
itself optimizes (``SessionOptions.optimized_model_filepath``), counted here with onnx.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tflite_models
from cli import load_report, qbench
from qbench.agent.runners import ort_profile
from qbench.agent.runners.base import ProfilingUnavailable
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.transport.client import AgentClient
from qbench.host.transport.local import LocalTransport
from qbench.protocols.messages import BenchmarkRequest, LiteRTRunnerConfig, OrtRunnerConfig, TimingConfig

RUNS = 12
SHAPE = (1, 3, 48, 48)
TIMING = TimingConfig(warmup=2, runs=10, min_seconds=0.0)
LITERT_NOTE = "LiteRT's Python API exposes no op profiler"


def _build_model(path) -> str:
    """Conv/Relu/Conv/Relu/Add/GlobalAveragePool/Flatten at 48x48: kernels of tens of microseconds and more."""
    rng = np.random.default_rng(0)
    weights = {"w1": (24, 3, 3, 3), "b1": (24,), "w2": (24, 24, 3, 3), "b2": (24,)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n) for n, s in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Add", ["r1", "r2"], ["a"], name="add"),
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flatten")]
    graph = helper.make_graph(nodes, "profiled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    float_path = _build_model(tmp / "float.onnx")
    calibration = {"x": np.random.default_rng(1).standard_normal((8, *SHAPE)).astype(np.float32)}
    int8_path = str(quantize_onnx(float_path, tmp / "int8.onnx", calibration))
    tflite_path = tflite_models.write_models(tmp)["float"]
    return tmp, {"float": float_path, "int8": int8_path, "tflite": str(tflite_path)}


@pytest.fixture(scope="module")
def agent(models):
    tmp, _ = models
    scratch = tmp / "agent-tmp"  # the agent's TMPDIR: where ORT's profile files would be left
    scratch.mkdir()
    transport = LocalTransport(cache_dir=str(tmp / "cache"), env={"TMPDIR": str(scratch)})
    client = AgentClient(transport.start(), timeout_s=120)
    client.hello()
    yield client, scratch
    client.close()
    transport.stop()


def _inputs(shape=SHAPE) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(2).standard_normal((3, *shape)).astype(np.float32)}


def _optimized_op_counts(path: str, tmp) -> collections.Counter:
    """Op types of the graph ONNX Runtime runs, as it saves it itself: one kernel call per node and run."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.optimized_model_filepath = str(tmp / (os.path.basename(path) + ".optimized.onnx"))
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_agent_profiles_every_kernel_of_the_optimized_graph(agent, models, kind):
    client, scratch = agent
    tmp, paths = models
    ref = client.ensure_model(paths[kind], "onnx")
    req = BenchmarkRequest(model=ref, runner=OrtRunnerConfig(threads=1), timing=TIMING, profile_runs=RUNS)
    reply = client.benchmark(req, _inputs())
    assert reply.profile_note is None and reply.profile
    # Calls per op type are the optimized graph's node counts times the runs: the first run is dropped.
    expected = _optimized_op_counts(paths[kind], tmp)
    assert {e["op_type"]: e["calls"] for e in reply.profile} == {op: n * RUNS for op, n in expected.items()}
    if kind == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= set(expected)
        assert any(op.startswith("QLinear") for op in expected)  # a fused int8 kernel, not only Q/DQ around float
    for entry in reply.profile:
        assert entry["provider"] == "CPUExecutionProvider"
        assert entry["total_ms"] > 0 and entry["mean_ms"] == pytest.approx(entry["total_ms"] / RUNS)
    assert sum(e["share"] for e in reply.profile) == pytest.approx(1.0)
    totals = [e["total_ms"] for e in reply.profile]
    assert totals == sorted(totals, reverse=True)
    # No bound against the timed latency: profiling adds overhead inside every kernel, so the kernel sum
    # per profiled run exceeds the timed median (by 5-25 % on an idle 2-core x86, over 2x under load).
    # The trace file is deleted; importing onnxruntime leaves a `.ses` file of its own there.
    assert [path.name for path in scratch.rglob("*")] in ([], [".ses"])


def test_profiling_is_off_unless_asked(agent, models):
    client, _ = agent
    _, paths = models
    ref = client.ensure_model(paths["float"], "onnx")
    reply = client.benchmark(BenchmarkRequest(model=ref, timing=TIMING), _inputs())
    assert reply.profile == [] and reply.profile_note is None


def test_litert_says_why_it_has_no_profile(agent, models):
    from ai_edge_litert.interpreter import Interpreter

    # The note is a claim about this API: it must fail here the day LiteRT's interpreter gains a profiler.
    assert not [name for name in dir(Interpreter) if "profil" in name.lower()]
    client, _ = agent
    _, paths = models
    ref = client.ensure_model(paths["tflite"], "tflite")
    req = BenchmarkRequest(model=ref, runner=LiteRTRunnerConfig(), timing=TIMING, profile_runs=3)
    reply = client.benchmark(req, {"input": tflite_models.calibration_samples(2)})
    assert reply.profile == [] and reply.profile_note == LITERT_NOTE
    assert reply.latency.runs >= TIMING.runs  # timing is unaffected


def _event(cat, name, ts, dur=1, **args):
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X", "args": args}


def test_summary_drops_the_first_run_and_groups_by_op_and_provider():
    events = [
        _event("Session", "model_run", 0, 100),
        _event("Node", "conv_kernel_time", 1, 90, op_name="Conv", provider="CPUExecutionProvider"),
        _event("Session", "model_run", 200, 50),
        _event("Node", "conv_fence_before", 201, 7, op_name="Conv", provider="CPUExecutionProvider"),
        _event("Node", "conv_kernel_time", 202, 30, op_name="Conv", provider="CPUExecutionProvider"),
        _event("Node", "mm_kernel_time", 233, 10, op_name="MatMul", provider="XnnpackExecutionProvider"),
        _event("Session", "model_run", 300, 50),
        _event("Node", "conv_kernel_time", 301, 20, op_name="Conv", provider="CPUExecutionProvider"),
        _event("Node", "mm_kernel_time", 322, 20, op_name="MatMul", provider="CPUExecutionProvider"),
    ]
    summary = {(t.op_type, t.provider): t for t in ort_profile.summarize(events)}
    assert set(summary) == {("Conv", "CPUExecutionProvider"), ("MatMul", "XnnpackExecutionProvider"),
                            ("MatMul", "CPUExecutionProvider")}
    conv = summary[("Conv", "CPUExecutionProvider")]
    assert (conv.total_ms, conv.calls, conv.mean_ms, conv.share) == pytest.approx((0.05, 2, 0.025, 0.625))
    with pytest.raises(ProfilingUnavailable, match="model_run"):
        ort_profile.summarize(events[:2])


def test_summary_median_is_per_run_and_ignores_one_slow_run():
    conv = dict(op_name="Conv", provider="CPUExecutionProvider")
    events = [_event("Session", "model_run", 0, 10), _event("Node", "c_kernel_time", 1, 900, **conv)]
    for start, micros in ((100, 30), (200, 20), (300, 2000), (400, 25)):  # run 3: a page fault, a preemption
        events += [_event("Session", "model_run", start, 50), _event("Node", "c_kernel_time", start + 1, micros, **conv),
                   _event("Node", "c_kernel_time", start + 5, micros, **conv)]
    events.append(_event("Node", "mm_kernel_time", 402, 8, op_name="MatMul", provider="CPUExecutionProvider"))
    summary = {t.op_type: t for t in ort_profile.summarize(events)}
    assert summary["Conv"].mean_ms == pytest.approx((60 + 40 + 4000 + 50) / 4 / 1000)
    assert summary["Conv"].median_ms == pytest.approx(0.055)  # runs of 60, 40, 4000, 50 us
    assert summary["MatMul"].median_ms == pytest.approx(0.0)  # in one run of four
    assert summary["Conv"].calls == 8


@pytest.mark.slow
def test_run_writes_the_profile_into_report_and_html(tmp_path, agent_cache):
    model = _build_model(tmp_path / "m.onnx")
    fast = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet", "--samples", "2"]
    proc = qbench("run", model, "--out", "o", "--profile-runs", "4", *fast, cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    profile = load_report(tmp_path / "o")["profile"]
    assert profile["runs"] == 4 and "notes" not in profile
    assert {"Conv", "Add"} <= {e["op_type"] for e in profile["float"]}
    assert any(e["op_type"] == "QuantizeLinear" for e in profile["int8"])
    html = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "Kernel time per inference by op type" in html
    off = qbench("run", model, "--out", "off", "--profile-runs", "0", *fast, cwd=tmp_path, cache=agent_cache)
    assert off.returncode == 0, off.stderr
    assert "profile" not in load_report(tmp_path / "off")
