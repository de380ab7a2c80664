"""layers.csv and the Model Explorer overlay, checked against their formats and Model Explorer's own code."""

from __future__ import annotations

import csv
import json

import onnx
import pytest
from onnx import TensorProto, helper

from qbench.host.report.exports import (
    AMBER, CSV_COLUMNS, GREEN, RED, overlay_node_data, psnr_colour, write_layers_csv, write_model_explorer_overlay,
)
from reportdata import make_report


def test_layers_csv(tmp_path):
    report = make_report()
    path = write_layers_csv(report, tmp_path / "layers.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(report["layers"])
    for row, layer in zip(rows, report["layers"]):
        assert row["name"] == layer["name"] and int(row["index"]) == layer["index"]
        assert (row["psnr_db"] == "") == (layer["psnr_db"] is None)
        if layer["psnr_db"] is not None:
            assert float(row["psnr_db"]) == layer["psnr_db"]
        assert row["drop"] == str(int(layer["drop"]))
        assert row["parents"].split(";") == (layer["parents"] or [""])


def _me_colour(node_data: dict, value: float) -> str:
    """The colour Model Explorer gives a value: the first threshold at or above it."""
    for item in node_data["thresholds"]:
        if value <= item["value"]:
            return item["bgColor"]
    return "none"


@pytest.mark.parametrize("psnr, colour", [(5.0, RED), (19.9, RED), (25.0, AMBER), (29.99, AMBER), (30.5, GREEN),
                                          (95.0, GREEN)])
def test_thresholds_colour_like_the_documented_bands(psnr, colour):
    data = overlay_node_data(make_report(n_layers=3), "tflite")
    assert psnr_colour(psnr) == colour
    # The 20/30 dB borders themselves fall in the lower band in Model Explorer (inclusive bounds).
    assert _me_colour(data, psnr) == colour


def _onnx_model(path, report):
    """A float model whose node names differ from their output tensor names, as in exported models."""
    nodes, previous = [], "x"
    for layer in report["layers"]:
        nodes.append(helper.make_node("Relu", [previous], [layer["name"]], name=f"node:{layer['name']}"))
        previous = layer["name"]
    nodes.append(helper.make_node("Identity", [previous], ["logits"], name="head"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 10
    onnx.save(model, str(path))


def test_onnx_overlay_is_keyed_by_producing_node(tmp_path):
    report = make_report(n_layers=12, model_path=str(tmp_path / "float.onnx"))
    _onnx_model(tmp_path / "float.onnx", report)
    path = write_model_explorer_overlay(report, tmp_path / "report.modelexplorer.json")
    data = json.loads(path.read_text())
    with_psnr = [layer for layer in report["layers"] if layer["psnr_db"] is not None]
    assert {f"node:{layer['name']}" for layer in with_psnr} | {"[io]logits"} == set(data["results"])
    for layer in with_psnr:
        assert data["results"][f"node:{layer['name']}"]["value"] == pytest.approx(layer["psnr_db"], abs=1e-3)


def test_onnx_overlay_without_the_model_falls_back_to_tensor_names(tmp_path):
    report = make_report(n_layers=5, model_path=str(tmp_path / "gone.onnx"))
    data = overlay_node_data(report, "onnx")
    assert {layer["name"] for layer in report["layers"] if layer["psnr_db"] is not None} <= set(data["results"])


def test_overlay_loads_with_model_explorer_node_data_builder(tmp_path):
    ndb = pytest.importorskip("model_explorer.node_data_builder")
    dacite = pytest.importorskip("dacite")
    report = make_report(model_path=str(tmp_path / "model.tflite"))
    path = write_model_explorer_overlay(report, tmp_path / "report.modelexplorer.json")
    raw = json.loads(path.read_text())
    graph_data = dacite.from_dict(ndb.GraphNodeData, raw, config=dacite.Config(strict=True))
    assert all(isinstance(r, ndb.NodeDataResult) for r in graph_data.results.values())
    assert [t.bgColor for t in graph_data.thresholds] == [RED, AMBER, GREEN]
    # Model Explorer's own serializer reproduces the file we wrote (plus its defaults).
    serialized = json.loads(graph_data.to_json_string())
    assert {key: serialized[key] for key in raw} == raw
    model_data = ndb.ModelNodeData(graphsData={"main": graph_data})
    assert json.loads(model_data.to_json_string())["main"] == serialized


def test_tflite_overlay_keys_resolve_to_adapter_nodes(tmp_path):
    pytest.importorskip("ai_edge_litert")
    adapter = pytest.importorskip("model_explorer.builtin_tflite_flatbuffer_adapter")
    import tflite_models

    model_path = tmp_path / "float.tflite"
    model_path.write_bytes(tflite_models.float_convnet())
    layers = [{"index": i, "name": name, "op_type": "op", "psnr_db": 40.0 - 5 * i, "exact": False}
              for i, name in enumerate(tflite_models.ACTIVATIONS[1:])]
    report = {"models": {"float": {"path": str(model_path)}}, "layers": layers,
              "outputs": [{"name": "probs", "psnr_db": 12.0, "kind": "float"}]}
    data = json.loads(write_model_explorer_overlay(report, tmp_path / "overlay.json").read_text())
    graphs = adapter.BuiltinTfliteFlatbufferAdapter().convert(str(model_path), {})["graphCollections"][0].graphs
    graph = graphs[0] if isinstance(graphs[0], dict) else vars(graphs[0])
    # Model Explorer resolves a key that names an output tensor to the node producing it.
    tensor_to_node = {}
    for node in graph["nodes"]:
        for output in node["outputsMetadata"]:
            for attr in output["attrs"]:
                if attr["key"] == "tensor_name":
                    tensor_to_node[attr["value"]] = node["id"]
    assert set(data["results"]) == {layer["name"] for layer in layers}
    assert set(data["results"]) <= set(tensor_to_node)
    assert len({tensor_to_node[key] for key in data["results"]}) == len(layers)


def test_artifacts_written_next_to_the_report(tmp_path):
    from qbench.host.report.artifacts import write_artifacts

    report = make_report(n_layers=8, model_path=str(tmp_path / "net.onnx"))
    written = write_artifacts(report, tmp_path)
    assert {kind: path.name for kind, path in written.items()} == {
        "html": "report.html", "csv": "layers.csv", "overlay": "report.modelexplorer.json"}
    assert all(path.stat().st_size > 0 for path in written.values())
    partial = {key: value for key, value in report.items() if key not in ("layers", "outputs")}
    assert set(write_artifacts(partial, tmp_path / ".")) == {"html"}
