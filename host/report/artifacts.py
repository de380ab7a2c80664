"""Everything a run writes next to report.json, in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from qbench.host.report.exports import CSV_NAME, OVERLAY_NAME, write_layers_csv, write_model_explorer_overlay

HTML_NAME = "report.html"


def write_artifacts(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.html, and layers.csv plus the Model Explorer overlay when the run has layers.

    Args:
        report: A ``qbench.report/1`` dict (complete or partial).
        out_dir: The run's output directory.

    Returns:
        What was written, by kind (``html``, ``csv``, ``overlay``).
    """
    # Imported here: plotly takes 0.1-0.2 s to import, and `qbench run` imports this module before
    # it starts its agent (report.prefetch loads plotly while the device measures).
    from qbench.host.report.html import write_html

    out_dir = Path(out_dir)
    written = {"html": write_html(report, out_dir / HTML_NAME)}
    if report.get("layers"):
        written["csv"] = write_layers_csv(report, out_dir / CSV_NAME)
        float_model = (report.get("models") or {}).get("float") or {}
        model_format = float_model.get("format") or Path(float_model.get("path") or "").suffix.lstrip(".")
        if model_format in ("onnx", "tflite"):
            written["overlay"] = write_model_explorer_overlay(report, out_dir / OVERLAY_NAME, model_format)
    return written
