"""MediaPipe's own float .tflite models (mediapipe 0.10.14 wheel, fetched by ``make models``).

Three patterns that used to give int8 models LiteRT refuses, and the 1-element output whose range
ai-edge-quantizer's moving average collapsed; every figure is recomputed here with plain LiteRT
interpreters on the files qbench wrote, on real-looking inputs (benchmarks.published).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import interpreter as tfl

from benchmarks import published as P
from cli import load_report, qbench
from qbench.host.errors import UserError
from qbench.host.quantize.tflite import quantize_tflite

pytestmark = pytest.mark.slow
PLAIN = tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _model(name: str) -> P.Published:
    m = P.model(name)
    if not Path(m.path).is_file():
        pytest.skip(f"{name} not fetched: make models")
    return m


def _data(m: P.Published, count: int, split: str) -> dict[str, np.ndarray]:
    """``count`` samples with the model's batch axis: ``(count, 1, h, w, 3)``."""
    return P.data(m, count, split=split)


def _interpreter(model: bytes, preserve: bool = False, resolver=PLAIN) -> tfl.Interpreter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tfl.Interpreter(model_content=model, experimental_op_resolver_type=resolver,
                                      experimental_preserve_all_tensors=preserve)
    interpreter.allocate_tensors()
    return interpreter


def _outputs(model: bytes, samples: np.ndarray, resolver=PLAIN) -> list[np.ndarray]:
    """Every output over the samples, dequantized, as float64 arrays stacked on the sample axis."""
    interpreter = _interpreter(model, resolver=resolver)
    inp = interpreter.get_input_details()[0]
    scale, zero = inp["quantization"]
    got = []
    for sample in samples:
        x = np.clip(np.rint(sample / scale) + zero, -128, 127).astype(inp["dtype"]) if scale else sample
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        row = []
        for d in interpreter.get_output_details():
            value = interpreter.get_tensor(d["index"]).astype(np.float64)
            s, z = d["quantization"]
            row.append((value - z) * s if s else value)
        got.append(row)
    return [np.stack(column) for column in zip(*got)]


def _psnr(f: np.ndarray, q: np.ndarray) -> float:
    return 10 * np.log10(np.max(np.abs(f)) ** 2 / np.mean((f - q) ** 2))


@pytest.mark.parametrize("name, note, psnr_db", [
    ("mp-selfie_segmentation", "Convolution2DTransposeBias rewritten as builtin TRANSPOSE_CONV", 12),  # 17.5 dB
    ("mp-pose_detection", "38 sparse weight(s) behind DENSIFY densified", 22),  # 27.8 dB
])
def test_int8_model_loads_and_runs_in_plain_litert(tmp_path, name, note, psnr_db):
    m = _model(name)
    result = quantize_tflite(m.path, tmp_path / "int8.tflite", _data(m, 4, "calib"))
    assert any(note in n for n in result.notes), result.notes
    # the float reference: the rewritten model where plain LiteRT cannot run the published one
    float_model = result.float_model or Path(m.path).read_bytes()
    if result.float_model is None:
        _interpreter(float_model)  # the published model loads as it is
    samples = _data(m, 2, "eval")[m.input_name]
    f, q = _outputs(float_model, samples), _outputs(result.path.read_bytes(), samples)
    assert [a.shape for a in f] == [b.shape for b in q]
    assert min(_psnr(a, b) for a, b in zip(f, q)) > psnr_db


@pytest.mark.parametrize("name, rewrites", [
    # separate RELUs after convolutions and ADDs: 18 partitions before
    ("mp-face_detection_short_range", ["17 activation op(s) fused"]),
    # separate RELUs, squeeze-and-excite pools, HARD_SWISH: 37 partitions before
    ("mp-selfie_segmentation", ["22 activation op(s) fused", "10 whole-map AVERAGE_POOL_2D rewritten as MEAN",
                                "11 HARD_SWISH rewritten as ADD, RELU6 and MUL"]),
])
def test_int8_model_is_one_xnnpack_partition_like_the_float_one(tmp_path, name, rewrites):
    """XNNPACK runs those ops in float only: left as they were, each split the int8 model's partition
    (int8 5 to 7 times slower than float) and ran on LiteRT's reference kernels."""
    from qbench.agent.runners.litert import delegate_partitions

    m = _model(name)
    result = quantize_tflite(m.path, tmp_path / "int8.tflite", _data(m, 4, "calib"))
    for note in rewrites:
        assert any(note in n for n in result.notes), result.notes
    interpreter = _interpreter(result.path.read_bytes(), resolver=tfl.OpResolverType.AUTO)
    split = delegate_partitions(interpreter._get_ops_details())
    assert (split.partitions, split.outside) == (1, {})
    float_model = result.float_model or Path(m.path).read_bytes()
    samples = _data(m, 2, "eval")[m.input_name]
    f, q = _outputs(float_model, samples), _outputs(result.path.read_bytes(), samples, tfl.OpResolverType.AUTO)
    assert min(_psnr(a, b) for a, b in zip(f, q)) > 12


