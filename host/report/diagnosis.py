"""The diagnosis sections of report.json: weight error, the sensitive-layer ranking, equalization,
bias correction."""

from __future__ import annotations

from typing import Any

from ..compare import sensitivity, weights
from ..run_state import RunState
from . import prefetch


def add_diagnosis(report: dict[str, Any], state: RunState) -> None:
    """Adds ``weights`` (unless :func:`add_weights` did), ``sensitive_layers``, ``ranking_account``,
    ``equalization`` and ``bias_correction``."""
    layers = report.get("layers", [])
    if "weights" not in report and "weights_error" not in report:
        add_weights(report, state)
    if layers:
        report["sensitive_layers"] = sensitivity.rank_sensitive(layers, report.get("weights"))
        ranking = sensitivity.account(layers, report.get("outputs", []), report["sensitive_layers"])
        if ranking is not None:
            report["ranking_account"] = ranking
    if state.equalization is not None:
        report["equalization"] = state.equalization
    if state.bias_correction is not None:
        report["bias_correction"] = state.bias_correction


def add_weights(report: dict[str, Any], state: RunState) -> None:
    """Adds ``weights`` and ``weight_psnr_db`` / ``weight_worst_channel_psnr_db`` on the layers that consume them.

    Called before drops are flagged: a layer with weights of its own has an error source of its own.
    """
    layers = report.get("layers", [])
    if state.float_info is not None and state.int8_info is not None:
        try:
            # weights reach tensors of the model files: a layer's prepared name where it has one
            named = {x.get("prepared_name", x["name"]): x["name"] for x in layers}
            found, unmatched = prefetch.weight_table(state).for_layers(named)
            for w in found:
                w["layer"] = named.get(w["layer"])
        except Exception as exc:  # noqa: BLE001 - an extra figure must not cost the run its report
            report["weights_error"] = f"{type(exc).__name__}: {exc}"
        else:
            weights.attach_to_layers(layers, found)
            report["weights"] = found
            if unmatched:
                report["weights_unmatched"] = unmatched
