"""Float .tflite patterns that ai-edge-quantizer turns into int8 models LiteRT refuses, built here.

* MediaPipe's custom ``Convolution2DTransposeBias`` (selfie segmentation): rewritten into the builtin
  TRANSPOSE_CONV with bias, checked against a numpy transposed convolution;
* a custom op no builtin replaces: the float model itself does not load in LiteRT: refused, named;
* custom ops XNNPACK runs (MaxPoolingWithArgmax2D, MaxUnpooling2D): kept in float, with a note;
* sparse float16 weights behind DENSIFY (MediaPipe's sparse detectors): densified; without that, the
  quantizer gives the conv a weight zero point of -128 that LiteRT's conv kernel refuses;
* NaN or inf in a model or in calibration data: refused in one line (LiteRT aborts the process
  loading a NaN scale);
* activation ranges: ``minmax`` keeps every calibration value of a small tensor inside its int8 range,
  where ai-edge-quantizer's moving average collapses it;
* ops XNNPACK runs in float only (separate RELU and RELU6, HARD_SWISH, a whole-map average pool):
  rewritten into ops XNNPACK runs in int8, so they no longer split its partition;
* an IF whose branches repeat their argument names (openwakeword's heads): names made unique, the
  branches kept float, the rest int8;
* a dynamic input with a placeholder default shape the model does not prepare at (openwakeword's
  melspectrogram): quantized and run at the data's shape.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tflite_models as M
from ai_edge_litert import interpreter as tfl
from ai_edge_litert import schema_py_generated as fb

from cli import load_report, qbench
from qbench.host.compare.tflite_matching import match_tflite, read_graph
from qbench.host.errors import UserError
from qbench.host.quantize import tflite_rewrite
from qbench.host.quantize.tflite import prepare_tflite, quantize_tflite

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet"]
PLAIN = tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _interpreter(model: bytes, resolver=PLAIN) -> tfl.Interpreter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # preserve_all_tensors is "for debugging": it is here
        interpreter = tfl.Interpreter(model_content=model, experimental_op_resolver_type=resolver,
                                      experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter


def _tensors(model: bytes, sample: np.ndarray, resolver=PLAIN) -> dict[str, np.ndarray]:
    """Every tensor after running ``sample`` (float model, one input), by name."""
    interpreter = _interpreter(model, resolver)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample)
    interpreter.invoke()
    out = {}
    for d in interpreter.get_tensor_details():
        try:
            out[d["name"]] = interpreter.get_tensor(d["index"])
        except ValueError:  # tensors without data (none allocated)
            continue
    return out


def _dequantized_output(model: bytes, sample: np.ndarray) -> np.ndarray:
    """The output of a float-or-integer-interface model, for a float sample, as float64."""
    interpreter = _interpreter(model)
    inp = interpreter.get_input_details()[0]
    scale, zero = inp["quantization"]
    if scale:
        sample = np.clip(np.rint(sample / scale) + zero, -128, 127).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], sample)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    value = interpreter.get_tensor(out["index"]).astype(np.float64)
    scale, zero = out["quantization"]
    return (value - zero) * scale if scale else value


def _ops(model: bytes) -> list[str]:
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    root = fb.Model.GetRootAs(model, 0)
    sg = root.Subgraphs(0)
    codes = [root.OperatorCodes(sg.Operators(i).OpcodeIndex()) for i in range(sg.OperatorsLength())]
    return [names[max(c.BuiltinCode(), c.DeprecatedBuiltinCode())] for c in codes]


def _snr_db(reference: np.ndarray, value: np.ndarray) -> float:
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - value) ** 2))


def _samples(n: int, shape=(1, 4, 4, 3), seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, *shape)).astype(np.float32)


def test_plain_litert_cannot_run_mediapipes_transposed_convolution():
    model = M.transpose_conv_bias()
    with pytest.raises(RuntimeError, match="unresolved custom op: Convolution2DTransposeBias"):
        _interpreter(model)
    _interpreter(model, tfl.OpResolverType.AUTO)  # XNNPACK, LiteRT's default delegate, runs it


def test_transposed_convolution_is_rewritten_into_a_builtin_with_the_known_answer():
    prepared = prepare_tflite(M.transpose_conv_bias())
    assert any("Convolution2DTransposeBias rewritten as builtin TRANSPOSE_CONV" in n for n in prepared.notes)
    assert prepared.rewritten_from == M.transpose_conv_bias()
    assert _ops(prepared.model) == ["CONV_2D", "TRANSPOSE_CONV"]  # float16 weights folded, custom op gone
    sample = _samples(1)[0]
    got = _tensors(prepared.model, sample)  # plain LiteRT: no delegate
    kernel, bias = M.transpose_conv_weights()
    expected = M.transposed_conv(got["conv1"].astype(np.float64), kernel.astype(np.float16).astype(np.float64),
                                 bias.astype(np.float16).astype(np.float64), M.TRANSPOSE_STRIDE)
    np.testing.assert_allclose(got["up"], expected, rtol=1e-5, atol=1e-5)
    # and the same figures as MediaPipe's op under XNNPACK
    original = _tensors(M.transpose_conv_bias(), sample, tfl.OpResolverType.AUTO)["up"]
    np.testing.assert_allclose(got["up"], original, rtol=1e-5, atol=1e-5)


def test_rewritten_model_quantizes_into_an_int8_model_plain_litert_runs(tmp_path):
    path = tmp_path / "up.tflite"
    path.write_bytes(M.transpose_conv_bias())
    result = quantize_tflite(path, tmp_path / "up.int8.tflite", {"input": _samples(16)})
    assert result.float_model is not None and _ops(result.float_model) == ["CONV_2D", "TRANSPOSE_CONV"]
    int8 = result.path.read_bytes()
    assert "CUSTOM" not in _ops(int8) and "TRANSPOSE_CONV" in _ops(int8)
    sample = _samples(1, seed=9)[0]
    reference = _tensors(result.float_model, sample)["up"].astype(np.float64)
    assert _snr_db(reference, _dequantized_output(int8, sample)) > 18  # 22 dB: two int8 layers


def test_a_custom_op_no_builtin_replaces_is_named(tmp_path):
    path = tmp_path / "warp.tflite"
    path.write_bytes(M.transpose_conv_bias(custom="TransformTensorBilinear"))
    with pytest.raises(UserError) as info:
        quantize_tflite(path, tmp_path / "warp.int8.tflite", {"input": _samples(2)})
    message = str(info.value)
    assert "warp.tflite cannot run on LiteRT: no kernel for its custom op(s) TransformTensorBilinear" in message
    assert "\n" not in message and not (tmp_path / "warp.int8.tflite").exists()


def test_custom_ops_only_xnnpack_runs_are_kept_in_float(tmp_path):
    path = tmp_path / "unpool.tflite"
    path.write_bytes(M.argmax_unpool())
    result = quantize_tflite(path, tmp_path / "unpool.int8.tflite", {"input": M.calibration_samples(16)})
    assert any("MaxPoolingWithArgmax2D, MaxUnpooling2D kept in float: only XNNPACK" in n for n in result.notes)
    assert result.float_model is None
    int8 = result.path.read_bytes()
    assert _ops(int8).count("CUSTOM") == 2 and "QUANTIZE" in _ops(int8) and "DEQUANTIZE" in _ops(int8)
    with pytest.raises(RuntimeError, match="unresolved custom op"):
        _interpreter(int8)  # like the float model, not without XNNPACK
    sample = M.calibration_samples(1, seed=4)[0]
    reference = _tensors(M.argmax_unpool(), sample, tfl.OpResolverType.AUTO)["y"].astype(np.float64)
    interpreter = _interpreter(int8, tfl.OpResolverType.AUTO)
    inp = interpreter.get_input_details()[0]
    scale, zero = inp["quantization"]
    interpreter.set_tensor(inp["index"], np.clip(np.rint(sample / scale) + zero, -128, 127).astype(np.int8))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    scale, zero = out["quantization"]
    got = (interpreter.get_tensor(out["index"]).astype(np.float64) - zero) * scale
    assert _snr_db(reference, got) > 18


def test_sparse_weights_are_densified_and_the_conv_gets_symmetric_weights(tmp_path):
    model, dense = M.sparse_conv()
    prepared = prepare_tflite(model)
    assert any("1 sparse weight(s) behind DENSIFY densified" in n for n in prepared.notes)
    assert _ops(prepared.model) == ["CONV_2D"] and prepared.rewritten_from is None
    weights = _tensors(prepared.model, M.calibration_samples(1)[0])["conv/weights"]
    np.testing.assert_array_equal(weights, dense)  # float16 values, exactly

    path = tmp_path / "sparse.tflite"
    path.write_bytes(model)
    result = quantize_tflite(path, tmp_path / "sparse.int8.tflite", {"input": M.calibration_samples(8)})
    assert result.float_model is None  # the user's float model loads as it is: it stays the reference
    details = {d["name"]: d for d in _interpreter(result.path.read_bytes()).get_tensor_details()}
    conv_weights = next(d for n, d in details.items() if d["dtype"] == np.int8 and len(d["shape"]) == 4
                        and tuple(d["shape"]) == dense.shape)
    assert np.all(conv_weights["quantization_parameters"]["zero_points"] == 0)
    sample = M.calibration_samples(1, seed=4)[0]
    reference = _tensors(model, sample)["conv"].astype(np.float64)
    assert _snr_db(reference, _dequantized_output(result.path.read_bytes(), sample)) > 25


def test_an_int8_model_litert_refuses_is_named_with_the_op_and_kept(tmp_path, monkeypatch):
    # without densifying, the real quantizer makes the model LiteRT refuses (the bug this guards)
    monkeypatch.setattr(tflite_rewrite, "densify_weights", lambda *args: 0)
    model, _ = M.sparse_conv()
    path = tmp_path / "sparse.tflite"
    path.write_bytes(model)
    out = tmp_path / "sparse.int8.tflite"
    with pytest.raises(UserError) as info:
        quantize_tflite(path, out, {"input": M.calibration_samples(4)})
    # the zero point is not fixed: the quantizer calibrates DENSIFY's output, which XNNPACK leaves
    # unwritten, so its range comes from whatever that memory held
    assert re.fullmatch(re.escape(
        f"LiteRT cannot load the int8 model ai-edge-quantizer made of sparse.tflite ({out}): op 3 CONV_2D "
        "(writes 'conv') fails to prepare: tflite/kernels/conv.cc:390 affine_quantization->zero_point->data[i] "
        "!= 0 (") + r"-?[1-9]\d* != 0\)", str(info.value))
    assert out.is_file()  # kept for inspection


def _add_model(constant: np.ndarray) -> bytes:
    g = M.Graph()
    x, y = g.tensor("x", (1, 4)), g.tensor("y", (1, 4))
    g.op(fb.BuiltinOperator.ADD, [x, g.const("c", constant)], [y], fb.AddOptionsT())
    return g.to_bytes([x], [y])


@pytest.mark.parametrize("constant, samples, message", [
    (np.ones((1, 4), np.float32), np.full((2, 1, 4), np.nan, np.float32),
     "calibration input 'x' holds NaN or inf"),
    (np.array([[1, np.nan, 2, 3]], np.float32), np.ones((2, 1, 4), np.float32),
     "that LiteRT cannot load: tensor 'c' has scale nan (NaN or inf in the float model's values)"),
])
def test_non_finite_values_are_refused_in_one_line(tmp_path, constant, samples, message):
    path = tmp_path / "add.tflite"
    path.write_bytes(_add_model(constant))
    with pytest.raises(UserError, match=None) as info:
        quantize_tflite(path, tmp_path / "add.int8.tflite", {"x": samples})
    assert message in str(info.value) and "\n" not in str(info.value)


def _int8_range(path: Path, name: str) -> tuple[float, float]:
    detail = next(d for d in _interpreter(path.read_bytes()).get_tensor_details() if d["name"] == name)
    scale, zero = detail["quantization"]
    return (-128 - zero) * scale, (127 - zero) * scale


def test_minmax_keeps_every_calibration_value_of_a_small_tensor(tmp_path):
    path = tmp_path / "net.tflite"
    path.write_bytes(M.float_convnet())
    calibration = M.calibration_samples(16)
    seen = M.activation_ranges(path.read_bytes(), calibration)
    ranges = {}
    for method in ("minmax", "moving-average", "extremes"):
        out = tmp_path / f"{method}.tflite"
        quantize_tflite(path, out, {"input": calibration}, method=method)
        ranges[method] = {n: _int8_range(out, n) for n in ("logits", "conv1")}
    lo, hi = seen["logits"]  # 5 elements per sample: small
    step = (hi - min(lo, 0)) / 255
    assert ranges["minmax"]["logits"][0] <= lo + step and ranges["minmax"]["logits"][1] >= hi - step
    assert ranges["minmax"]["logits"] == ranges["extremes"]["logits"]
    # the moving average of per-sample extremes is narrower: calibration values clip
    assert ranges["moving-average"]["logits"][1] - ranges["moving-average"]["logits"][0] < 0.9 * (hi - lo)
    # a large tensor (256 elements per sample) keeps the quantizer's moving average under minmax
    assert ranges["minmax"]["conv1"] == ranges["moving-average"]["conv1"] != ranges["extremes"]["conv1"]


def test_calibration_methods_ai_edge_quantizer_lacks_are_refused_in_one_line(tmp_path):
    path = tmp_path / "net.tflite"
    path.write_bytes(M.float_convnet())
    with pytest.raises(UserError, match="ai-edge-quantizer keeps no histograms of activations"):
        quantize_tflite(path, tmp_path / "q.tflite", {"input": M.calibration_samples(2)}, method="percentile")


@pytest.fixture(scope="module")
def cli_work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tflite-rewrite-run")
    (tmp / "up.tflite").write_bytes(M.transpose_conv_bias())
    (tmp / "warp.tflite").write_bytes(M.transpose_conv_bias(custom="TransformTensorBilinear"))
    np.savez(tmp / "eval.npz", input=_samples(3, seed=5))
    np.savez(tmp / "calib.npz", input=_samples(16, seed=1))
    return tmp


def test_run_compares_against_the_rewritten_float_model(cli_work, agent_cache):
    proc = qbench("run", "up.tflite", "--data", "eval.npz", "--calibration", "calib.npz", "--out", "up",
                  "--delegate", "none", *FAST, cwd=cli_work, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(cli_work / "up")
    assert report["status"] == "ok"
    assert report["models"]["float"]["path"] == str(cli_work / "up" / "model.float.tflite")
    assert any("float reference: model.float.tflite" in n for n in report["notes"])
    assert report["unmatched"] == [] and {x["name"] for x in report["layers"]} >= {"conv1", "up"}
    # output PSNR recomputed here on the files the report names
    samples = np.load(cli_work / "eval.npz")["input"]
    float_model = Path(report["models"]["float"]["path"]).read_bytes()
    int8_model = Path(report["models"]["int8"]["path"]).read_bytes()
    f = np.stack([_tensors(float_model, s)["up"].astype(np.float64) for s in samples])
    q = np.stack([_dequantized_output(int8_model, s) for s in samples])
    expected = 10 * np.log10(np.max(np.abs(f)) ** 2 / np.mean((f - q) ** 2))
    assert report["summary"]["output_psnr_db"] == pytest.approx(expected, abs=1e-3)


def test_run_names_the_custom_op_that_needs_mediapipe(cli_work, agent_cache):
    proc = qbench("run", "warp.tflite", "--samples", "1", "--out", "warp", *FAST, cwd=cli_work, cache=agent_cache)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("qbench: error:")]
    assert len(lines) == 1 and "no kernel for its custom op(s) TransformTensorBilinear" in lines[0]


def _partitions(model: bytes) -> tuple[int, dict[str, int]]:
    """(XNNPACK partitions, op type -> nodes outside them) of ``model`` loaded as LiteRT loads it by default."""
    from qbench.agent.runners.litert import delegate_partitions

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tfl.Interpreter(model_content=model)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()
    split = delegate_partitions(nodes)
    return split.partitions, split.outside


def test_ops_xnnpack_runs_in_float_only_are_rewritten_into_ops_it_runs_in_int8(tmp_path):
    model = M.unfused_block()
    prepared = prepare_tflite(model)
    assert _ops(prepared.reference) == _ops(model)  # the float reference is the user's graph
    ops = _ops(prepared.model)
    assert "HARD_SWISH" not in ops and "AVERAGE_POOL_2D" not in ops and "RELU6" not in ops
    assert ops.count("RELU") == 1  # the one whose input has a second reader
    assert ops.count("MEAN") == 1
    assert any("2 activation op(s) fused" in n for n in prepared.notes)
    assert any("1 whole-map AVERAGE_POOL_2D rewritten as MEAN" in n for n in prepared.notes)
    assert any("1 HARD_SWISH rewritten as ADD, RELU6 and MUL" in n for n in prepared.notes)
    # same function in float, and every tensor the rewritten graph keeps keeps its values
    sample = _samples(1, M.UNFUSED_SHAPE)[0]
    before, after = _tensors(model, sample), _tensors(prepared.model, sample)
    for name in ("relu", "relu6", "hard_swish", "squeeze", "out", "tail"):
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5 * np.abs(before[name]).max())
    assert "conv" not in after and "dw" not in after  # fused away: the ops write the activations' tensors

    path = tmp_path / "block.tflite"
    path.write_bytes(model)
    result = quantize_tflite(path, tmp_path / "block.int8.tflite", {"input": _samples(16, M.UNFUSED_SHAPE)})
    # one op stays outside XNNPACK: the RELU that could not be fused (before: the 5 rewritten ones too)
    assert _partitions(result.path.read_bytes()) == (2, {"RELU": 1})
    assert _partitions(model) == (1, {})  # XNNPACK takes all of the float model as it is
    reference = _dequantized_output(model, sample)
    assert _snr_db(reference, _dequantized_output(result.path.read_bytes(), sample)) > 20


def test_the_ops_a_delegate_left_out_are_named_by_the_agent_and_the_report(tmp_path):
    """The unfusable RELU of the block stays outside XNNPACK: the agent's coverage and the terminal name it."""
    from qbench.agent.runners.litert import LiteRTRunner
    from qbench.host.report.delegation import coverage_text
    from qbench.protocols.messages import LiteRTRunnerConfig

    path = tmp_path / "block.tflite"
    path.write_bytes(M.unfused_block())
    result = quantize_tflite(path, tmp_path / "block.int8.tflite", {"input": _samples(16, M.UNFUSED_SHAPE)})
    runner = LiteRTRunner(str(result.path), LiteRTRunnerConfig(delegate="xnnpack"))
    runner.load()
    coverage = runner.delegation()
    assert (coverage["partitions"], coverage["outside"]) == (2, {"RELU": 1})
    assert coverage["delegated_ops"] == coverage["total_ops"] - 1
    assert coverage_text(coverage).endswith(
        "in 2 partition(s); LiteRT's builtin kernels ran the rest (RELU x1), each one a break between partitions")


