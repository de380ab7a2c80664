"""What `qbench history` files a run under: the user's model, and where and how it ran (the target).

calibrate, fix and compare measure qbench's prepared copy of the model (``float.prepared.onnx``);
history must still find them by the user's file name. The targets of a compare differ only in
their runner (delegate or provider chain), and history must tell them apart.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import tflite_models as M

from cli import qbench
from models import build_convnet, write_convnet_samples
from qbench.host.store import ResultsStore
from reportdata import make_report

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--profile-runs", "0", "--quiet"]
DATA = ["--data", "eval.npz", "--calibration", "calib.npz"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("history-identity")
    build_convnet(tmp / "convnet.onnx")
    write_convnet_samples(tmp, 5)
    return tmp


def _history(work, *args: str) -> list[dict]:
    proc = qbench("history", "--db", "results.db", "--json", *args, cwd=work)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_calibrate_and_fix_runs_are_found_by_the_users_model_name(work, agent_cache):
    for command, options in (("calibrate", ["--methods", "minmax"]), ("fix", ["--target-psnr", "10"])):
        proc = qbench(command, "convnet.onnx", "--device", "local", *options, *DATA, "--out", command,
                      "--db", "results.db", *FAST, cwd=work, cache=agent_cache)
        assert proc.returncode == 0, proc.stderr
    rows = _history(work, "--model", "convnet.onnx")
    store = ResultsStore(work / "results.db")
    sections = [key for row in rows for key in ("calibration", "fix") if key in store.get(row["id"])]
    assert sorted(sections) == ["calibration", "fix"], rows
    assert {row["model_name"] for row in rows} == {"convnet.onnx"}
    assert _history(work, "--model", "float.prepared.onnx") == []


@pytest.mark.slow
def test_the_targets_of_a_compare_are_told_apart_in_history(tmp_path, agent_cache):
    paths = M.write_models(tmp_path)
    proc = qbench("compare", str(paths["float"]), "--int8", str(paths["int8"]), "--delegate", "xnnpack",
                  "--delegate", "none", "--out", "out", "--db", "results.db", *FAST, cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    rows = _history(tmp_path)
    assert sorted(row["target"] for row in rows) == ["local:none", "local:xnnpack"]
    assert {row["device_name"] for row in rows} == {"local"}
    assert [row["target"] for row in _history(tmp_path, "--device", "local:none")] == ["local:none"]
    table = qbench("history", "--db", "results.db", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "local:none" in table.stdout and "local:xnnpack" in table.stdout


def test_a_database_of_the_schema_before_targets_is_upgraded(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).record(make_report(model_path="/m/net.onnx", device="rpi5"))
    with sqlite3.connect(path) as conn:  # as schema 1 left it: no target column
        conn.executescript("DROP INDEX runs_target; ALTER TABLE runs DROP COLUMN target; PRAGMA user_version = 1;")
    store = ResultsStore(path)
    store.record(make_report(model_path="/m/net.onnx", device="rpi5"))
    assert [row.target for row in store.history()] == ["rpi5", None]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
