"""Per-layer diagnosis through a real `qbench run`: local vs cumulative error where the answer is known
by construction, weight error in report.json, and the sensitive-layer ranking with its reasons.

The model (diagnosis_models.build_outlier_channel) has one layer, r1, whose channel 0 carries values
the calibration data never showed: r1 clips, so its own (local) PSNR is low. r2 and y only inherit
that error: low cumulative PSNR, high local PSNR.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from cli import load_report, qbench
from plain_ort import session as plain_session
from diagnosis_models import (FAINT, build_faint_channels, build_log_power, build_offset_input, build_outlier_channel,
                              build_sigmoid_tail, offset_samples, outlier_samples, tones)
from local_cpu import EIGHT_BIT_PATTERN, REDUCE_RANGE

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--profile-runs", "0"]


@pytest.fixture(scope="module")
def outlier_run(tmp_path_factory, agent_cache):
    tmp = tmp_path_factory.mktemp("outlier")
    model = build_outlier_channel(tmp / "outlier.onnx")
    x = outlier_samples(4, calibration=False, seed=2)
    np.savez(tmp / "eval.npz", x=x)
    np.savez(tmp / "calib.npz", x=outlier_samples(16, calibration=True, seed=1))
    proc = qbench("run", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--out", "out", *FAST,
                  cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp / "out")
    return report, {layer["name"]: layer for layer in report["layers"]}, x, proc


def _local_psnr(report: dict, tensor: str, x: np.ndarray) -> float:
    """The float tensor against itself quantized with the int8 model's scale and zero point, in numpy."""
    model = onnx.load(report["models"]["float"]["path"])
    model.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    f = np.concatenate([session.run([tensor], {"x": s})[0] for s in x]).astype(np.float64)
    int8 = onnx.load(report["models"]["int8"]["path"])
    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    (q,) = [n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])  # int8 ranges are stored as uint8 (zp + 128)
    info = np.iinfo(inits[q.input[2]].dtype)
    d = (np.clip(np.round(f / scale) + zero, info.min, info.max) - zero) * scale
    return float(10 * np.log10(np.abs(f).max() ** 2 / np.mean((f - d) ** 2)))


def test_local_error_separates_the_culprit_from_its_victims(outlier_run):
    report, layers, x, _ = outlier_run
    r1, r2, y = layers["r1"], layers["r2"], layers["y"]
    assert r1["local_psnr_db"] < 30 and r1["clipped_fraction"] > 0.01
    # its own quantization breaks it: a sudden drop by SQNR against its input; its victims are none
    assert r1["drop"] and r1["drop_db"] == pytest.approx(layers["x"]["sqnr_db"] - r1["sqnr_db"], abs=1e-3)
    assert r1["drop_db"] > 6 and not r2["drop"] and not y["drop"]
    for victim in (r2, y):
        assert victim["psnr_db"] < 30 < 45 < victim["local_psnr_db"]
    for name in ("r1", "r2"):
        assert layers[name]["local_psnr_db"] == pytest.approx(_local_psnr(report, name, x), abs=0.01)


def test_ranking_blames_the_culprit_and_explains_the_rest(outlier_run):
    report, _, _, proc = outlier_run
    ranked = report["sensitive_layers"]
    assert ranked[0]["name"] == "r1" and ranked[0]["score"] > 10
    assert any(r.startswith("local error") for r in ranked[0]["reasons"])
    assert any(r.startswith("clipping") for r in ranked[0]["reasons"])
    by_name = {x["name"]: x for x in ranked}
    assert any(r.startswith("error from upstream") for r in by_name["r2"]["reasons"])
    assert by_name["r2"]["score"] < ranked[0]["score"] / 10
    assert "sensitive layers" in proc.stdout and "local" in proc.stdout  # the why column wraps its words


