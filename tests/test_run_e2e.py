"""`qbench run --device local` end to end: real CLI, real agent process, real ZeroMQ, real ONNX Runtime.

Figures are checked against an independent computation: plain onnxruntime sessions on the
models qbench wrote, tensors exposed with onnx.helper, PSNR computed here with numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cli import load_report, qbench
from models import (build_control_flow, build_convnet, build_dynamic_opset11, build_two_inputs_int64,
                    write_convnet_samples)
from plain_ort import session as _session

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet"]


def _psnr(f: np.ndarray, q: np.ndarray) -> float:
    f, q = f.astype(np.float64), q.astype(np.float64)
    return 10 * np.log10(np.max(np.abs(f)) ** 2 / np.mean((f - q) ** 2))


@pytest.fixture(scope="module")
def convnet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("convnet")
    home = tmp / "home"  # a fresh agent cache: the first run must upload, the second must not
    model = build_convnet(tmp / "convnet.onnx")
    write_convnet_samples(tmp, 7)
    out = tmp / "out"
    proc = qbench("run", "--device", "local", str(model), "--data", "eval.npz", "--calibration", "calib.npz",
                  "--out", str(out), *FAST, cwd=tmp, cache=home)
    assert proc.returncode == 0, proc.stderr
    return tmp, out, load_report(out), proc


def test_report_has_every_section_of_the_schema(convnet_run):
    _, out, report, _ = convnet_run
    assert report["schema"] == "qbench.report/1" and report["status"] == "ok"
    for key in ("device", "models", "outputs", "layers", "unmatched", "latency", "memory", "settings", "summary"):
        assert key in report
    assert report["device"]["runtime"] == "onnxruntime" and report["device"]["arch"]
    assert (out / "model.int8.onnx").is_file()
    assert report["models"]["int8"]["path"].endswith("model.int8.onnx")
    for kind in ("float", "int8"):
        lat = report["latency"][kind]
        assert lat["runs"] == len(lat["samples_ms"]) >= 3
        assert lat["min_ms"] <= lat["median_ms"] <= lat["p99_ms"]
        assert report["memory"][kind]["peak_mb"] > report["memory"][kind]["delta_mb"] > 0
    assert report["latency"]["speedup"] == pytest.approx(
        report["latency"]["float"]["median_ms"] / report["latency"]["int8"]["median_ms"], rel=1e-3)


def test_output_psnr_matches_an_independent_computation(convnet_run):
    tmp, out, report, _ = convnet_run
    x = np.load(tmp / "eval.npz")["x"]
    float_sess = _session(report["models"]["float"]["path"])
    int8_sess = _session(report["models"]["int8"]["path"])
    f = np.stack([float_sess.run(["probs"], {"x": s})[0] for s in x])
    q = np.stack([int8_sess.run(["probs"], {"x": s})[0] for s in x])
    (probs,) = [o for o in report["outputs"] if o["name"] == "probs"]
    assert probs["psnr_db"] == pytest.approx(_psnr(f, q), abs=1e-3)
    assert report["summary"]["output_psnr_db"] == probs["psnr_db"]


def test_layer_psnr_matches_an_independent_computation(convnet_run):
    tmp, out, report, _ = convnet_run
    x = np.load(tmp / "eval.npz")["x"]
    int8_model = onnx.load(report["models"]["int8"]["path"])
    inits = {t.name: numpy_helper.to_array(t) for t in int8_model.graph.initializer}
    layers = [layer for layer in report["layers"] if layer["rule"] == "qdq" and layer["op_type"] != "Input"]
    f_sess = _session(report["models"]["float"]["path"], [x["name"] for x in layers])
    q_sess = _session(report["models"]["int8"]["path"], [x["int8_name"] for x in layers])
    plain = _session(report["models"]["int8"]["path"])
    # The premise of any capture: exposing the tensors must not change what the int8 model computes.
    for s in x:
        np.testing.assert_array_equal(q_sess.run(["probs"], {"x": s})[0], plain.run(["probs"], {"x": s})[0])
    for layer in layers:
        (qnode,) = [n for n in int8_model.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == layer["int8_name"]]
        scale, zero = inits[qnode.input[1]], inits[qnode.input[2]]
        f = np.stack([f_sess.run([layer["name"]], {"x": s})[0] for s in x])
        q = np.stack([q_sess.run([layer["int8_name"]], {"x": s})[0] for s in x])
        # DequantizeLinear's float32 output (the int8 tensor as the graph sees it); sums in float64
        deq = ((q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float64)
        assert layer["psnr_db"] == pytest.approx(_psnr(f, deq), abs=1e-3), layer["name"]
        assert layer["mse"] == pytest.approx(np.mean((f.astype(np.float64) - deq) ** 2), rel=1e-6)
    assert len(layers) >= 5


def test_layers_are_in_topological_order_with_unmatched_listed(convnet_run):
    _, _, report, _ = convnet_run
    names = [layer["name"] for layer in report["layers"]]
    assert names.index("x") < names.index("relu1") < names.index("add") < names.index("probs")
    assert [layer["index"] for layer in report["layers"]] == list(range(len(names)))
    unmatched = {u["name"]: u["reason"] for u in report["unmatched"]}
    assert "conv1" in unmatched and "fused" in unmatched["conv1"]  # Relu folded into the quantized Conv
    assert report["capture"]["fidelity_max_abs_diff"] == 0.0
    # --memory-budget auto (the default): the agent's quarter of its available memory, within bounds
    assert report["capture"]["budget_auto"] and 16 <= report["capture"]["budget_mb"] <= 1024


def test_terminal_output_shows_summary_and_worst_layers(convnet_run):
    _, _, _, proc = convnet_run
    assert "latency median" in proc.stdout and "speedup" in proc.stdout
    assert "worst layers" in proc.stdout and "output probs" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_second_run_uploads_no_model_bytes(convnet_run):
    tmp, out, report, _ = convnet_run
    sizes = report["models"]["float"]["size_bytes"] + report["models"]["int8"]["size_bytes"]
    assert report["transfer"]["model_bytes_uploaded"] == sizes
    again = tmp / "again"
    proc = qbench("run", report["models"]["float"]["path"], "--int8", report["models"]["int8"]["path"],
                  "--data", "eval.npz", "--out", str(again), *FAST, cwd=tmp, cache=tmp / "home")
    assert proc.returncode == 0, proc.stderr
    assert load_report(again)["transfer"]["model_bytes_uploaded"] == 0


def test_dynamic_dims_and_old_opset(tmp_path, agent_cache):
    model = build_dynamic_opset11(tmp_path / "dyn.onnx")
    proc = qbench("run", str(model), "--input-shape", "x:2,3,8,8", "--samples", "2", "--out", "o", *FAST,
                  cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "o")
    assert report["outputs"][0]["psnr_db"] > 20
    prepared = onnx.load(report["models"]["float"]["path"])
    assert max(o.version for o in prepared.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert [d.dim_value for d in prepared.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 8, 8]


def test_two_inputs_with_int64_and_an_exact_output(tmp_path, agent_cache):
    model = build_two_inputs_int64(tmp_path / "two.onnx")
    proc = qbench("run", str(model), "--samples", "3", "--out", "o", *FAST, cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    outputs = {o["name"]: o for o in load_report(tmp_path / "o")["outputs"]}
    assert outputs["label"]["kind"] == "exact" and outputs["label"]["psnr_db"] is None
    assert outputs["label"]["elements"] == 3
    assert outputs["probs"]["kind"] == "float" and outputs["probs"]["psnr_db"] is not None


def test_control_flow_model(tmp_path, agent_cache):
    model = build_control_flow(tmp_path / "cf.onnx")
    proc = qbench("run", str(model), "--samples", "2", "--out", "o", "--json", *FAST, cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "o")
    assert report["status"] == "ok" and report["layers"]


def test_gates_exit_code_json_summary_and_artifacts(convnet_run, agent_cache):
    tmp, _, report, _ = convnet_run
    psnr = report["summary"]["output_psnr_db"]
    common = [str(tmp / "convnet.onnx"), "--int8", report["models"]["int8"]["path"], "--data", "eval.npz",
              "--db", str(tmp / "runs.sqlite"), "--json", *FAST]
    passed = qbench("run", *common, "--out", "gate-pass", "--fail-under-psnr", str(psnr - 1), cwd=tmp, cache=agent_cache)
    failed = qbench("run", *common, "--out", "gate-fail", "--fail-under-psnr", str(psnr + 1), cwd=tmp, cache=agent_cache)
    assert passed.returncode == 0, passed.stderr
    assert failed.returncode == 3, failed.stderr  # ran fine, failed a gate: kept apart from errors (1)
    import json

    summary = json.loads(failed.stdout)
    assert summary["gates_failed"] == ["fail_under_psnr"] and summary["output_psnr_db"] == pytest.approx(psnr, abs=0.01)
    for name in ("report.json", "report.html", "layers.csv", "report.modelexplorer.json"):
        assert (tmp / "gate-fail" / name).is_file()
    assert json.loads(passed.stdout)["run_id"] + 1 == summary["run_id"]


def test_accuracy_only_captures_every_layer_without_timing(convnet_run, agent_cache):
    tmp, _, report, _ = convnet_run
    common = [str(tmp / "convnet.onnx"), "--int8", report["models"]["int8"]["path"], "--data", "eval.npz",
              "--accuracy-only", "--quiet"]
    proc = qbench("run", *common, "--out", "acc", cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    only = load_report(tmp / "acc")
    assert "latency" not in only and "memory" not in only and only["settings"]["accuracy_only"] is True
    assert "not measured" in proc.stdout
    # the same pair, the same samples: the same per-layer figures as the timed run
    assert [x["psnr_db"] for x in only["layers"]] == pytest.approx([x["psnr_db"] for x in report["layers"]])
    refused = qbench("run", *common, "--out", "acc-gate", "--fail-under-speedup", "1.5", cwd=tmp, cache=agent_cache)
    assert refused.returncode == 1 and "need timing" in refused.stderr and "Traceback" not in refused.stderr