def _head_samples(n: int, seed: int) -> np.ndarray:
    """Inputs of :func:`tflite_models.scored_if` whose scores fall on both sides of its IF's 0.5."""
    return np.random.default_rng(seed).normal(0, 1, (n, 1, 16)).astype(np.float32)


def test_an_if_with_repeated_argument_names_quantizes_with_its_branches_in_float(tmp_path):
    """ai-edge-quantizer refuses repeated tensor names ("arg0 is not unique"), then fails on a branch op it
    never calibrated; qbench renames the repeats and keeps the branches in float (openwakeword's hey_jarvis)."""
    (tmp_path / "head.tflite").write_bytes(M.scored_if())
    samples = _head_samples(16, seed=1)
    result = quantize_tflite(tmp_path / "head.tflite", tmp_path / "head.int8.tflite", {"x": samples})
    assert any("3 repeated tensor name(s) made unique" in n for n in result.notes)  # arg0, arg1, out
    int8 = read_graph(result.path)
    assert int8.tensors[int8.by_name["head/logit"]].dtype == "int8"  # subgraph 0 is quantized
    assert all(t.dtype in ("float32", "int32") for body in int8.bodies for t in body.tensors)
    flow = match_tflite(tmp_path / "head.tflite", result.path).control_flow
    assert (flow.nodes, flow.body_nodes, flow.total_nodes, flow.quantized_bodies) == (["IF score"], 3, 7, False)
    float_scores, int8_scores = ([_dequantized_output(path.read_bytes(), s).item() for s in samples]
                                 for path in (tmp_path / "head.tflite", result.path))
    assert min(float_scores) < 0.5 < max(float_scores)  # both branches ran
    assert np.max(np.abs(np.array(float_scores) - np.array(int8_scores))) < 0.05


