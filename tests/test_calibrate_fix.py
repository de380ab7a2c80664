"""`qbench calibrate` and `qbench fix` end to end: real CLI, real local agent, real ONNX Runtime.

The model has ONE sensitive spot by construction: a 1x1 conv produces 16 logits, one of which
carries a -1000 bias. Its int8 step is then about 4, which wipes out the other logits (spread ~1),
and the softmax over them turns that into a large output error. Keeping the logits conv in float
(its output tensor and weights) brings the output back: `fix` must find that layer and no other. Every figure that qbench reports is checked
against plain ONNX Runtime sessions on the files it wrote, and numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cli import load_report, qbench
from fix_checks import DATA, FAST, run_fix, sha
from qbench.host.formats.onnx import OnnxFormat
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.quantize.qdq_edit import QdqGraph

METHODS = ("minmax", "percentile", "entropy", "distribution")


def build_wide_logits(path: Path) -> Path:
    """x [1,4,8,8] -> stem -> stem_relu -> conv1 -> relu1 -> logits (1x1 conv, channel 0 biased by -1000)
    -> softmax -> head -> y."""
    rng = np.random.default_rng(0)
    bias = np.zeros(16, np.float32)
    bias[0] = -1000.0  # a channel the softmax ignores, but it sets the int8 range of the logits
    weights = {
        "w0": (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32),
        "w1": (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32),
        "w2": (rng.standard_normal((16, 8, 1, 1)) * 0.5).astype(np.float32),
        "b2": bias,
        "w3": (rng.standard_normal((4, 16, 1, 1)) * 0.5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["stem"], ["stem_relu"], name="stem_relu"),
        helper.make_node("Conv", ["stem_relu", "w1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "w2", "b2"], ["logits"], name="logits"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
        helper.make_node("Conv", ["probs", "w3"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "wide_logits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("calibrate-fix")
    build_wide_logits(tmp / "wide.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp / "calib.npz", x=rng.standard_normal((16, 1, 4, 8, 8)).astype(np.float32))
    np.savez(tmp / "eval.npz", x=rng.standard_normal((4, 1, 4, 8, 8)).astype(np.float32))
    return tmp


def _outputs(path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.stack([session.run(["y"], {"x": sample})[0] for sample in x]).astype(np.float64)


def _psnr(float_path, int8_path, eval_npz: Path) -> float:
    """Output PSNR recomputed here: plain ORT sessions, pooled over samples, peak = max|float|."""
    x = np.load(eval_npz)["x"]
    f, q = _outputs(float_path, x), _outputs(int8_path, x)
    mse = np.mean((f - q) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(np.max(np.abs(f)) ** 2 / mse)


@pytest.fixture(scope="module")
def calibrated(workdir, agent_cache):
    out = workdir / "calibrate"
    proc = qbench("calibrate", "wide.onnx", "--device", "local", "--methods", ",".join(METHODS), *DATA,
                  "--out", str(out), "--json", *FAST, cwd=workdir, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    return out, load_report(out), json.loads(proc.stdout)


@pytest.mark.slow
def test_calibrate_table_matches_each_methods_own_run(calibrated, workdir):
    out, report, printed = calibrated
    rows = {row["method"]: row for row in report["calibration"]["methods"]}
    assert list(rows) == list(METHODS) and printed["methods"] == report["calibration"]["methods"]
    prepared = out / "float.prepared.onnx"
    calibration = dict(np.load(workdir / "calib.npz"))
    for method, row in rows.items():
        own = load_report(out / method)
        assert row["output_psnr_db"] == own["summary"]["output_psnr_db"]
        assert row["latency_int8_ms"] == own["latency"]["int8"]["median_ms"]
        assert own["models"]["int8"]["sha256"] == row["sha256"] == sha(out / method / "model.int8.onnx")
        assert own["models"]["float"]["sha256"] == sha(prepared)
        assert row["output_psnr_db"] == pytest.approx(_psnr(prepared, out / method / "model.int8.onnx",
                                                            workdir / "eval.npz"), abs=1e-3)
        # same calibration samples for every method: quantizing here with the file gives the same bytes
        again = quantize_onnx(prepared, workdir / f"again-{method}.onnx", calibration, method=method,
                              reduce_range=own["settings"]["reduce_range"])  # the device's choice (auto)
        assert sha(again) == row["sha256"]


@pytest.mark.slow
def test_calibrate_layer_comparison_and_winner(calibrated):
    out, report, printed = calibrated
    rows = report["calibration"]["methods"]
    best = max(rows, key=lambda r: (r["output_psnr_db"], -r["latency_int8_ms"]))
    assert [r["method"] for r in rows if r["winner"]] == [best["method"]] == [printed["winner"]]
    assert report["calibration"]["winner"] == best["method"]
    assert sha(out / "model.int8.onnx") == best["sha256"] == report["models"]["int8"]["sha256"]
    assert report["models"]["int8"]["path"] == str((out / "model.int8.onnx").resolve())
    assert report["summary"]["output_psnr_db"] == best["output_psnr_db"]
    winner_layers = {x["name"]: x["psnr_db"] for x in load_report(out / best["method"])["layers"]}
    for row in rows:
        layers = {x["name"]: x["psnr_db"] for x in load_report(out / row["method"])["layers"]}
        common = [n for n in layers if n in winner_layers]
        finite = [layers[n] - winner_layers[n] for n in common
                  if layers[n] is not None and winner_layers[n] is not None]
        assert row["layers_compared"] == len(common)
        assert row["layer_delta_mean_db"] == pytest.approx(np.mean(finite), abs=1e-3)
        assert row["layers_worse"] == sum(1 for n in common if layers[n] is not None and winner_layers[n]
                                          is not None and layers[n] < winner_layers[n] - 1.0)
        psnrs = [v for v in layers.values() if v is not None]
        assert row["layer_psnr_min_db"] == pytest.approx(min(psnrs), abs=1e-3)
        assert row["layer_psnr_mean_db"] == pytest.approx(np.mean(psnrs), abs=1e-3)


def _model_psnr(out: Path, model, workdir: Path) -> float:
    return _psnr(out / "float.prepared.onnx", model, workdir / "eval.npz")


@pytest.fixture(scope="module")
def fixed(workdir, agent_cache):
    out = workdir / "fix"
    proc, report = run_fix(workdir, "wide.onnx", out, "--target-psnr", "35", "--blocks", "8", cache=agent_cache)
    return out, proc, report


@pytest.mark.slow
def test_fix_keeps_the_broken_layer_in_float_and_nothing_else(fixed):
    out, proc, report = fixed
    section = report["fix"]
    chosen = section["chosen"]
    assert section["met"] and chosen["family"] == "float" and chosen["int16_blocks"] == []
    blocks = {b["block"]: b["ops"] for b in section["blocks"]}
    assert [op for b in chosen["float_blocks"] for op in blocks[b]] == ["logits"]  # the wide-logits conv, alone
    assert chosen["int8_share"] == pytest.approx(1 - 1 / sum(len(ops) for ops in blocks.values()), abs=1e-4)
    # the sweep found the damage in that block: the lowest "only int8" figure (fix measures no keep-float trials)
    rows = report["sensitivity"]["blocks"]
    worst = min(rows, key=lambda r: r["only_int8_psnr_db"] if r["only_int8_psnr_db"] is not None else 1e9)
    assert blocks[worst["block"]] == ["logits"] and {r["keep_float_psnr_db"] for r in rows} == {None}
    assert "chosen" in proc.stdout and "target 35 dB, no broken output met" in proc.stderr


@pytest.mark.slow
def test_fix_figures_agree_with_plain_onnxruntime(fixed, workdir):
    out, _, report = fixed
    section = report["fix"]
    for row in section["pareto"]:
        if row["exact"]:
            assert row["output_psnr_db"] is None and math.isinf(_model_psnr(out, row["model"], workdir))
        else:
            assert row["output_psnr_db"] == pytest.approx(_model_psnr(out, row["model"], workdir), abs=1e-3)
        timed = row["pareto"] and (row["family"] == "baseline" or (row["exact"] or row["output_psnr_db"] >= 35))
        assert (row["latency_int8_ms"] is not None) == timed
    for row in section["methods"]:
        assert row["output_psnr_db"] == pytest.approx(_model_psnr(out, row["model"], workdir), abs=1e-3)
    # the chosen point verified by a full run: report.json is run's, for out/model.int8.onnx
    final = out / "model.int8.onnx"
    assert sha(final) == sha(section["chosen"]["model"]) == report["models"]["int8"]["sha256"]
    assert report["summary"]["output_psnr_db"] == pytest.approx(_model_psnr(out, final, workdir), abs=1e-3)
    assert report["summary"]["output_psnr_db"] == pytest.approx(section["chosen"]["output_psnr_db"], abs=1e-3)
    assert {"layers", "outputs", "latency", "memory", "device", "settings"} <= set(report)
    assert len(report["latency"]["int8"]["samples_ms"]) >= 3


@pytest.mark.slow
def test_fix_settings_reproduce_the_final_model(fixed):
    out, _, report = fixed
    section = report["fix"]
    settings = section["settings"]
    corrected = settings.get("bias_correction", False)
    (base,) = [Path(m["model"]) for m in section["methods"]
               if m["method"] == settings["method"] == section["method"] and m["bias_correction"] == corrected]
    # the format's own quantization, as the settings say (the bias correction included when chosen)
    again = OnnxFormat().quantize(settings, out.parent / "again-base.onnx", dict(np.load(settings["calibration"])), False)
    assert sha(again) == sha(base)
    edits = settings["edits"]
    ranges = {t: QdqGraph(edits["range_models"][m], settings["float_path"]).ranges()[t]
              for t, m in edits["ranges"].items()}
    edited = QdqGraph(again, settings["float_path"]).write(out.parent / "again-fix.onnx", edits["float_tensors"],
                                                           edits["int16_tensors"], edits["float_weights"], ranges)
    assert sha(edited) == sha(out / "model.int8.onnx")
    assert edits["float_tensors"] == ["logits"] and edits["float_weights"] == ["logits"]


@pytest.mark.slow
def test_fix_exits_3_when_no_configuration_meets_the_target(workdir, agent_cache):
    out = workdir / "unreachable"
    proc, report = run_fix(workdir, "wide.onnx", out, "--target-psnr", "200", "--remedies", "int16", "--methods",
                           "minmax", "--json", cache=agent_cache, code=3)
    section = report["fix"]
    assert not section["met"] and not json.loads(proc.stdout)["met"]
    assert section["stop"].startswith("no configuration reached 200 dB, no broken output")
    assert {row["family"] for row in section["pareto"]} == {"baseline", "int16"}
    best = max(section["pareto"], key=lambda r: r["output_psnr_db"])
    assert sha(out / "model.int8.onnx") == sha(best["model"])


@pytest.mark.slow
def test_sensitivity_sweep_and_bisection(workdir, agent_cache):
    out = workdir / "sensitivity"
    proc = qbench("sensitivity", "wide.onnx", "--device", "local", "--bisect", "35", *DATA, "--out", str(out),
                  *FAST, cwd=workdir, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    section = load_report(out)["sensitivity"]
    rows = {r["first_op"]: r for r in section["blocks"]}
    assert [r["ops"] for r in rows.values()] == [1] * len(rows)  # fewer ops than --blocks: one op per block
    assert min(rows.values(), key=lambda r: r["only_int8_psnr_db"])["first_op"] == "logits"
    # each trial carries its verdicts, judged as its report would be (None would mean not judged)
    assert {r["only_int8_verdict"] for r in rows.values()} <= {"ok", "degraded", "broken"}
    assert {r["keep_float_verdict"] for r in rows.values()} <= {"ok", "degraded", "broken"}
    # one trial rebuilt here and measured with plain ORT: only `logits` int8, everything else float
    graph = QdqGraph(out / "quantized" / "model.int8.onnx", out / "float.prepared.onnx")
    (block,) = [op for op in graph.ops if op.name == "logits"]
    only = graph.write(out.parent / "only-logits.onnx", set(graph.pairs) - set(block.writes), (),
                       [op.name for op in graph.ops if op.name != "logits"])
    assert rows["logits"]["only_int8_psnr_db"] == pytest.approx(_model_psnr(out, only, workdir), abs=1e-3)
    found = section["bisect"]
    assert found["ops_float"] == 3 and found["first_ops"] == ["stem", "conv1", "logits"]
    steps = {s["ops_float"]: s["psnr_db"] for s in found["steps"]}
    assert steps[3] >= 35 > steps[2]
    assert "Sensitivity measured on the device" in (out / "report.html").read_text()
    assert "logits" in proc.stdout and "bisect (from the start): 3 of 5 ops" in proc.stdout


@pytest.mark.slow
def test_calibrate_and_fix_refuse_what_they_cannot_do(workdir):
    proc = qbench("calibrate", "wide.onnx", "--int8", "wide.onnx", cwd=workdir)
    assert proc.returncode == 1 and "--int8 does not apply" in proc.stderr
    proc = qbench("calibrate", "wide.onnx", "--methods", "minmax,bogus", cwd=workdir)
    assert proc.returncode == 1 and "--methods" in proc.stderr
    proc = qbench("fix", "wide.onnx", *DATA, cwd=workdir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "qbench: error: give a target: --target-psnr DB, --target-top1 SHARE, or both" in proc.stderr
    proc = qbench("fix", "wide.onnx", "--target-psnr", "30", "--max-steps", "3", cwd=workdir)
    assert proc.returncode == 2 and "No such option: --max-steps" in proc.stderr
    proc = qbench("fix", "wide.onnx", "--target-psnr", "30", "--calibration-method", "entropy", cwd=workdir)
    assert proc.returncode == 1 and "--calibration-method does not apply" in proc.stderr
