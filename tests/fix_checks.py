"""What the `qbench fix` tests check of every step, for either model format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import pytest

from cli import load_report, qbench

#: timing cut short, and the sample files every calibrate/fix test writes in its workdir
FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet"]
DATA = ["--data", "eval.npz", "--calibration", "calib.npz"]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_fix(workdir: Path, model: str, out: Path, *options: str, cache, code: int = 0):
    """``qbench fix MODEL --device local OPTIONS`` on the workdir's samples, exiting with ``code``: the process
    and the report in ``out``."""
    proc = qbench("fix", model, "--device", "local", *options, *DATA, "--out", str(out), *FAST, cwd=workdir,
                  cache=cache)
    assert proc.returncode == code, proc.stderr
    return proc, load_report(out)


def check_stops_at_the_step_budget(workdir: Path, model: str, cache, layer: str | None = None) -> None:
    """An unreachable target with ``--max-steps 1``: exit 3, the baseline and one fallback (moving ``layer``,
    when given), said in the printed summary and the report; the model written is the fallback's."""
    out = workdir / "unreachable"
    proc, report = run_fix(workdir, model, out, "--target-psnr", "200", "--max-steps", "1", "--json", cache=cache,
                           code=3)
    printed = json.loads(proc.stdout)
    section = report["fix"]
    assert not printed["met"] and not section["met"] and "--max-steps 1" in section["stop"]
    assert [s["action"] for s in section["steps"]] == ["baseline", "fallback"]
    assert section["kept_float"] == section["steps"][1]["layers"]
    if layer is not None:
        assert section["kept_float"] == [layer]
    assert sha(out / f"model.int8{Path(model).suffix}") == sha(section["steps"][1]["model"])


def check_steps_are_real(section: dict, psnr: Callable[[Path], float]) -> None:
    """Each step of ``section`` (a report's ``fix``): its own report from an agent run, its output
    PSNR as ``psnr(int8 model)`` recomputes it independently, the float model timed once."""
    first = json.loads((Path(section["steps"][0]["model"]).parent / "report.json").read_text())
    float_median = first["latency"]["float"]["median_ms"]
    for step in section["steps"]:
        model = Path(step["model"])
        assert step["output_psnr_db"] == pytest.approx(psnr(model), abs=1e-3)
        own = json.loads((model.parent / "report.json").read_text())
        assert own["device"]["agent_version"] and own["models"]["int8"]["sha256"] == sha(model)
        assert step["latency_int8_ms"] == own["latency"]["int8"]["median_ms"]
        assert len(own["latency"]["int8"]["samples_ms"]) >= 3
        assert own["latency"]["float"]["median_ms"] == float_median  # timed once, in the baseline


def check_moved_one_layer(section: dict, layer: str, precision: str = "float") -> None:
    """The baseline misses the target; one fallback step, moving ``layer`` to ``precision``, meets it."""
    steps = section["steps"]
    assert steps[0]["action"] == "baseline" and steps[0]["output_psnr_db"] < section["target_psnr_db"]
    assert section["met"] and section["precision"] == precision
    assert section[f"kept_{precision}"] == [layer] and section["kept_float"] + section["kept_int16"] == [layer]
    assert [s["layers"] for s in steps if s["action"] == "fallback"] == [[layer]]