def test_a_placeholder_default_input_shape_is_quantized_and_run_at_the_datas_shape(tmp_path):
    """openwakeword's melspectrogram.tflite: input [1, -1], default [1, 1], at which neither the quantizer's
    interpreters nor the agent's prepare; both allocate at the data's shape now, and the float model
    compared is the user's with only that default changed."""
    (tmp_path / "mel.tflite").write_bytes(M.placeholder_input())
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "eval.npz", audio=rng.normal(0, 1, (3, 1, 32)).astype(np.float32))
    np.savez(tmp_path / "calib.npz", audio=rng.normal(0, 1, (8, 1, 32)).astype(np.float32))
    proc = qbench("run", "mel.tflite", "--data", "eval.npz", "--calibration", "calib.npz", "--out", "out",
                  *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "out")
    assert any("float reference: model.float.tflite, the model with the data's shape as the default of its "
               "dynamic input(s) audio" in n for n in report["notes"])
    reference = _interpreter_at(Path(report["models"]["float"]["path"]).read_bytes())
    assert list(reference.get_input_details()[0]["shape_signature"]) == [1, -1]
    # the reference computes what the user's model computes at the data's shape
    user = tfl.Interpreter(model_content=(tmp_path / "mel.tflite").read_bytes(), experimental_op_resolver_type=PLAIN)
    user.resize_tensor_input(user.get_input_details()[0]["index"], [1, 32])
    user.allocate_tensors()
    sample = np.load(tmp_path / "eval.npz")["audio"][0]
    for interpreter in (user, reference):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample)
        interpreter.invoke()
    np.testing.assert_array_equal(user.get_tensor(user.get_output_details()[0]["index"]),
                                  reference.get_tensor(reference.get_output_details()[0]["index"]))
    assert report["outputs"][0]["name"] == "frames" and report["outputs"][0]["sqnr_db"] > 20


def _interpreter_at(model: bytes) -> tfl.Interpreter:
    interpreter = tfl.Interpreter(model_content=model, experimental_op_resolver_type=PLAIN)
    interpreter.allocate_tensors()  # at the default shape: the data's
    return interpreter
