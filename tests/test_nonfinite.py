"""NaN and infinity are never a match: counted on the agent, marked ``nonfinite``, failing PSNR gates.

The end-to-end case builds an int8 model that computes NaN and -inf where the float model does not
(:func:`input_models.build_nan_after_quantization`) and runs it through the real CLI and agent; the
counts are checked against plain onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest

from cli import load_report, qbench
from input_models import build_cancelling_variance, build_nan_after_quantization, offset_features, tiny_positive_samples
from plain_ort import session as _session
from qbench.agent.capture import PairAccumulator
from qbench.host.compare import metrics
from qbench.host.gates import Gates, failures
from qbench.host.sensitivity_sweep import damage
from qbench.protocols.messages import CapturePair, PairStats, QParams

FAST = ["--accuracy-only", "--quiet", "--histogram-bins", "0"]


def test_accumulator_counts_nan_and_inf_of_each_side():
    f = np.array([1.0, np.nan, np.inf, 2.0, -np.inf], np.float32)
    q = np.array([1.0, 1.0, np.nan, np.nan, 0.0], np.float32)
    acc = PairAccumulator(CapturePair("t", "t"))
    acc.update(f, q)
    acc.update(f[:2], q[:2])
    s = acc.stats()
    assert (s.float_nan, s.float_inf, s.int8_nan, s.int8_inf) == (2, 2, 2, 0)
    assert s.error.startswith("non-finite values: float model 2 NaN, 2 inf; int8 model 2 NaN, 0 inf")
    fig = metrics.figures(s)
    assert fig["nonfinite"] == {"float_nan": 2, "float_inf": 2, "int8_nan": 2, "int8_inf": 0}
    assert fig["psnr_db"] is None and fig["exact"] is False and "mse" not in fig


def test_quantized_pair_counts_the_float_side_and_finite_pairs_count_nothing():
    qp = QParams(scale=[0.1], zero_point=[0], dtype="int8")
    acc = PairAccumulator(CapturePair("t", "t_q", qp), histogram_bins=8)
    acc.update(np.array([0.5, np.nan, 0.2], np.float32), np.array([5, 3, 2], np.int8))
    s = acc.stats()
    assert (s.float_nan, s.float_inf, s.int8_nan, s.int8_inf) == (1, 0, 0, 0) and s.hist_float is None
    finite = PairAccumulator(CapturePair("t", "t_q", qp))
    finite.update(np.array([0.5, 0.1], np.float32), np.array([5, 1], np.int8))
    s = finite.stats()
    assert (s.float_nan, s.float_inf, s.int8_nan, s.int8_inf) == (0, 0, 0, 0) and s.error is None
    assert metrics.figures(s)["exact"] is True and "nonfinite" not in metrics.figures(s)


def test_an_agent_before_1_4_still_gets_no_exact_for_a_non_finite_pair():
    old = PairStats(count=4, error="non-finite values (sum_sq_err)")  # zeroed sums, no counts
    fig = metrics.figures(old)
    assert fig["exact"] is False and fig["psnr_db"] is None
    assert metrics.nonfinite_text(fig["nonfinite"]) == "NaN or inf (not counted by this agent)"


def test_psnr_gate_fails_on_a_non_finite_output_even_when_another_output_passes():
    report = {"summary": {"output_psnr_db": None, "outputs_exact": False},
              "outputs": [{"name": "good", "kind": "float", "psnr_db": 50.0, "exact": False},
                          {"name": "bad", "kind": "float", "psnr_db": None, "exact": False,
                           "nonfinite": {"float_nan": 0, "float_inf": 0, "int8_nan": 3, "int8_inf": 0}}]}
    [failed] = failures(report, Gates(fail_under_psnr=1.0))
    assert failed.message == "output PSNR: non-finite values (bad: int8 model: 3 NaN)"


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nan")
    model = build_nan_after_quantization(tmp / "nan.onnx")
    np.savez(tmp / "calib.npz", x=tiny_positive_samples(4, seed=1))
    np.savez(tmp / "eval.npz", x=tiny_positive_samples(3, seed=2))
    return tmp, model


def test_int8_model_that_outputs_nan_fails_the_psnr_gate(nan_model, agent_cache):
    tmp, model = nan_model
    proc = qbench("run", "--device", "local", str(model), "--data", "eval.npz", "--calibration", "calib.npz",
                  "--out", "out", "--fail-under-psnr", "30", *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 3, proc.stderr
    said = " ".join((proc.stdout + proc.stderr).split())  # rich wraps at the terminal width
    assert "gate failed: output PSNR: non-finite values (log: int8 model: 45 inf; ratio: int8 model: 45 NaN)" in said
    assert "non-finite values in 2 layer(s), no PSNR for them; first: #2 log (Log): int8 model: 45 inf" in said
    report = load_report(tmp / "out")
    # independent: plain onnxruntime on the int8 model qbench wrote
    x = np.load(tmp / "eval.npz")["x"]
    int8 = _session(report["models"]["int8"]["path"])
    log, ratio = (np.stack(v) for v in zip(*(int8.run(["log", "ratio"], {"x": s}) for s in x)))
    outputs = {o["name"]: o for o in report["outputs"]}
    assert outputs["log"]["nonfinite"] == {"float_nan": 0, "float_inf": 0, "int8_nan": int(np.isnan(log).sum()),
                                           "int8_inf": int(np.isinf(log).sum())} and np.isinf(log).sum() == 45
    assert outputs["ratio"]["nonfinite"]["int8_nan"] == int(np.isnan(ratio).sum()) == 45
    for out in outputs.values():
        assert out["psnr_db"] is None and out["exact"] is False
        assert out["verdict"] == "broken" and out["reasons"][0].startswith("NaN or infinity in the output (int8 model")
    summary = report["summary"]
    assert summary["verdict"] == "broken"
    assert summary["output_psnr_db"] is None and summary["outputs_exact"] is False
    assert summary["nonfinite_outputs"] == ["log", "ratio"] and summary["nonfinite_layers"] == ["log", "ratio"]
    layers = {x["name"]: x for x in report["layers"]}
    assert layers["t"]["psnr_db"] is not None and "nonfinite" not in layers["t"]
    assert "non-finite" in (tmp / "out" / "report.html").read_text()
    assert "int8 model: 45 inf" in (tmp / "out" / "layers.csv").read_text()


def test_nan_in_eval_data_is_refused_in_one_line(nan_model, agent_cache):
    tmp, model = nan_model
    x = tiny_positive_samples(3)
    x[1, 0, 5] = np.nan
    np.savez(tmp / "nan_eval.npz", x=x)
    proc = qbench("run", "--device", "local", str(model), "--data", "nan_eval.npz", "--calibration", "calib.npz",
                  "--out", "refused", "--fail-under-psnr", "30", *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("qbench: error:")]
    assert line == ("qbench: error: nan_eval.npz: input 'x' holds NaN in sample 1: "
                    "qbench compares the models on finite inputs only")


def test_inf_in_calibration_data_is_refused(nan_model, agent_cache):
    tmp, model = nan_model
    x = tiny_positive_samples(4)
    x[3, 0, 2] = np.inf
    np.savez(tmp / "inf_calib.npz", x=x)
    proc = qbench("run", "--device", "local", str(model), "--calibration", "inf_calib.npz", "--out", "refused2",
                  *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 1 and "inf_calib.npz: input 'x' holds inf in sample 3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_block_whose_int8_alone_gives_nan_is_the_most_damaging_not_exact(tmp_path, agent_cache):
    """magika (Google's file-type detector) computes a LayerNorm variance as E[x^2] - E[x]^2: that block alone in
    int8 made its Rsqrt's input negative, and the sweep called the trial's NaN output "exact" and ranked the block
    last. input_models.build_cancelling_variance is the pattern; plain ONNX Runtime checks the trials."""
    model = build_cancelling_variance(tmp_path / "var.onnx")
    np.savez(tmp_path / "calib.npz", x=offset_features(16, 1))
    np.savez(tmp_path / "eval.npz", x=offset_features(8, 2))
    proc = qbench("sensitivity", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--out", "out",
                  "--blocks", "8", cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    section = load_report(tmp_path / "out")["sensitivity"]
    blocks = section["blocks"]
    assert section["baseline_nonfinite"] and section["baseline_psnr_db"] is None
    first = next(b for b in blocks if b["block"] == 0)
    assert first["first_op"] == "mean" and first["nonfinite"] == ["only_int8"]
    assert first["only_int8_psnr_db"] is None and first["only_int8_verdict"] == "broken"
    assert min(blocks, key=damage)["block"] == 0  # ranked the most damaging
    assert "all-int8 output PSNR non-finite" in " ".join(proc.stdout.split())
    x = np.load(tmp_path / "eval.npz")["x"]
    trials = sorted((tmp_path / "out").rglob("trial-*.onnx"))
    outs = [np.stack([_session(t).run(None, {"x": s})[0] for s in x]) for t in trials]
    assert trials and any(np.isnan(o).any() for o in outs)  # plain ONNX Runtime: some trial does give NaN