def test_weights_in_the_report(outlier_run):
    report, layers, _, _ = outlier_run
    by_layer = {w["layer"]: w for w in report["weights"]}
    assert sorted(by_layer) == ["r1", "r2", "y"]
    for name, w in by_layer.items():
        assert layers[name]["weight_psnr_db"] == w["psnr_db"]
        assert layers[name]["weight_worst_channel_psnr_db"] == min(c for c in w["channel_psnr_db"] if c is not None)
        assert w["axis"] == 0 and len(w["channel_psnr_db"]) == w["shape"][0]
    # c1's filter 0 is a single tap: it quantizes exactly up to the float32 rounding of its scale (None:
    # exactly, as with 7-bit weights, whose scale max|w|/64 is exact; --reduce-range auto on x86 without VNNI)
    first, second = by_layer["r1"]["channel_psnr_db"][:2]
    assert (first is None or first > 100) and 100 > second


@pytest.mark.skipif(REDUCE_RANGE, reason=EIGHT_BIT_PATTERN)
def test_an_offset_input_blames_the_first_conv_whose_weights_the_repair_needs(tmp_path, agent_cache):
    """openwakeword's speech embedding model (log-mel input 5.6..12.2) showed it: the first conv's weight
    rounding times the input's offset; keeping only those weights float gains the most, measured here."""
    from qbench.host.quantize.qdq_edit import QdqGraph

    model = build_offset_input(tmp_path / "offset.onnx")
    x = offset_samples(8, seed=2)
    np.savez(tmp_path / "eval.npz", x=x)
    np.savez(tmp_path / "calib.npz", x=offset_samples(16, seed=1))
    proc, report = _accuracy_run(model, tmp_path, agent_cache)
    top, *rest = report["sensitive_layers"]
    assert top["name"] == "r1"  # conv1's output (its Relu folded into it)
    assert any(r.startswith("offset input: x lies in [7.") for r in top["reasons"])
    assert not any(r.startswith("offset input") for layer in rest for r in layer["reasons"])  # r1 is not an offset

    def outputs(path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"x": s})[0] for s in x]).astype(np.float64)

    reference = outputs(model)

    def output_psnr(path) -> float:  # the README's PSNR: peak = max|float|, pooled over the samples
        return float(10 * np.log10(np.abs(reference).max() ** 2 / np.mean((outputs(path) - reference) ** 2)))

    graph = QdqGraph(report["models"]["int8"]["path"], report["models"]["float"]["path"])
    assert output_psnr(report["models"]["int8"]["path"]) == pytest.approx(report["outputs"][0]["psnr_db"], abs=1e-3)
    gains = {conv: output_psnr(graph.write(tmp_path / f"{conv}.onnx", float_weights=[conv]))
             for conv in ("conv1", "conv2", "conv3")}
    assert max(gains, key=gains.get) == "conv1"
    assert gains["conv1"] > report["outputs"][0]["psnr_db"] + 3 > gains["conv2"] + 2


def test_faint_weight_channels_are_weighed_by_what_they_add_to_the_layer(tmp_path, agent_cache):
    """PP-OCRv5's detector ranked first a 1x1 conv whose faint channels (peaks 300x below the median, a large
    bias) ONNX Runtime's quantizer leaves at 12 dB against their own peak: keeping its weights float gains
    nothing. Those channels' error is measured against the median channel's peak, as plain ORT agrees."""
    from qbench.host.quantize.qdq_edit import QdqGraph

    model = build_faint_channels(tmp_path / "faint.onnx")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 1, 8, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(8, 1, 8, 12, 12)).astype(np.float32))
    proc, report = _accuracy_run(model, tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    [proj] = [w for w in report["weights"] if w["layer"] == "y"]
    assert max(proj["channel_psnr_db"][i] for i in FAINT) < 35 and proj["effective_psnr_db"] > 45
    assert not any(r.startswith("weight error") for layer in report["sensitive_layers"] for r in layer["reasons"])

    def outputs(path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"x": s})[0] for s in x]).astype(np.float64)

    reference = outputs(model)

    def output_sqnr(path) -> float:
        return float(10 * np.log10(np.sum(reference ** 2) / np.sum((outputs(path) - reference) ** 2)))

    graph = QdqGraph(report["models"]["int8"]["path"], report["models"]["float"]["path"])
    float_proj = output_sqnr(graph.write(tmp_path / "proj.onnx", float_weights=["proj"]))
    assert float_proj - output_sqnr(report["models"]["int8"]["path"]) < 0.5  # its weights cost nothing


