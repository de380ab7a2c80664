"""Invoke ``qbench run`` as a subprocess and read what it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

QBENCH = str(Path(sys.executable).with_name("qbench"))


def available() -> bool:
    """True once ``qbench run`` exists (the pipeline is being written alongside)."""
    try:
        done = subprocess.run([QBENCH, "run", "--help"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def run_command(float_path: Path, out: Path, int8_path: Path | None = None, data: Path | None = None,
                threads: int | None = None, budget_mb: int | None = None, runs: int | None = None,
                min_seconds: float | None = None, warmup: int | None = None,
                profile_runs: int | None = None, accuracy_only: bool = False,
                histogram_bins: int | None = None, input_shape: str | None = None) -> list[str]:
    """``qbench run --device local ... --json --quiet`` with the given options, recorded in a scratch database."""
    cmd = [QBENCH, "run", "--device", "local", str(float_path), *(["--accuracy-only"] if accuracy_only else [])]
    options = {"--int8": int8_path, "--data": data, "--out": out, "--memory-budget": budget_mb,
               "--runs": runs, "--min-seconds": min_seconds, "--warmup": warmup, "--profile-runs": profile_runs,
               "--threads": threads, "--histogram-bins": histogram_bins, "--input-shape": input_shape, "--db": Path(out).parent / "results.sqlite"}
    for flag, value in options.items():
        if value is not None:
            cmd += [flag, str(value)]
    return [*cmd, "--json", "--quiet"]


def read_report(out: Path, stdout: str = "") -> dict[str, Any]:
    """``OUT/report.json``, else the JSON that ``--json`` printed on stdout."""
    path = out / "report.json"
    if path.exists():
        return json.loads(path.read_text())
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise FileNotFoundError(f"no report.json in {out} and no JSON on stdout")


def dig(report: dict, *keys: str, default: Any = None) -> Any:
    """``report[k1][k2]...`` or ``default`` when any level is missing."""
    node: Any = report
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def timing_seconds(report: dict) -> float:
    """Seconds spent in timed and warm-up runs of both models (first run included)."""
    total_ms = 0.0
    for side in ("float", "int8"):
        lat = dig(report, "latency", side) or {}
        samples = lat.get("samples_ms") or []
        total_ms += lat.get("first_ms", 0.0) + lat.get("warmup", 0) * lat.get("median_ms", 0.0) + sum(samples)
    return total_ms / 1000.0
