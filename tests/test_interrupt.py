"""Ctrl-C during a real `qbench run`: a partial report with what was measured, exit 130, nothing left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cli import QBENCH
from models import build_convnet

#: each stage is made long enough to be caught in it: many calibration samples, long timing, many capture samples
STAGES = {
    "quantize": ["--calibration", "calib.npz"],
    "timing float": ["--min-seconds", "600", "--runs", "100000000"],
    "capture": ["--samples", "6000", "--runs", "1", "--warmup", "0", "--min-seconds", "0", "--profile-runs", "0"],
}


def _ours(home: Path) -> list[int]:
    """Processes started for this test's run: they have its HOME (the agent, its zygotes and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if f"HOME={home}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def _jobs(home: Path) -> list[str]:
    """Kinds of the jobs the agent is running now (its job directories)."""
    kinds = []
    for job in (home / ".qbench" / "cache" / "jobs").glob("*/job.json"):
        try:
            kinds.append(json.loads(job.read_text())["kind"])
        except (OSError, ValueError):
            continue
    return kinds


def _reached(stage: str, home: Path, out: Path) -> bool:
    if stage == "quantize":
        return (out / "float.prepared.onnx").exists()  # prepare is done: quantize runs
    if stage == "timing float":
        return "benchmark" in _jobs(home)
    return "capture" in _jobs(home)


def _wait_for(condition, what: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("group", [False, True], ids=["sigint", "terminal-ctrl-c"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_ctrl_c_in_a_stage_keeps_a_partial_report(tmp_path, stage, group):
    model = build_convnet(tmp_path / "net.onnx")
    if stage == "quantize":
        calibration = np.random.default_rng(0).normal(size=(20000, 1, 3, 16, 16)).astype(np.float32)
        np.savez(tmp_path / "calib.npz", x=calibration)
    out, db = tmp_path / "out", tmp_path / "results.sqlite"
    env = {**os.environ, "HOME": str(tmp_path)}
    # a terminal's Ctrl-C goes to the whole foreground process group: the agent gets SIGINT too
    proc = subprocess.Popen([*QBENCH, "run", str(model), "--out", str(out), "--db", str(db), "--quiet",
                             *STAGES[stage]], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: _reached(stage, tmp_path, out) or proc.poll() is not None, stage)
        assert proc.poll() is None, proc.communicate()
        if stage == "quantize":
            time.sleep(0.3)  # the prepared model is written just before prepare ends (20000 samples take far longer)
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert f"qbench: interrupted during {stage} (partial report in {out / 'report.json'})" in stderr, stderr
    assert "Traceback" not in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["error"]["stage"] == stage
    if stage == "capture":  # both timings were done before it: they are in the report
        assert {"float", "int8"} <= set(report["latency"]) and report["latency"]["int8"]["runs"] >= 1
        assert "layers" not in report or not report["layers"]
    history = subprocess.run([*QBENCH, "history", "--db", str(db), "--json"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert history.returncode == 0, history.stderr
    assert [r["status"] for r in json.loads(history.stdout)] == ["interrupted"]
    _wait_for(lambda: not _ours(tmp_path), "the agent and its workers to exit", 30)