def test_model_needing_mediapipes_runtime_is_refused_with_its_custom_ops(tmp_path):
    m = _model("mp-face_landmark_with_attention")
    with pytest.raises(UserError) as info:
        quantize_tflite(m.path, tmp_path / "int8.tflite", _data(m, 1, "calib"))
    assert str(info.value).startswith(
        "face_landmark_with_attention.tflite cannot run on LiteRT: no kernel for its custom op(s) "
        "Landmarks2TransformMatrix, TransformLandmarks, TransformTensorBilinear, and no builtin op replaces them "
        "(they need their own runtime, such as MediaPipe's)")


def test_minmax_keeps_the_face_presence_logit_range(tmp_path):
    """face_landmark's presence score (``conv2d_31``, 1 element): every calibration value fits minmax's
    int8 range; the moving average of ai-edge-quantizer leaves a range that clips most of them."""
    m = _model("mp-face_landmark")
    calibration = _data(m, 8, "calib")
    interpreter = _interpreter(Path(m.path).read_bytes(), preserve=True)
    inp = interpreter.get_input_details()[0]
    index = next(d["index"] for d in interpreter.get_tensor_details() if d["name"] == "conv2d_31")
    values = []
    for sample in calibration[m.input_name]:
        interpreter.set_tensor(inp["index"], sample)
        interpreter.invoke()
        values.append(float(interpreter.get_tensor(index).ravel()[0]))
    covered = {}
    for method in ("minmax", "moving-average"):
        out = quantize_tflite(m.path, tmp_path / f"{method}.tflite", calibration, method=method).path
        detail = next(d for d in _interpreter(out.read_bytes()).get_tensor_details() if d["name"] == "conv2d_31")
        scale, zero = detail["quantization"]
        lo, hi = (-128 - zero) * scale, (127 - zero) * scale
        covered[method] = sum(lo - scale <= v <= hi + scale for v in values)
    assert covered["minmax"] == len(values) and covered["moving-average"] < len(values) / 2, (covered, values)


def test_calibrate_compares_activation_ranges_on_the_device(tmp_path, agent_cache):
    """`qbench calibrate --accuracy-only` on face_landmark: minmax wins over the moving average, in
    the table (each row its own report's figure) and recomputed here on the models the rows name."""
    m = _model("mp-face_landmark")
    np.savez(tmp_path / "calib.npz", **_data(m, 8, "calib"))
    np.savez(tmp_path / "eval.npz", **_data(m, 4, "eval"))
    proc = qbench("calibrate", m.path, "--data", "eval.npz", "--calibration", "calib.npz", "--methods",
                  "minmax,moving-average", "--accuracy-only", "--out", "cal", "--quiet", cwd=tmp_path,
                  cache=agent_cache, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "cal")
    rows = {row["method"]: row for row in report["calibration"]["methods"]}
    assert report["calibration"]["winner"] == "minmax"
    assert {r["activation_ranges"] for r in rows.values()} == {"minmax", "moving-average"}
    samples = np.load(tmp_path / "eval.npz")[m.input_name]
    f = _outputs(Path(m.path).read_bytes(), samples)
    here = {}
    for method, row in rows.items():
        assert row["output_psnr_db"] == load_report(tmp_path / "cal" / method)["summary"]["output_psnr_db"]
        q = _outputs(Path(row["model"]).read_bytes(), samples)
        # builtin kernels here, XNNPACK op by op on the device (capture): the figures differ by < 1 dB
        here[method] = min(_psnr(a, b) for a, b in zip(f, q))
        assert row["output_psnr_db"] == pytest.approx(here[method], abs=1.0), method
    assert here["minmax"] > here["moving-average"] + 5


def test_a_tflite_run_whose_ranking_does_not_explain_its_output_measures_itself(tmp_path, agent_cache):
    """mp-hand_landmark_full: its handedness Sigmoid magnifies the error of the logit before it, so the run measures
    the blocks itself, as for ONNX, from the calibration ai-edge-quantizer made for the run (its trial models
    written by recipe). One trial's figure is recomputed with plain LiteRT."""
    m = _model("mp-hand_landmark_full")
    for split, count in (("calib", 4), ("eval", 2)):
        np.savez(tmp_path / f"{split}.npz", **_data(m, count, split))
    proc = qbench("run", str(m.path), "--data", "eval.npz", "--calibration", "calib.npz", "--accuracy-only",
                  "--out", "out", cwd=tmp_path, cache=agent_cache, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "out")
    account = report["ranking_account"]
    assert not account["explains"] and account["magnifiers"][0]["op_type"] == "LOGISTIC"
    sweep = report["sensitivity"]
    assert sweep["figures"] == ["only_int8", "keep_float"] and sweep["trials"] == 1 + 2 * len(sweep["blocks"])
    assert account["measured"]["block"] in [b["block"] for b in sweep["blocks"]]
    samples = np.load(tmp_path / "eval.npz")[m.input_name]
    xnnpack = tfl.OpResolverType.AUTO  # the agent's kernels: LiteRT's default delegate
    reference = _outputs(Path(report["models"]["float"]["path"]).read_bytes(), samples, xnnpack)
    trials = sorted((tmp_path / "out" / "ranking_sweep").glob("trial-*.tflite"))
    figures = [min(_psnr(f, q) for f, q in zip(reference, _outputs(t.read_bytes(), samples, xnnpack))) for t in trials]
    measured = [b["only_int8_psnr_db"] for b in sweep["blocks"] if b["only_int8_psnr_db"] is not None]
    assert min(abs(f - measured[0]) for f in figures) < 0.01  # plain LiteRT agrees