@pytest.mark.skipif(REDUCE_RANGE, reason=EIGHT_BIT_PATTERN)
def test_a_sigmoid_in_its_exponential_tail_passes_error_on_and_is_not_the_culprit(tmp_path, agent_cache):
    """openwakeword's wake-word heads showed it: their score Sigmoid (outputs 1e-6..4e-4) was ranked first with a
    sudden drop of 18 dB, while keeping it in float changes nothing; the error is the logits', magnified."""
    from qbench.host.quantize.qdq_edit import QdqGraph

    model = build_sigmoid_tail(tmp_path / "tail.onnx")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 1, 64)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((32, 1, 64)).astype(np.float32))
    proc, report = _accuracy_run(model, tmp_path, agent_cache)
    score = {layer["name"]: layer for layer in report["layers"]}["y"]
    assert score["drop_db"] > 10 and not score["drop"]  # SQNR does fall through it, by its inputs' error
    assert score["local_sqnr_db"] > score["sqnr_db"] + 10  # its own rounding: under a tenth of what it holds
    ranked = {r["name"]: r for r in report["sensitive_layers"]}
    assert "y" not in ranked or ranked["y"]["score"] == 0

    def outputs(path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"x": s})[0] for s in x]).astype(np.float64)

    reference = outputs(model)

    def output_psnr(path) -> float:
        return float(10 * np.log10(np.abs(reference).max() ** 2 / np.mean((outputs(path) - reference) ** 2)))

    graph = QdqGraph(report["models"]["int8"]["path"], report["models"]["float"]["path"])
    base = output_psnr(report["models"]["int8"]["path"])
    assert abs(output_psnr(graph.write(tmp_path / "y.onnx", float_tensors=["y"])) - base) < 1.0
    assert output_psnr(graph.write(tmp_path / "fc.onnx", float_tensors=["logits"], float_weights=["fc3"])) > base + 1


def _account_by_hand(report: dict) -> tuple[float, float]:
    """(SQNR lost from the first noisy layer to the worst output, the ranking's scores summed), from the report."""
    entry = next(x["sqnr_db"] for x in report["layers"]
                 if x.get("sqnr_db") is not None and not x.get("exact") and x["sqnr_db"] < 90)
    worst = min(o["sqnr_db"] for o in report["outputs"])
    return entry - worst, sum(x["score"] for x in report["sensitive_layers"])


def test_a_ranking_that_explains_the_output_says_nothing_more(outlier_run):
    report, _, _, proc = outlier_run
    lost, scores = _account_by_hand(report)
    account = report["ranking_account"]
    assert account["sqnr_lost_db"] == pytest.approx(lost, abs=1e-3) and account["scores_db"] == pytest.approx(scores, abs=1e-3)
    assert account["explains"] and scores >= 0.75 * lost
    assert "ranking:" not in proc.stdout


