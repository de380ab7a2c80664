"""Where the damage is, measured, when the sensitive-layer ranking cannot say.

The ranking scores each layer's own error (:mod:`qbench.host.compare.sensitivity`). On small fully
connected heads the output's error comes from how those errors combine, and the ranking's scores
then add up to little of the SQNR the output lost (``ranking_account.explains`` false; on the
published wake-word heads its top is not where the damage is). A ``qbench run`` that finds its
ranking so, and made its own int8 model, measures instead: a sweep of :data:`BLOCKS` blocks of ops on
the device, each block alone int8 (every other op float) and each alone float
(:func:`qbench.host.sensitivity_sweep.sweep`, the trials of ``qbench sensitivity``), written as edits
of the run's own int8 model, evaluated on the run's samples in one more agent. The report gets the
``sensitivity`` section, as ``qbench sensitivity`` writes it, and ``ranking_account.measured``: the
block whose int8 costs the output most (the lowest only-int8 PSNR) and what keeping it float gains,
``ranking_top`` (the ranking's top layer and the block that computes it, so that the two conclusions
can be set side by side), and, when another block's float gains more (by :data:`REPAIR_DB` at least),
that block as ``best_repair``. The two differ where the damage needs error from elsewhere to arise: a variance
computed as E[x²] − E[x]² (magika's LayerNorms) cancels the rounding of the tensors before it into a
large error, which that block's own rounding alone need not cause.

A run of a user's own int8 model is not swept (a TFLite trial graph needs the quantizer's calibration,
which qbench keeps only for the model it made); ``ranking_account.measured.skipped`` says why and names
``qbench sensitivity``, as it says why when the sweep failed or was interrupted (the run's own figures
stand).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .evaluator import Evaluator
from .formats import format_of
from .report.build import build_report
from .run_state import UI, RunState
from .sensitivity_sweep import EditTrials, damage, make_blocks, nonfinite, sweep
from .transport.base import AgentTransport

BLOCKS = 8
REPAIR_DB = 3.0
FIGURES = ("only_int8", "keep_float")


def measure_if_unexplained(state: RunState, transport: Callable[[], AgentTransport], ui: UI) -> None:
    """Builds the run's report (kept in ``state.report`` for :func:`qbench.host.finish.write_run`) and,
    when its ranking does not explain the output, measures the sweep into it (see the module doc).

    Args:
        state: a finished run.
        transport: makes a fresh transport to the run's device.
        ui: the run's UI.
    """
    if state.error is not None or state.capture is None:
        return
    report = state.report = build_report(state)
    account = report.get("ranking_account")
    if not account or account["explains"]:
        return
    fmt = format_of(state.settings.model)
    graph = fmt.run_trial_graph(state)
    if graph is None:
        account["measured"] = {"skipped": "not measured in this run: a given int8 model"}
        return
    s = state.settings
    reference = Path(state.float_info.path)
    ui.stage("ranking sweep")
    ui.note(f"the ranking does not account for the output's error: measuring {BLOCKS} blocks on the device")
    try:
        with Evaluator(transport(), reference, state.samples, s.runner, s.timeout_s, ui.progress,
                       fmt.output_structures(reference)) as evaluator:
            blocks = make_blocks(graph, BLOCKS)
            trials = EditTrials(graph, blocks, evaluator, s.out_dir / "ranking_sweep")
            section = sweep(trials, lambda _: None, FIGURES).to_dict()
            section["trials"] = evaluator.trials
    except (UserError, KeyboardInterrupt) as exc:  # the run's own figures stand; the report says what is missing
        account["measured"] = {"skipped": str(exc) or "interrupted"}
        return
    section["method"] = s.calibration_method
    report["sensitivity"] = section
    account["measured"] = _worst(section)
    top = next(iter(report.get("sensitive_layers") or []), None)
    if top is not None and "block" in account["measured"]:
        layer = next(x for x in report["layers"] if x["name"] == top["name"])
        tensor = layer.get("prepared_name", layer["name"])  # blocks hold the model file's tensor names
        account["measured"]["ranking_top"] = {"name": top["name"],
                                              "block": next((b.index for b in blocks if tensor in b.tensors), None)}


def _worst(section: dict[str, Any]) -> dict[str, Any]:
    """The block whose int8 alone costs the output most (the worst verdict, then the lowest PSNR), and the gain
    of keeping it alone float."""
    rows = [r for r in section["blocks"] if r["only_int8_psnr_db"] is not None or nonfinite(r, "only_int8")]
    if not rows:
        return {"skipped": "every block alone int8 is exact"}
    worst = min(rows, key=damage)
    measured = {"block": worst["block"], "first_op": worst["first_op"], "last_op": worst["last_op"],
                "ops": worst["ops"], "only_int8_psnr_db": worst["only_int8_psnr_db"],
                "only_int8_nonfinite": nonfinite(worst, "only_int8"),
                "only_int8_verdict": worst["only_int8_verdict"], "keep_float_gain_db": worst["gain_db"]}
    gains = [r for r in section["blocks"] if r["gain_db"] is not None]
    best = max(gains, key=lambda r: r["gain_db"], default=None)
    if best is not None and best["block"] != worst["block"] and best["gain_db"] >= max(
            REPAIR_DB, (worst["gain_db"] or 0.0) + REPAIR_DB):
        measured["best_repair"] = {"block": best["block"], "first_op": best["first_op"], "last_op": best["last_op"],
                                   "ops": best["ops"], "keep_float_psnr_db": best["keep_float_psnr_db"],
                                   "keep_float_verdict": best["keep_float_verdict"], "gain_db": best["gain_db"]}
    return measured
