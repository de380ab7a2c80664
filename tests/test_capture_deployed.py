"""The capture reads the int8 tensors from the graph ORT deploys: one pass, outputs bit-identical.

A built graph whose fusion changes when an int8 tensor is exposed (fusion_models.py), and PP-OCRv4's
recognizer through a real agent, with layer PSNR checked against plain onnxruntime + numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import fusion_models
from cli import load_report, qbench
import plain_ort
from plain_ort import session as plain_session
from qbench.agent import onnx_graph
from published_models import fetched
from local_cpu import REDUCE_RANGE


def _run(tmp_path: Path, agent_cache: Path, *args: str) -> dict:
    out = tmp_path / "out"
    done = qbench("run", *args, "--accuracy-only", "--out", str(out), "-q", "--db", str(tmp_path / "db.sqlite"),
                  cwd=tmp_path, cache=agent_cache, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return load_report(out)


def _outputs_moved_by_exposing(int8: Path, name: str, feed: dict) -> float:
    deployed = plain_session(int8).run(None, feed)[0]
    exposed = plain_session(int8, [name]).run(None, feed)[0]
    return float(np.abs(deployed - exposed).max())


def test_a_graph_whose_fusion_changes_when_exposed_is_captured_in_one_pass(tmp_path, agent_cache):
    int8 = fusion_models.build_affine_dwconv_int8(tmp_path / "int8.onnx")
    float_path = fusion_models.build_affine_dwconv_float(tmp_path / "float.onnx")
    x = fusion_models.samples(2)
    np.savez(tmp_path / "data.npz", x=x)
    # the precondition: exposing the Add's int8 output as a graph output changes what ORT computes
    assert _outputs_moved_by_exposing(int8, "a_q", {"x": x[0]}) > 0.01

    report = _run(tmp_path, agent_cache, str(float_path), "--int8", str(int8), "--data", str(tmp_path / "data.npz"))
    cap = report["capture"]
    assert cap["passes"] == cap["passes_planned"] == 1
    assert cap["fidelity_max_abs_diff"] == 0.0 and cap["layers_graph_altered"] == 0
    assert cap["source"] == "deployed graph"
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["a"]["int8_name"] == "a_q" and layers["a"]["psnr_db"] is not None
    # ORT cancels the user's Transpose against its own NHWC one: the deployed graph has r_q only as the
    # tensor that also stands for t_q, in NHWC, a layout the graph does not tell; the shapes do (C, H, W
    # differ), so it is compared in the user's layout, with plain ORT's PSNR
    assert not layers["r"].get("fused") and cap["layers_fused"] == 0
    assert layers["r"]["psnr_db"] == pytest.approx(_plain_psnr(float_path, int8, "r", "relu_quant", 0, x), abs=0.01)
    # the channels-last QLinearConv output is read back in the user's layout: same PSNR as plain ORT on it
    # (it writes uint8: ORT's s8->u8 transform added 128 to the zero point)
    assert layers["conv"]["psnr_db"] == pytest.approx(
        _plain_psnr(float_path, int8, "conv", "QLinearConv", 39 + 128, x), abs=0.01)
    assert report["outputs"][0]["psnr_db"] is not None


def _plain_psnr(float_path: Path, int8: Path, float_name: str, writer: str, zero: int, x: np.ndarray) -> float:
    """PSNR of one layer from the deployed int8 graph as plain ORT writes it (optimized_model_filepath, reloaded
    with optimizations off, the output of the node ``writer`` (its name or op type) exposed with onnx.helper,
    dequantized with scale 0.02078227 and ``zero``), transposed back by its known NHWC layout."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(int8.with_suffix(".deployed.onnx"))
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    deployed = onnx.load(options.optimized_model_filepath)
    conv = next(n for n in deployed.graph.node if writer in (n.op_type, n.name))
    deployed.graph.output.append(helper.make_empty_tensor_value_info(conv.output[0]))
    off = ort.SessionOptions()
    off.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    q_sess = ort.InferenceSession(deployed.SerializeToString(), off, providers=["CPUExecutionProvider"])
    f_sess = plain_session(float_path, [float_name])
    scale = 0.02078227
    err = peak = 0.0
    for sample in x:
        q = (q_sess.run([conv.output[0]], {"x": sample})[0].astype(np.float64) - zero) * scale
        f = f_sess.run([float_name], {"x": sample})[0].astype(np.float64)
        err += float(np.sum((f - q.transpose(0, 3, 1, 2)) ** 2))
        peak = max(peak, float(np.max(np.abs(f))))
    return 10 * np.log10(peak ** 2 / (err / (f.size * len(x))))


