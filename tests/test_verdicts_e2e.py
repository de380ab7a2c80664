"""Scale-free drops, the ranking and output verdicts through a real `qbench run`, on models that build
each pattern (tests/verdict_models.py); figures checked against plain onnxruntime + numpy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from cli import load_report, qbench
from qbench.agent.structure import ctc_symbols, levenshtein
from verdict_models import (BOXES, blind_int8, build_argmax_head, build_capped_activations, build_image_detector,
                            build_loop_decoder, build_probability_head, coarse_int8, dark_images, frame_samples, text_samples)

FAST = ["--accuracy-only", "--histogram-bins", "0"]


def _run(tmp, model, eval_x, calib_x, cache, *extra):
    np.savez(tmp / "eval.npz", x=eval_x)
    np.savez(tmp / "calib.npz", x=calib_x)
    proc = qbench("run", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--out", "out", *FAST,
                  *extra, cwd=tmp, cache=cache)
    return proc, (load_report(tmp / "out") if (tmp / "out" / "report.json").exists() else None)


def _outputs(path, x: np.ndarray, name: str) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([name], {"x": s})[0] for s in x]).astype(np.float64)


def test_capped_activations_after_a_wide_conv_are_not_drops(tmp_path, agent_cache):
    """Clip (ReLU6), Sigmoid, SiLU, HardSwish cap the peak of a ±60 conv: PSNR falls, nothing is a drop."""
    rng = np.random.default_rng(0)
    model = build_capped_activations(tmp_path / "capped.onnx")
    proc, report = _run(tmp_path, model, rng.normal(size=(4, 1, 4, 16, 16)).astype(np.float32),
                        rng.normal(size=(8, 1, 4, 16, 16)).astype(np.float32), agent_cache)
    assert proc.returncode == 0, proc.stderr
    layers = {x["name"]: x for x in report["layers"]}
    capped = [x for x in report["layers"] if "wide" in x["parents"]]
    assert {x["op_type"] for x in capped} >= {"Clip", "Sigmoid", "Mul", "HardSigmoid"}
    for x in capped:
        assert not x["drop"], x
    # the pattern is there: the old criterion (PSNR below the input's) would have flagged the caps
    assert max(layers["wide"]["psnr_db"] - layers[n]["psnr_db"] for n in ("relu6", "sig")) > 10
    ranked = [x["name"] for x in report["sensitive_layers"] if x["score"] > 0]
    assert not set(ranked) & {"relu6", "sig"}
    assert "no sudden drops" in proc.stdout


@pytest.fixture(scope="module")
def detector(tmp_path_factory, agent_cache):
    tmp = tmp_path_factory.mktemp("detector")
    model = build_image_detector(tmp / "detector.onnx")
    x = dark_images(4, seed=1)
    proc, report = _run(tmp, model, x, dark_images(8, seed=2), agent_cache, "--fail-on-broken")
    return tmp, model, x, proc, report


def test_exact_image_input_makes_no_drop(detector):
    _, _, _, _, report = detector
    layers = {x["name"]: x for x in report["layers"]}
    assert layers["x"]["exact"] or layers["x"]["sqnr_db"] >= 90  # 0..255 integers: exact under int8
    stem = next(x for x in report["layers"] if x["parents"] == ["x"])
    assert stem["drop_db"] is None and not stem["drop"]


def test_outlier_dominated_stem_is_named_with_its_remedies(detector):
    _, _, _, proc, report = detector
    stem = next(x for x in report["layers"] if x["parents"] == ["x"])
    assert stem["crest_db"] >= 20 and stem["local_sqnr_db"] < 35  # a few bright pixels set the range
    entry = next(x for x in report["sensitive_layers"] if x["name"] == stem["name"])
    reason = next(r for r in entry["reasons"] if r.startswith("outlier-dominated range"))
    assert "percentile or entropy calibration" in reason and "int16 activations" in reason
    assert "outlier-dominated" in proc.stdout  # the terminal's "why" column may wrap before "range"


def test_dead_weight_channel_is_left_out(detector):
    _, _, _, _, report = detector
    stem_w = next(w for w in report["weights"] if w["name"].startswith("stem_w"))
    assert stem_w["dead_channels"] == [2] and stem_w["channel_psnr_db"][2] is None and stem_w["worst_channel"] != 2
    assert all(not r.startswith("weight error") for x in report["sensitive_layers"] for r in x["reasons"])


def test_boxes_and_scores_under_one_scale_are_broken(detector):
    tmp, model, x, proc, report = detector
    [out] = report["outputs"]
    assert out["verdict"] == "broken" and out["psnr_db"] > 40  # a fine PSNR, a useless output
    small, large = out["slices"]["groups"]
    assert small["slices"] == [BOXES, BOXES + 1] and small["destroyed"]
    assert large["slices"] == list(range(BOXES))
    # against onnxruntime: the int8 scores are one value while the float scores vary
    f, q = _outputs(model, x, "det"), _outputs(tmp / "out" / "model.int8.onnx", x, "det")
    assert np.ptp(q[:, BOXES:]) == 0 and np.ptp(f[:, BOXES:]) > 0
    err = ((f - q) ** 2).sum(axis=(0, 2))
    assert out["slices"]["sqnr_db"][0] == pytest.approx(10 * np.log10((f[:, 0] ** 2).sum() / err[0]), abs=1e-3)
    assert proc.returncode == 3 and "broken" in proc.stdout and "1 broken output(s): det" in proc.stdout + proc.stderr
    html = (tmp / "out" / "report.html").read_text(encoding="utf-8")
    assert "output verdict" in html and "destroyed" in html and "cumulative SQNR" in html


def test_softmax_over_thousands_of_classes_read_by_argmax(tmp_path, agent_cache):
    model = build_argmax_head(tmp_path / "head.onnx")
    x = text_samples(4, seed=1)
    proc, report = _run(tmp_path, model, x, text_samples(8, seed=2), agent_cache)
    assert proc.returncode == 0, proc.stderr
    [out] = report["outputs"]
    f, q = _outputs(model, x, "probs"), _outputs(tmp_path / "out" / "model.int8.onnx", x, "probs")
    assert out["top1_agreement"] == pytest.approx(np.mean(f.argmax(-1) == q.argmax(-1)), abs=5e-5)  # 4 digits
    reads = [(ctc_symbols(a, 0), ctc_symbols(b, 0)) for a, b in zip(f.argmax(-1), q.argmax(-1))]
    assert out["sequences"] == 4 and out["sequence_agreement"] == pytest.approx(np.mean([a == b for a, b in reads]))
    assert report["summary"]["top1_agreement"] == out["sequence_agreement"]


def test_ctc_recognizer_that_reads_nothing_is_broken_and_gated(tmp_path, agent_cache):
    model = build_argmax_head(tmp_path / "head.onnx")
    int8 = blind_int8(model, tmp_path / "blind.onnx")
    x = text_samples(4, seed=1)
    np.savez(tmp_path / "eval.npz", x=x)
    proc = qbench("run", str(model), "--int8", str(int8), "--data", "eval.npz", "--out", "out", *FAST,
                  "--fail-under-top1", "0.9", cwd=tmp_path, cache=agent_cache)
    report = load_report(tmp_path / "out")
    [out] = report["outputs"]
    assert out["int8_reads"] == 0 and out["float_reads"] == 4
    assert out["verdict"] == "broken" and out["reasons"][-1].startswith("int8 reads no text")
    assert proc.returncode == 3 and "top-1 agreement 0.000 < 0.9" in proc.stdout + proc.stderr


def test_probabilities_that_lose_their_decisions_are_broken_whatever_the_sqnr(tmp_path, agent_cache):
    """Probabilities near 0.5 within 0.07 of the float ones (SQNR 22 dB): most positives fall to 0.5 or below."""
    model = build_probability_head(tmp_path / "head.onnx")
    int8 = coarse_int8(model, tmp_path / "coarse.onnx", "logits", 0.5)
    x = frame_samples(4, seed=1)
    np.savez(tmp_path / "eval.npz", x=x)
    proc = qbench("run", str(model), "--int8", str(int8), "--data", "eval.npz", "--out", "out", *FAST,
                  "--fail-on-broken", cwd=tmp_path, cache=agent_cache)
    [out] = load_report(tmp_path / "out")["outputs"]
    f, q = _outputs(model, x, "probs") > 0.5, _outputs(int8, x, "probs") > 0.5
    assert out["sqnr_db"] > 20
    assert out["decisions"] == {"threshold": 0.5, "elements": f.size, "float_positive": int(f.sum()),
                                "int8_positive": int(q.sum()), "both_positive": int((f & q).sum())}
    assert out["decision_f1"] == pytest.approx(2 * (f & q).sum() / (f.sum() + q.sum()), abs=5e-5)
    assert out["verdict"] == "broken" and out["reasons"][-1].startswith("decisions above 0.5: F1 0.48")
    assert proc.returncode == 3 and "broken" in proc.stdout + proc.stderr


def test_an_autoregressive_decoder_is_read_with_its_repeats(tmp_path, agent_cache):
    """Scores from a Loop (SLANet's table tokens): int8 changes how often a symbol repeats in one of 8
    sequences, which a CTC reading would not see (it collapses repeats): the decoded reading does."""
    model = build_loop_decoder(tmp_path / "decoder.onnx")
    int8 = coarse_int8(model, tmp_path / "coarse.onnx", "start", 1.0)
    x = np.random.default_rng(1).normal(size=(8, 1, 16)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    proc = qbench("run", str(model), "--int8", str(int8), "--data", "eval.npz", "--out", "out", *FAST,
                  cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    [out] = load_report(tmp_path / "out")["outputs"]
    f, q = _outputs(model, x, "probs").argmax(-1), _outputs(int8, x, "probs").argmax(-1)
    assert all(ctc_symbols(a, 0) == ctc_symbols(b, 0) for a, b in zip(f, q))  # the pattern: CTC sees no change
    reads = [(ctc_symbols(a, 0, collapse=False), ctc_symbols(b, 0, collapse=False)) for a, b in zip(f, q)]
    assert out["reading"] == "decoded" and out["sequences"] == 8
    assert out["sequence_agreement"] == pytest.approx(np.mean([a == b for a, b in reads]), abs=5e-5) == 7 / 8
    assert out["cer"] == pytest.approx(sum(levenshtein(a, b) for a, b in reads) / sum(len(a) for a, _ in reads), abs=5e-5)
