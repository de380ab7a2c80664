"""The Python API, through the top-level `qbench` package only: real local agents, real ONNX Runtime.

Also runs the README's "Python API" examples as written.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import qbench
from models import build_convnet, write_convnet_samples

ROOT = Path(__file__).resolve().parents[1]
#: timing cut short: these tests check what the API returns and writes, not the figures' precision
FAST = dict(runs=3, warmup=1, profile_runs=0, histogram_bins=0, min_seconds=0)
HEAVY = ("onnxruntime", "plotly", "paramiko", "zmq")


@pytest.fixture
def workdir(tmp_path, monkeypatch, agent_cache):
    """A folder with model.onnx (the convnet), eval.npz and calib.npz as the current directory, and
    the temporary folders of this test in ``tmp`` of it (to see what a call leaves there)."""
    build_convnet(tmp_path / "model.onnx")
    write_convnet_samples(tmp_path, seed=0)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("HOME", str(agent_cache))  # the agents share one model cache
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_import_qbench_loads_no_runtime_plotting_ssh_zmq_or_host():
    def loaded(code: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", f"import qbench, sys; {code}; print([m for m in "
                               f"{(*HEAVY, 'qbench.host')!r} if m in sys.modules])"],
                              capture_output=True, text=True, check=True)
        return ast.literal_eval(proc.stdout)

    assert loaded("pass") == []  # an agent process imports qbench before qbench.agent: nothing of the host
    # reading reports and catching errors needs none of them either
    assert loaded("qbench.Report, qbench.Summary, qbench.UserError, qbench.RunFailed") == ["qbench.host"]
    # a function brings what it runs (the agent client), so the checks above can see a heavy import
    assert "zmq" in loaded("qbench.run")
    assert re.fullmatch(r"\d+\.\d+\.\d+", qbench.__version__)


def test_exported_names_are_pinned():
    assert set(qbench.__all__) == {
        "__version__", "run", "compare", "calibrate", "fix", "Report", "Comparison", "Output", "Layer",
        "Latency", "Timing", "Memory", "PeakMemory", "Summary", "UserError", "RunFailed"}
    for name in qbench.__all__:
        assert getattr(qbench, name) is not None
    assert issubclass(qbench.RunFailed, qbench.UserError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        qbench.nope


def test_run_without_out_returns_the_report_and_leaves_no_file(workdir):
    before = sorted(p.name for p in workdir.iterdir())
    report = qbench.run("model.onnx", calibration="calib.npz", data="eval.npz", **FAST)
    assert sorted(p.name for p in workdir.iterdir()) == before and not list((workdir / "tmp").iterdir())
    assert report.status == "ok" and report.path is None and report.run_id is None and report.error is None
    doc = report.to_dict()
    assert doc["schema"] == "qbench.report/1"
    # the typed fields are report.json's
    assert [o.name for o in report.outputs] == [o["name"] for o in doc["outputs"]] == ["probs"]
    assert report.outputs[0].psnr_db == doc["outputs"][0]["psnr_db"] == report.summary.output_psnr_db
    assert [x.name for x in report.layers] == [x["name"] for x in doc["layers"]]
    assert {"relu1", "add", "conv3"} <= {x.name for x in report.layers}
    assert report.summary.worst_layers == tuple(doc["summary"]["worst_layers"])
    assert report.latency.int8.median_ms == doc["latency"]["int8"]["median_ms"] > 0
    assert report.latency.float.runs >= 3 and report.latency.int8.warmup == 1
    assert report.latency.speedup == doc["latency"]["speedup"]
    assert report.memory.int8.peak_mb == doc["memory"]["int8"]["peak_mb"] > 0
    assert {k: doc["settings"]["timing"][k] for k in ("warmup", "runs", "min_seconds")} == {
        "warmup": 1, "runs": 3, "min_seconds": 0}
    assert doc["settings"]["calibration"].endswith("calib.npz")
    assert report.gate_failures == []


def test_run_with_out_and_db_writes_records_and_loads_back(workdir):
    report = qbench.run("model.onnx", calibration="calib.npz", out="run", db="results.db", fail_under_psnr=200,
                        **FAST)
    assert report.path == Path("run/report.json")
    assert {"report.json", "report.html", "layers.csv", "model.int8.onnx"} <= {p.name for p in Path("run").iterdir()}
    assert report.int8_model == (workdir / "run" / "model.int8.onnx").resolve() and report.int8_model.exists()
    assert json.loads(report.path.read_text()) == report.to_dict()
    # gates do not raise: they are read
    assert len(report.gate_failures) == 1 and "output PSNR" in report.gate_failures[0]
    with sqlite3.connect("results.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    assert isinstance(report.run_id, int)
    loaded = qbench.Report.load("run")  # the folder or its report.json
    assert loaded.to_dict() == report.to_dict() and loaded.summary == report.summary
    assert loaded.layers == report.layers and loaded.latency == report.latency and loaded.run_id is None
    assert loaded.gate_failures == report.gate_failures
    saved = loaded.save(workdir / "copy", artifacts=False)
    assert saved == workdir / "copy" / "report.json" and sorted(os.listdir("copy")) == ["report.json"]
    assert qbench.Report.load(saved).to_dict() == report.to_dict()


def test_options_are_checked_before_anything_runs(workdir):
    with pytest.raises(TypeError, match="unknown option.* rnus"):
        qbench.run("model.onnx", rnus=3)
    with pytest.raises(TypeError, match="unknown option.* quiet"):  # a terminal's option, not the API's
        qbench.run("model.onnx", quiet=True)
    with pytest.raises(qbench.UserError, match="runs must be at least 1, not 0"):
        qbench.run("model.onnx", runs=0)
    with pytest.raises(qbench.UserError, match="histogram_bins must be at most 1024"):
        qbench.run("model.onnx", histogram_bins=5000)
    with pytest.raises(qbench.UserError, match="calibration-method must be one of"):
        qbench.run("model.onnx", calibration_method="median")
    with pytest.raises(qbench.UserError, match="unknown device 'pi5'"):
        qbench.run("model.onnx", device="pi5")
    with pytest.raises(qbench.UserError, match="devices.yaml does not exist"):
        qbench.run("model.onnx", devices="devices.yaml")
    with pytest.raises(qbench.UserError, match="--delegate does not apply to ONNX models"):
        qbench.compare("model.onnx", delegates=["xnnpack"])
    with pytest.raises(TypeError, match="calibration_method does not apply"):
        qbench.calibrate("model.onnx", calibration_method="entropy")
    with pytest.raises(qbench.UserError, match="give distinct methods"):
        qbench.calibrate("model.onnx", methods=["minmax", "minmax"])
    with pytest.raises(TypeError, match="calibration_method does not apply"):
        qbench.fix("model.onnx", target_psnr=30, calibration_method="entropy")
    with pytest.raises(qbench.UserError, match="give a target"):
        qbench.fix("model.onnx")
    with pytest.raises(TypeError, match="unknown option"):
        qbench.fix("model.onnx", target_psnr=30, max_steps=3)  # the greedy search's, gone
    with pytest.raises(qbench.UserError, match="no such file"):
        qbench.run("missing.onnx", **FAST)
    assert sorted(p.name for p in workdir.iterdir()) == ["calib.npz", "eval.npz", "model.onnx", "tmp"]


def test_a_failed_stage_raises_run_failed_with_the_partial_report(workdir):
    with pytest.raises(qbench.RunFailed, match="timing float failed: execution provider") as caught:
        qbench.run("model.onnx", providers=["NoSuchExecutionProvider"], calibration="calib.npz", out="failed",
                   **FAST)
    partial = caught.value.result
    assert isinstance(partial, qbench.Report) and partial.status == "failed"
    assert partial.error["stage"] == "timing float" and partial.latency is None and partial.summary is None
    assert "partial report in failed/report.json" in str(caught.value)
    assert qbench.Report.load("failed").status == "failed"


def test_calibrate_keeps_the_best_method(workdir):
    best = qbench.calibrate("model.onnx", calibration="calib.npz", data="eval.npz", methods=["minmax", "percentile"],
                            out="calib", **FAST)
    table = best.section("calibration")
    rows = {row["method"]: row for row in table["methods"]}
    assert set(rows) == {"minmax", "percentile"} and rows[table["winner"]]["winner"]
    assert best.summary.output_psnr_db == max(row["output_psnr_db"] for row in rows.values())
    assert best.int8_model == (workdir / "calib" / "model.int8.onnx").resolve() and best.int8_model.exists()
    assert best.path == Path("calib/report.json") and best.run_id is None


def test_fix_reaches_a_reachable_target_without_files(workdir):
    fixed = qbench.fix("model.onnx", target_psnr=30, calibration="calib.npz", data="eval.npz", **FAST)
    section = fixed.section("fix")
    assert section["met"] and section["target"]["psnr_db"] == 30 and fixed.summary.output_psnr_db >= 30
    assert fixed.path is None and not list((workdir / "tmp").iterdir())


def test_compare_returns_every_targets_report(workdir):
    comparison = qbench.compare("model.onnx", providers=["CPUExecutionProvider"], calibration="calib.npz",
                                out="cmp", **FAST)
    assert list(comparison.reports) == ["local:CPU"] and comparison.reference == "local:CPU"
    report = comparison.reports["local:CPU"]
    assert report.status == "ok" and report.path == Path("cmp/local_CPU/report.json")
    assert comparison.table[0]["target"] == "local:CPU"
    assert comparison.table[0]["output_psnr_db"] == report.summary.output_psnr_db
    assert comparison.path == Path("cmp/compare.json")
    assert qbench.Comparison.load("cmp").to_dict() == comparison.to_dict()


def _readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_has_examples():
    examples = _readme_examples()
    assert len(examples) >= 3 and all("import qbench" in code for code in examples)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_readme_examples())))
def test_readme_example_runs_as_written(workdir, index):
    code = _readme_examples()[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(workdir / "tmp")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "every example prints what it found"
    # (ONNX Runtime keeps a session file of its own, .ses, in TMPDIR)
    assert not list((workdir / "tmp").glob("qbench-*")), "a call without out= leaves no temporary folder"


def test_a_failed_target_raises_run_failed_with_the_others_results(workdir):
    with pytest.raises(qbench.RunFailed, match="1 of 2 targets failed") as caught:
        qbench.compare("model.onnx", providers=["CPUExecutionProvider", "NoSuchExecutionProvider"],
                       calibration="calib.npz", **FAST)
    comparison = caught.value.result
    assert isinstance(comparison, qbench.Comparison) and comparison.path is None
    assert comparison.reports["local:CPU"].status == "ok"
    assert "execution provider" in comparison.errors["local:NoSuch"]
    assert comparison.reports["local:NoSuch"].status == "failed"


def test_run_on_a_tflite_model_with_its_delegate(workdir):
    pytest.importorskip("ai_edge_litert")
    import tflite_models

    Path("net.tflite").write_bytes(tflite_models.float_convnet())
    with pytest.warns(UserWarning, match="calibrating on 16 random samples"):  # the run's warnings are Python's
        report = qbench.run("net.tflite", delegate="xnnpack", **FAST)
    assert report.status == "ok" and report.summary.layers_compared > 0
    assert report.section("device")["delegate"] == "xnnpack" and report.latency.int8.median_ms > 0
    assert "calibrated on random data" in report.notes