def test_graph_reader_finds_nodes_and_attributes_of_a_built_model(tmp_path):
    int8 = fusion_models.build_affine_dwconv_int8(tmp_path / "int8.onnx")
    nodes, interface = onnx_graph.read_graph(int8.read_bytes())
    model = onnx.load(str(int8))
    assert [(n.name, n.op_type, n.inputs, n.outputs) for n in nodes] == [
        (n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    assert interface == ["x", "y"]
    assert next(n for n in nodes if n.name == "dwconv").ints["group"] == [fusion_models.C]
    assert next(n for n in nodes if n.name == "dwconv").ints["pads"] == [2, 2, 2, 2]


def _deployed_graphs(int8, tmp_path):
    """(the int8 model's nodes, its interface, the nodes of the graph ORT deploys for it), as the agent reads them."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "deployed.onnx")
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    original, interface = onnx_graph.read_graph(int8.read_bytes())
    deployed, _ = onnx_graph.read_graph((tmp_path / "deployed.onnx").read_bytes())
    return original, interface, deployed


def test_locate_maps_renamed_channels_last_and_shared_tensors_of_the_deployed_graph(tmp_path):
    int8 = fusion_models.build_affine_dwconv_int8(tmp_path / "int8.onnx")
    original, interface, deployed = _deployed_graphs(int8, tmp_path)
    found, fused = onnx_graph.locate(original, deployed, ["x_q", "a_q", "conv_q", "r_q", "y", "b"], set(interface))
    writer = {out: n for n in deployed for out in n.outputs}
    assert writer[found["x_q"].tensor].name == "x_quant" and found["x_q"].to_original is None  # renamed output
    assert writer[found["conv_q"].tensor].op_type == "QLinearConv"  # the QDQ unit's output, channels last
    assert onnx_graph.original_axes(found["conv_q"].to_original, 4) == [0, 3, 1, 2]
    assert found["y"].tensor == "y" and found["y"].to_original is None  # a model output keeps its layout
    assert fused["b"].startswith("fused into QLinearConv ")  # the bias lives inside the kernel
    assert found["r_q"].to_original is onnx_graph.FROM_SHAPE  # one tensor for r_q and t_q: their shapes tell
    assert found["r_q"].note == "held in another layout by QuantizeLinear relu_quant"


def test_a_layout_is_told_by_the_shapes_only_when_no_two_dims_are_equal():
    original = np.arange(2 * 3 * 5, dtype=np.float32).reshape(1, 2, 3, 5)
    held = original.transpose(0, 2, 3, 1)  # channels last
    np.testing.assert_array_equal(onnx_graph.from_shape(held, original.shape), original)
    np.testing.assert_array_equal(onnx_graph.from_shape(original, original.shape), original)
    moved_ones = original.reshape(2, 1, 3, 5, 1)  # axes of size 1 carry no order
    np.testing.assert_array_equal(onnx_graph.from_shape(moved_ones, (1, 1, 2, 3, 5)), original.reshape(1, 1, 2, 3, 5))
    square = np.zeros((1, 4, 6, 6), np.float32)  # H = W: a transpose of them would not show
    assert onnx_graph.from_shape(square, square.shape) is None
    assert onnx_graph.from_shape(held, (1, 2, 3, 6)) is None  # not a permutation at all


def test_channels_last_one_d_convolutions_are_put_back_in_their_layout(tmp_path, agent_cache):
    """A Conv1d's channels-last kernel writes (N, L, C): the capture transposes it back by the tensor's own rank
    (it assumed 4-D and failed on silero VAD: "axes don't match array")."""
    from qbench.host.quantize.onnx import quantize_onnx

    model = fusion_models.build_conv1d_float(tmp_path / "c1d.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 1, 4, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(8, 1, 4, 64)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=x)
    int8 = quantize_onnx(model, tmp_path / "c1d.int8.onnx", dict(np.load(tmp_path / "calib.npz")),
                        reduce_range=REDUCE_RANGE)
    original, interface, deployed = _deployed_graphs(int8, tmp_path)
    found, _ = onnx_graph.locate(original, deployed, [o for n in original for o in n.outputs], set(interface))
    last = [name for name, loc in found.items() if loc.to_original is onnx_graph.CHANNELS_LAST]
    assert last and onnx_graph.original_axes(found[last[0]].to_original, 3) == [0, 2, 1]  # the pattern is there
    proc = qbench("run", str(model), "--int8", str(int8), "--data", "eval.npz", "--accuracy-only", "--out", "out",
                  cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "out")
    assert report["capture"]["fidelity_max_abs_diff"] == 0 and report["capture"]["passes"] == 1
    f_sess, q_sess = plain_session(model), plain_session(int8)
    f = np.concatenate([f_sess.run(None, {"x": s})[0] for s in x]).astype(np.float64)
    q = np.concatenate([q_sess.run(None, {"x": s})[0] for s in x]).astype(np.float64)
    expected = 10 * np.log10(np.abs(f).max() ** 2 / np.mean((f - q) ** 2))
    assert report["outputs"][0]["psnr_db"] == pytest.approx(expected, abs=1e-3)


def test_an_audio_front_end_with_a_shared_bias_and_a_quantization_ort_moves(tmp_path, agent_cache):
    """basic-pitch's pattern (fusion_models.build_audio_front_end_float): qbench's int8 model loads, and the
    Reshape output that the deployed graph holds as int8 levels is reported so, never compared as floats
    (it was: PSNR -44 dB, levels against audio samples)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    model = fusion_models.build_audio_front_end_float(tmp_path / "front.onnx")
    rng = np.random.default_rng(2)
    calib = rng.normal(0, 0.3, (6, 256, 1)).astype(np.float32)  # stacked along the batch dim, as users save audio
    x = rng.normal(0, 0.3, (3, 256, 1)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", audio=calib)
    np.savez(tmp_path / "eval.npz", audio=x)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter({"audio": sample[None]} for sample in calib)

        def get_next(self):
            return next(self.samples, None)

    plain = tmp_path / "plain.int8.onnx"  # the precondition: onnxruntime's own quantizer makes two tensors 'bank1'
    quantize_static(str(model), str(plain), Reader(), quant_format=QuantFormat.QDQ)
    with pytest.raises(Exception, match="Concat"):
        ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])

    proc = qbench("run", str(model), "--data", "eval.npz", "--calibration", "calib.npz", "--accuracy-only",
                  "--out", "out", cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = load_report(tmp_path / "out")
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["flat"]["psnr_db"] is None
    assert layers["flat"]["status"].startswith("held as the int8 levels of QuantizeLinear ")
    assert "ahead of Reshape flatten_audio" in layers["flat"]["status"]
    int8 = tmp_path / "out" / "model.int8.onnx"
    f_sess, q_sess = plain_session(model), plain_session(int8)
    f = np.stack([f_sess.run(None, {"audio": s[None]})[0] for s in x]).astype(np.float64)
    q = np.stack([q_sess.run(None, {"audio": s[None]})[0] for s in x]).astype(np.float64)
    expected = 10 * np.log10(np.abs(f).max() ** 2 / np.mean((f - q) ** 2))
    assert report["outputs"][0]["psnr_db"] == pytest.approx(expected, abs=1e-3)
    assert layers["bank1"]["psnr_db"] is not None


def test_a_concat_of_upsampled_maps_compares_each_layer_with_its_own_tensor(tmp_path, agent_cache):
    """ppocr-v4-det's neck (fusion_models.build_fpn_float): each upsampled map was read from its neighbour's
    tensor in the deployed QLinearConcat (-9.9 dB SQNR for a map plain ORT puts at 7.5 dB). Every layer's SQNR
    now agrees with the QDQ arithmetic run by plain ORT (plain_ort.qdq_layer_sqnr)."""
    model = fusion_models.build_fpn_float(tmp_path / "fpn.onnx")
    deployed = _layers_agree_with_the_qdq_arithmetic(tmp_path, agent_cache, model, (4, 32, 24), {"up1", "up2", "merged"})
    assert any(n.op_type == "QLinearConcat" for n in deployed)  # the pattern is there


def test_slices_that_ort_fuses_into_one_split_are_read_from_their_own_outputs(tmp_path, agent_cache):
    """ppocr-v4-rec's and v6-rec's attention inputs (fusion_models.build_qkv_slices_float): the Split named after
    the last Slice wrote that Slice's tensor as its first output, so the capture read q for v (-5.5 dB SQNR for a
    slice plain ORT puts at 4.4 dB)."""
    model = fusion_models.build_qkv_slices_float(tmp_path / "qkv.onnx")
    deployed = _layers_agree_with_the_qdq_arithmetic(tmp_path, agent_cache, model, (16, 8), {"q", "k", "v"})
    assert any(n.op_type == "Split" and n.name.startswith("slice_v/") for n in deployed)  # the pattern is there


def _layers_agree_with_the_qdq_arithmetic(tmp_path: Path, agent_cache: Path, model: Path, shape: tuple, names: set):
    """qbench's own int8 model of ``model`` captured by a real agent: every compared layer's SQNR within 2 dB of
    plain ORT's QDQ arithmetic (a layer read from another tensor is off by 10 dB and more), ``names`` among them.
    Returns the nodes of the graph ORT deploys."""
    from qbench.host.quantize.onnx import quantize_onnx

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 1, *shape)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    int8 = quantize_onnx(model, tmp_path / "int8.onnx", {"x": rng.normal(size=(8, 1, *shape)).astype(np.float32)},
                        reduce_range=REDUCE_RANGE)
    report = _run(tmp_path, agent_cache, str(model), "--int8", str(int8), "--data", str(tmp_path / "eval.npz"))
    reference = plain_ort.qdq_layer_sqnr(model, int8, [{"x": s} for s in x])
    compared = {x["name"]: x["sqnr_db"] for x in report["layers"] if x.get("sqnr_db") is not None}
    assert names <= set(compared) & set(reference)
    for name in set(compared) & set(reference):
        assert compared[name] == pytest.approx(reference[name], abs=2.0), name
    return _deployed_graphs(int8, tmp_path)[2]


# ---- a real published model through a real agent ------------------------------------------------------



@pytest.mark.slow
def test_ppocr_rec_capture_is_one_pass_with_fidelity_zero_and_plain_ort_psnr(tmp_path, agent_cache):
    published, m = fetched("ppocr-v4-rec")
    data = published.data(m, 2, split="eval")
    calib = published.data(m, 2, split="calib")
    np.savez(tmp_path / "data.npz", **data)
    np.savez(tmp_path / "calib.npz", **calib)
    report = _run(tmp_path, agent_cache, str(m.path), "--input-shape", m.input_shape, "--data",
                  str(tmp_path / "data.npz"), "--calibration", str(tmp_path / "calib.npz"))
    cap = report["capture"]
    assert cap["passes"] == cap["passes_planned"] == 1
    assert cap["fidelity_max_abs_diff"] == 0.0 and cap["layers_graph_altered"] == 0
    fused = [x for x in report["layers"] if x.get("fused")]
    # every tensor the deployed graph does not hold as the user's is said to be so, with the kernel
    assert any(x["status"].startswith("fused into ") for x in fused)
    assert all(x["status"].startswith(("fused into ", "held in another layout by ")) for x in fused)

    int8 = tmp_path / "out" / "model.int8.onnx"
    float_model = tmp_path / "out" / "float.prepared.onnx"
    checked = _check_layers_against_plain_ort(report, float_model, int8, data)
    assert checked >= 3
    # every compared layer, against the QDQ arithmetic: its attention Slices were read from each other's tensors
    reference = plain_ort.qdq_layer_sqnr(float_model, int8, [{k: v[i] for k, v in data.items()} for i in range(2)])
    compared = {x["name"]: x["sqnr_db"] for x in report["layers"] if x.get("sqnr_db") is not None}
    assert len(set(compared) & set(reference)) > 200 and len(fused) <= 4
    for name in set(compared) & set(reference):
        assert compared[name] == pytest.approx(reference[name], abs=2.0), name


def _check_layers_against_plain_ort(report: dict, float_model: Path, int8: Path, data: dict) -> int:
    """Layer PSNR from plain ORT on the int8 model itself, for layers whose exposure leaves its outputs as
    deployed (so the exposed value is the deployed one): PSNR = 10 log10(max|f|^2 / MSE), pooled."""
    model = onnx.load(str(int8))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q_node = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    feeds = [{k: v[i] for k, v in data.items()} for i in range(2)]
    candidates = [x for x in report["layers"] if x.get("psnr_db") is not None and x["op_type"] == "Conv"
                  and x["int8_name"] in q_node][-6:]
    checked = 0
    for layer in candidates:
        name = layer["int8_name"]
        if _outputs_moved_by_exposing(int8, name, feeds[0]) != 0.0:
            continue
        node = q_node[name]
        scale, zero = inits[node.input[1]].astype(np.float64), inits[node.input[2]].astype(np.float64)
        q_sess = plain_session(int8, [name])
        f_sess = plain_session(float_model, [layer["name"]])
        err = peak = 0.0
        for feed in feeds:
            q = (q_sess.run([name], feed)[0].astype(np.float64) - zero) * scale
            f = f_sess.run([layer["name"]], feed)[0].astype(np.float64)
            err += float(np.sum((f - q) ** 2))
            peak = max(peak, float(np.max(np.abs(f))))
        count = q.size * len(feeds)
        psnr = 10 * np.log10(peak ** 2 / (err / count))
        assert layer["psnr_db"] == pytest.approx(psnr, abs=0.01), layer["name"]
        checked += 1
    return checked


# ---- fidelity is loud: terminal and report.html ---------------------------------------------------------


def test_capture_departures_are_in_the_terminal_summary_and_at_the_top_of_report_html(tmp_path):
    from io import StringIO

    from rich.console import Console

    from qbench.host.cli.render import render_report
    from qbench.host.report.html import write_html
    from reportdata import make_report

    clean = make_report(n_layers=6)
    clean["capture"] = {"passes": 1, "passes_planned": 1, "fidelity_max_abs_diff": 0.0, "layers_graph_altered": 0,
                        "layers_fused": 0, "source": "deployed graph", "source_note": None}
    loud = {**clean, "capture": {**clean["capture"], "passes": 30, "fidelity_max_abs_diff": 0.28,
                                 "layers_graph_altered": 7, "layers_fused": 2, "source": "model",
                                 "source_note": "the runtime could not write the graph it deployed"}}
    expected = ["capture fidelity 0.28", "7 layer(s) graph-altered", "2 layer(s) fused",
                "30 capture passes where the memory budget planned 1", "could not write the graph it deployed"]
    for report, shown in ((clean, False), (loud, True)):
        text = StringIO()
        render_report(report, Console(file=text, width=400))
        page = write_html(report, tmp_path / "report.html").read_text()
        top = page[: page.index('<div class="cards">')]  # above the summary cards
        for phrase in expected:
            assert (phrase in text.getvalue()) is shown, phrase
            assert (phrase in top) is shown, phrase
