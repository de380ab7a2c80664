"""`qbench calibrate` and `qbench fix` end to end: real CLI, real local agent, real ONNX Runtime.

The model has ONE sensitive spot by construction: a 1x1 conv produces 16 logits, one of which
carries a -1000 bias. Its int8 step is then about 4, which wipes out the other logits (spread ~1),
and the softmax over them turns that into a large output error. Keeping the softmax in float
(with its logits input) brings the output back. Every figure that qbench reports is checked
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
from fix_checks import (
    DATA, FAST, check_moved_one_layer, check_steps_are_real, check_stops_at_the_step_budget, run_fix, sha,
)
from qbench.host.fix import Fixer
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.session import RunSettings
from qbench.host.transport.local import LocalTransport
from qbench.host.trials import Trials
from qbench.protocols.messages import TimingConfig

METHODS = ("minmax", "percentile", "entropy", "distribution")
SENSITIVE = "probs"  # the softmax output: the drop happens there, from its wide-range logits input


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
    return 10 * math.log10(np.max(np.abs(f)) ** 2 / np.mean((f - q) ** 2))


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
        again = quantize_onnx(prepared, workdir / f"again-{method}.onnx", calibration, method=method)
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


def _check_steps_are_real(out: Path, section: dict, workdir: Path) -> None:
    """Each measured step: its own report from an agent run, output PSNR as recomputed here."""
    check_steps_are_real(section, lambda model: _psnr(out / "float.prepared.onnx", model, workdir / "eval.npz"))


@pytest.mark.slow
def test_fix_reaches_the_target_by_moving_the_sensitive_layer(workdir, agent_cache):
    out = workdir / "fix"
    proc, report = run_fix(workdir, "wide.onnx", out, "--target-psnr", "35", cache=agent_cache)
    section = report["fix"]
    check_moved_one_layer(section, SENSITIVE)
    _check_steps_are_real(out, section, workdir)
    # the final report is `run`'s, for the final model, written as out/model.int8.onnx
    final = out / "model.int8.onnx"
    assert report["models"]["int8"]["path"] == str(final.resolve())
    assert report["models"]["int8"]["sha256"] == sha(final)
    assert report["summary"]["output_psnr_db"] >= 35
    assert report["summary"]["output_psnr_db"] == pytest.approx(
        _psnr(out / "float.prepared.onnx", final, workdir / "eval.npz"), abs=1e-3)
    assert {"layers", "outputs", "latency", "memory", "device", "settings"} <= set(report)
    # the recorded settings reproduce the final model byte for byte
    settings = section["settings"]
    assert settings["nodes_to_exclude"] == ["head", "logits", "softmax"] and settings["tensor_overrides"] == {}
    again = quantize_onnx(settings["float_path"], workdir / "again-fix.onnx", dict(np.load(settings["calibration"])),
                          method=settings["method"], activation_type=settings["activation_type"],
                          per_channel=settings["per_channel"], nodes_to_exclude=settings["nodes_to_exclude"])
    assert sha(again) == sha(final)
    assert "in float: probs" in proc.stderr and "baseline" in proc.stdout


@pytest.mark.slow
def test_revert_pass_drops_a_fallback_that_did_not_help(workdir, agent_cache):
    """A ranking that names a harmless layer first: its fallback is kept, then reverted."""

    def harmless_first(layers, weights=None, limit=None):
        order = ["relu1", SENSITIVE]
        return [{"name": name, "score": 1.0, "reasons": []} for name in order]

    out = workdir / "revert"
    base = RunSettings(model=workdir / "wide.onnx", out_dir=out, data=workdir / "eval.npz",
                       calibration=workdir / "calib.npz", profile_runs=0,
                       timing=TimingConfig(warmup=1, runs=3, min_seconds=0))
    trials = Trials(base, lambda: LocalTransport(cache_dir=str(agent_cache / "agent-cache")))
    result = Fixer(trials, 35.0, rank=harmless_first).run()
    steps = result.report["fix"]["steps"]
    assert [(s["action"], s["layers"], s["kept"]) for s in steps] == [
        ("baseline", [], True),
        ("fallback", ["relu1"], True),
        ("fallback", [SENSITIVE], True),
        ("revert", [SENSITIVE], False),
        ("revert", ["relu1"], True),
    ]
    assert steps[1]["output_psnr_db"] < 35 <= steps[2]["output_psnr_db"]
    assert steps[3]["same_as_step"] == 1  # reverting probs leaves step 1's settings: not measured again
    assert result.met and result.report["fix"]["kept_float"] == [SENSITIVE]
    assert sha(out / "model.int8.onnx") == sha(steps[4]["model"])
    _check_steps_are_real(out, result.report["fix"], workdir)


@pytest.mark.slow
def test_fix_exits_3_when_the_budget_ends_before_the_target(workdir, agent_cache):
    check_stops_at_the_step_budget(workdir, "wide.onnx", agent_cache)



@pytest.mark.slow
def test_fix_stops_at_the_latency_budget(workdir, agent_cache):
    """No fallback can run 1000x faster than the all-int8 baseline: the first one ends the search."""
    out = workdir / "latency"
    _, report = run_fix(workdir, "wide.onnx", out,
                        "--target-psnr", "35", "--max-latency-ratio", "0.001", cache=agent_cache, code=3)
    section = report["fix"]
    assert [(s["action"], s["kept"]) for s in section["steps"]] == [("baseline", True), ("fallback", False)]
    assert "latency budget" in section["stop"] and section["kept_float"] == []
    assert section["steps"][1]["latency_ratio"] > 0.001
    assert sha(out / "model.int8.onnx") == sha(section["steps"][0]["model"])


def test_calibrate_and_fix_refuse_what_they_cannot_do(workdir):
    proc = qbench("calibrate", "wide.onnx", "--int8", "wide.onnx", cwd=workdir)
    assert proc.returncode == 1 and "--int8 does not apply" in proc.stderr
    proc = qbench("calibrate", "wide.onnx", "--methods", "minmax,bogus", cwd=workdir)
    assert proc.returncode == 1 and "--methods" in proc.stderr