@pytest.mark.skipif(REDUCE_RANGE, reason=EIGHT_BIT_PATTERN)
def test_a_ranking_that_does_not_explain_the_output_says_so(tmp_path, agent_cache):
    """Gemms on features each on its own offset, into a Sigmoid's exponential tail: the weights' mean shift and
    the tail's magnification make the output's error, and no layer's own drop adds up to it."""
    model = build_sigmoid_tail(tmp_path / "tail.onnx")

    def features(count: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (3 + np.linspace(-2, 2, 64) + 0.5 * rng.standard_normal((count, 1, 64))).astype(np.float32)

    np.savez(tmp_path / "eval.npz", x=features(16, 2))
    np.savez(tmp_path / "calib.npz", x=features(32, 1))
    proc, report = _accuracy_run(model, tmp_path, agent_cache)
    lost, scores = _account_by_hand(report)
    account = report["ranking_account"]
    assert account["sqnr_lost_db"] == pytest.approx(lost, abs=1e-3) and lost > 10
    assert not account["explains"] and scores < 0.75 * lost
    printed = " ".join(proc.stdout.split())
    assert "ranking: the sensitive layers' own errors add up to" in printed
    html = (tmp_path / "out" / "report.html").read_text()
    assert "the sensitive layers&#x27; own errors add up to" in html or "the sensitive layers' own errors add up to" in html
    # so the run measured where the damage is: each block alone int8, each alone float, on the device
    sweep = report["sensitivity"]
    assert sweep["figures"] == ["only_int8", "keep_float"] and sweep["trials"] == 1 + 2 * len(sweep["blocks"])
    worst = min(sweep["blocks"], key=lambda r: r["only_int8_psnr_db"])
    measured = account["measured"]
    assert (measured["block"], measured["only_int8_psnr_db"]) == (worst["block"], worst["only_int8_psnr_db"])
    assert f"block {worst['block']} ({worst['first_op']} .. {worst['last_op']}" in printed
    # the ranking's top beside it: the last block starting at or before the node that computes the top's tensor
    # (a Relu folded into its Gemm has no block op of its own)
    top = measured["ranking_top"]
    assert top["name"] == report["sensitive_layers"][0]["name"]
    nodes = list(onnx.load(report["models"]["float"]["path"]).graph.node)
    position = {n.name: k for k, n in enumerate(nodes)}
    maker = next(k for k, n in enumerate(nodes) if top["name"] in n.output)
    row = [r for r in sweep["blocks"] if position[r["first_op"]] <= maker][-1]
    assert top["block"] == row["block"]
    if row["block"] != worst["block"]:
        assert f"the ranking's top, {top['name']}, lies in block {row['block']}" in printed
    reference = _run_outputs(model, tmp_path / "eval.npz")
    figures = [_psnr_of(reference, _run_outputs(path, tmp_path / "eval.npz"))
               for path in sorted((tmp_path / "out" / "ranking_sweep").glob("trial-*.onnx"))]
    assert min(abs(f - worst["only_int8_psnr_db"]) for f in figures) < 1e-3  # plain ONNX Runtime agrees
    # a given int8 model is not swept: the run says what measures it
    given = qbench("run", str(model), "--int8", str(tmp_path / "out" / "model.int8.onnx"), "--data", "eval.npz",
                   "--out", "given", "--accuracy-only", cwd=tmp_path, cache=agent_cache)
    assert given.returncode == 0, given.stderr
    again = load_report(tmp_path / "given")
    assert "sensitivity" not in again and again["ranking_account"]["measured"]["skipped"].startswith("not measured")
    assert "qbench sensitivity measures each block on the device (not measured in this run" in " ".join(given.stdout.split())


def test_a_log_that_magnifies_its_inputs_rounding_makes_the_run_measure(tmp_path, agent_cache):
    """basic-pitch (spotify's wheel): a Log of CQT power took the output from 14 to 0 dB SQNR with a local SQNR of
    52 dB. The sensitive layers' scores added up to the loss, yet the ranking's top was a filter-bank conv, while
    the block with the power and the Log cost the output most on the device. The ranking cannot tell whose
    rounding a Log magnifies, so the run measures it (diagnosis_models.build_log_power)."""
    from qbench.host.quantize.qdq_edit import QdqGraph

    model = build_log_power(tmp_path / "log.onnx")
    np.savez(tmp_path / "eval.npz", audio=tones(8, 1))
    np.savez(tmp_path / "calib.npz", audio=tones(16, 2))
    proc, report = _accuracy_run(model, tmp_path, agent_cache)
    log = {layer["name"]: layer for layer in report["layers"]}["log_power"]
    assert log["drop_db"] > 10 and log["local_sqnr_db"] > log["sqnr_db"] + 10  # it passes on what it inherits
    lost, scores = _account_by_hand(report)
    account = report["ranking_account"]
    assert scores >= 0.75 * lost  # the scores alone would call the ranking complete
    assert account["magnifiers"][0] == {"name": "log_power", "op_type": "Log", "drop_db": log["drop_db"]}
    assert account["magnified_db"] >= 0.25 * lost and not account["explains"]
    assert "here Log log_power" in " ".join(proc.stdout.split())
    # the Log's own input alone in int8 rounds its smallest values to 0: log(0), the worst of all; then the power
    rows = {r["first_op"]: r for r in report["sensitivity"]["blocks"]}
    assert account["measured"]["first_op"] == "floor" and account["measured"]["only_int8_nonfinite"]
    assert rows["power"]["only_int8_psnr_db"] == min(r["only_int8_psnr_db"] for r in rows.values()
                                                     if r["only_int8_psnr_db"] is not None)
    reference = _run_outputs(model, tmp_path / "eval.npz", "audio")
    base = _psnr_of(reference, _run_outputs(report["models"]["int8"]["path"], tmp_path / "eval.npz", "audio"))
    trials = [_run_outputs(path, tmp_path / "eval.npz", "audio")
              for path in sorted((tmp_path / "out" / "ranking_sweep").glob("trial-*.onnx"))]
    assert any(not np.isfinite(t).all() for t in trials)  # plain ONNX Runtime agrees: a trial is non-finite
    figures = [_psnr_of(reference, t) for t in trials if np.isfinite(t).all()]
    assert min(abs(f - rows["power"]["only_int8_psnr_db"]) for f in figures) < 1e-3
    # the repair is the chain the Log reads kept in float, by plain ONNX Runtime
    graph = QdqGraph(report["models"]["int8"]["path"], report["models"]["float"]["path"])
    kept = graph.write(tmp_path / "chain.onnx", float_tensors=["power", "floored"])
    assert _psnr_of(reference, _run_outputs(kept, tmp_path / "eval.npz", "audio")) > base + 10


def _accuracy_run(model, tmp_path, agent_cache):
    """``qbench run --accuracy-only`` of ``model`` on tmp_path's eval.npz and calib.npz: (the process, its report)."""
    proc = qbench("run", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--out", "out",
                  "--accuracy-only", cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    return proc, load_report(tmp_path / "out")


def _run_outputs(path, data, name: str = "x") -> np.ndarray:
    x = np.load(data)[name]
    session = plain_session(path)
    return np.concatenate([session.run(None, {name: s})[0] for s in x]).astype(np.float64)


def _psnr_of(reference: np.ndarray, values: np.ndarray) -> float:
    """The README's PSNR: peak = max|float|, pooled over the samples."""
    return float(10 * np.log10(np.abs(reference).max() ** 2 / np.mean((values - reference) ** 2)))


def test_the_run_names_the_block_whose_float_repairs_most_when_another_costs_most_alone():
    """A variance computed as E[x^2] - E[x]^2 (magika's LayerNorm) cancels the rounding of what comes before it:
    the block that costs most alone in int8 need not be the one whose float repairs (a sweep's rows, by hand)."""
    from qbench.host.ranking_sweep import _worst
    from qbench.host.report.alerts import ranking_unexplained

    def row(block, only_int8, verdict, keep, gain, **extra):
        return {"block": block, "first_op": f"op{block}", "last_op": f"op{block}b", "ops": 8, "label": "",
                "only_int8_psnr_db": only_int8, "only_int8_verdict": verdict, "keep_float_psnr_db": keep,
                "keep_float_verdict": "ok" if keep and keep > 30 else "broken", "gain_db": gain, **extra}

    section = {"blocks": [row(0, 143.3, "ok", 20.5, 0.06), row(1, 31.8, "degraded", 20.6, 0.08),
                          row(2, None, None, 70.9, 50.4), row(3, 124.7, "ok", 23.1, 2.6)]}
    measured = _worst(section)
    assert measured["block"] == 1 and measured["best_repair"]["block"] == 2
    account = {"explains": False, "scores_db": 46.6, "sqnr_lost_db": 39.0, "entry_layer": "e", "entry_sqnr_db": 36.2,
               "output_sqnr_db": -2.8, "measured": measured}
    [line] = ranking_unexplained({"ranking_account": account})
    assert "keeping block 2 (op2 .. op2b, 8 ops) alone float repairs most: +50.40 dB (70.90 dB, ok)" in line
    # a NaN output alone in int8 is the most damaging, never "exact"
    section["blocks"][2].update(only_int8_verdict="broken", nonfinite=["only_int8"])
    measured = _worst(section)
    assert measured["block"] == 2 and measured["only_int8_nonfinite"] and "best_repair" not in measured
    [line] = ranking_unexplained({"ranking_account": {**account, "measured": measured}})
    assert "costs the output most, NaN or infinity in the output when it alone is int8" in line
