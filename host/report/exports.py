"""Files for other tools: layers.csv and a Model Explorer overlay.

The overlay is the "node data" JSON of Google's Model Explorer
(``ai-edge-model-explorer``, ``model_explorer.node_data_builder.GraphNodeData``):
``{"name", "results": {key: {"value": psnr_db}}, "thresholds": [...]}``. A file
holding one ``GraphNodeData`` (top-level ``results``) applies to whichever graph
is open, so no graph id is needed. Keys, per model format:

* ONNX, shown by the ``model-explorer-onnx`` extension: node ids are ONNX node
  names and graph outputs are ``[io]<value name>`` nodes. qbench layers are
  named after tensors, so each tensor is mapped to the node producing it, from
  ``layer["node"]`` when the report has it, else from the float model file.
* TFLite, shown by the built-in flatbuffer adapter: node ids are operator
  indices ("0", "1", ...), but each node lists its output tensors as
  ``tensor_name`` in ``outputsMetadata`` and Model Explorer resolves a key that
  equals a tensor name to the node producing it. Keys are the tensor names.

Exact (error-free) layers have no PSNR and are left out: a made-up number would
skew the aggregated min/avg that Model Explorer shows for groups of nodes.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..compare.metrics import nonfinite_text

PathLike = Union[str, "os.PathLike[str]"]

CSV_NAME, OVERLAY_NAME = "layers.csv", "report.modelexplorer.json"
RED, AMBER, GREEN = "#d32f2f", "#ffa000", "#388e3c"
RED_BELOW_DB, AMBER_BELOW_DB = 20.0, 30.0
# Model Explorer leaves nodes above the last threshold uncoloured, so the last one must exceed any PSNR.
_TOP_DB = 1e9

CSV_COLUMNS = (
    "index", "name", "op_type", "psnr_db", "local_psnr_db", "sqnr_db", "local_sqnr_db", "crest_db", "mse", "rmse",
    "max_abs_error", "peak", "float_min", "float_max", "quant_min", "quant_max", "clipped_fraction", "rmse_over_step",
    "exact", "drop", "drop_db", "elements", "int8_name", "rule", "parents", "user_node", "user_op_type", "prepared_name",
    "nonfinite",
)


def write_layers_csv(report: Mapping[str, Any], path: PathLike) -> Path:
    """Write the per-layer figures as CSV, one row per layer in topological order.

    Missing figures (``null`` in the report, e.g. the PSNR of an exact layer) are
    empty cells; ``parents`` are joined with ``;``.

    Args:
        report: A ``qbench.report/1`` dict.
        path: Where to write, usually ``<out>/layers.csv``.

    Returns:
        The path written.
    """
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for layer in report.get("layers") or []:
            writer.writerow([_cell(layer, column) for column in CSV_COLUMNS])
    return path


def _cell(layer: Mapping[str, Any], column: str) -> Any:
    value = layer.get(column)
    if value is None:
        return ""
    if column == "parents":
        return ";".join(value)
    if column == "nonfinite":
        return nonfinite_text(value)
    if isinstance(value, bool):
        return int(value)
    return value


def psnr_colour(psnr_db: Optional[float]) -> str:
    """The overlay colour of a PSNR: red below 20 dB, amber below 30 dB, else green."""
    if psnr_db is None or psnr_db >= AMBER_BELOW_DB:
        return GREEN
    return RED if psnr_db < RED_BELOW_DB else AMBER


def model_format_of(path: PathLike) -> str:
    """``"onnx"`` or ``"tflite"`` from a model file name."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".onnx", ".tflite"):
        raise ValueError(f"cannot tell the model format of {path}: expected .onnx or .tflite")
    return suffix[1:]


def overlay_node_data(report: Mapping[str, Any], model_format: str) -> dict[str, Any]:
    """The Model Explorer ``GraphNodeData`` for a report, as plain data.

    Args:
        report: A ``qbench.report/1`` dict.
        model_format: ``"onnx"`` or ``"tflite"``: decides how nodes are keyed.

    Returns:
        A dict that ``model_explorer.node_data_builder.GraphNodeData`` accepts.
    """
    if model_format not in ("onnx", "tflite"):
        raise ValueError(f"unknown model format {model_format!r}: expected onnx or tflite")
    layers = report.get("layers") or []
    producers = _onnx_producers(report) if model_format == "onnx" else {}
    results: dict[str, dict[str, float]] = {}
    for layer in layers:
        if layer.get("psnr_db") is None:
            continue
        key = layer.get("node") or producers.get(layer.get("prepared_name", layer["name"])) or layer["name"]
        # A node with several outputs shows its worst one.
        if key not in results or layer["psnr_db"] < results[key]["value"]:
            results[key] = {"value": round(float(layer["psnr_db"]), 3)}
    layer_names = {layer["name"] for layer in layers}
    for output in report.get("outputs") or []:
        if output.get("psnr_db") is None:
            continue
        key = f"[io]{output['name']}" if model_format == "onnx" else output["name"]
        if model_format == "onnx" or output["name"] not in layer_names:
            results.setdefault(key, {"value": round(float(output["psnr_db"]), 3)})
    return {
        "name": "qbench PSNR (dB)",
        "results": results,
        "thresholds": [
            # Model Explorer's thresholds are inclusive upper bounds.
            {"value": RED_BELOW_DB, "bgColor": RED, "textColor": "#ffffff"},
            {"value": AMBER_BELOW_DB, "bgColor": AMBER},
            {"value": _TOP_DB, "bgColor": GREEN, "textColor": "#ffffff"},
        ],
    }


def write_model_explorer_overlay(report: Mapping[str, Any], path: PathLike,
                                 model_format: Optional[str] = None) -> Path:
    """Write ``report.modelexplorer.json``: per-layer PSNR for Model Explorer.

    Open it with ``model-explorer MODEL --node_data_paths=PATH`` (add
    ``--extensions=model_explorer_onnx`` for ONNX), or ``qbench view REPORT``.

    Args:
        report: A ``qbench.report/1`` dict.
        path: Where to write.
        model_format: ``"onnx"`` or ``"tflite"``; defaults to the float model's suffix.

    Returns:
        The path written.
    """
    if model_format is None:
        float_model = report["models"]["float"]
        model_format = float_model.get("format") or model_format_of(float_model["path"])
    path = Path(path)
    path.write_text(json.dumps(overlay_node_data(report, model_format), indent=1), encoding="utf-8")
    return path


def _onnx_producers(report: Mapping[str, Any]) -> dict[str, str]:
    """Tensor name -> Model Explorer node id, from the float model if it is at hand.

    A tensor maps to the node producing it, a graph input to its ``[io]`` node.
    """
    model_path = ((report.get("models") or {}).get("float") or {}).get("path")
    if not model_path or not Path(model_path).is_file():
        return {}
    from ..compare import matching  # Deferred: only ONNX overlays need onnx, and it is slow to import.

    try:
        model = matching.load_model(model_path)  # a run's own: matching parsed it already
    except Exception:  # noqa: BLE001 - any unreadable model only costs the tensor-name fallback
        return {}
    keys = {value.name: f"[io]{value.name}" for value in model.graph.input}
    keys.update({output: node.name for node in model.graph.node if node.name for output in node.output})
    return keys
