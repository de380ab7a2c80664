"""`qbench history`, `qbench diff` and `qbench view` as a user runs them: real processes, a real database."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from qbench.host.store import ResultsStore
from reportdata import make_report


def qbench(*args: str, env_db=None) -> subprocess.CompletedProcess:
    env = None if env_db is None else {**os.environ, "QBENCH_DB": str(env_db)}
    return subprocess.run([sys.executable, "-c", "from qbench.host.cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def db(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    a = make_report(model_path="/m/net.onnx", device="local")
    b = make_report(model_path="/m/net.onnx", device="rpi5")
    b["latency"]["int8"]["median_ms"] *= 3
    b["layers"][30]["psnr_db"] -= 12.0
    store.record(a)
    store.record(b)
    store.record(make_report(model_path="/m/other.onnx", device="rpi5"))
    return store.path


def test_history_lists_and_filters(db):
    proc = qbench("history", "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    assert [row["id"] for row in json.loads(proc.stdout)] == [3, 2, 1]
    proc = qbench("history", "--model", "net.onnx", "--device", "rpi5", "--json", env_db=db)
    assert [row["id"] for row in json.loads(proc.stdout)] == [2]
    table = qbench("history", "--db", str(db))
    assert table.returncode == 0 and "other.onnx" in table.stdout and "rpi5" in table.stdout


def test_diff_between_stored_runs_and_report_files(db, tmp_path):
    proc = qbench("diff", "1", "2", "--db", str(db), "--json", "--top", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    [moved] = result["layers_moved"]
    assert moved["delta_db"] == pytest.approx(-12.0)
    int8 = next(c for c in result["latency"] if c["name"] == "int8 median_ms")
    assert int8["ratio"] == pytest.approx(3.0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(json.dumps(ResultsStore(db).get(2)))
    text = qbench("diff", "1", str(tmp_path / "run"), "--db", str(db))
    assert text.returncode == 0, text.stderr
    assert "layers whose PSNR moved most" in text.stdout and "device.name" in text.stdout


def test_diff_of_an_unknown_run_is_one_line(db):
    proc = qbench("diff", "1", "99", "--db", str(db))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"qbench: error: no run 99 in {db}"]


def test_view_errors_are_one_line(tmp_path):
    report = make_report(model_path=str(tmp_path / "gone.onnx"))
    (tmp_path / "report.json").write_text(json.dumps(report))
    proc = qbench("view", str(tmp_path))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "is not there any more" in proc.stderr
    (tmp_path / "gone.onnx").write_bytes(b"model")
    proc = qbench("view", str(tmp_path / "report.json"))
    if importlib.util.find_spec("model_explorer") is None:
        assert "pip install 'qbench[explorer]'" in proc.stderr
    elif importlib.util.find_spec("model_explorer_onnx") is None:
        assert "pip install 'qbench[explorer]'" in proc.stderr and "model-explorer-onnx" in proc.stderr
    else:
        pytest.skip("model-explorer and its ONNX extension are installed: view would start a server")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "report.modelexplorer.json").exists()


def test_view_opens_model_explorer_with_the_overlay(tmp_path):
    pytest.importorskip("model_explorer")
    pytest.importorskip("ai_edge_litert")
    import tflite_models

    model = tmp_path / "float.tflite"
    model.write_bytes(tflite_models.float_convnet())
    layers = [{"index": i, "name": name, "op_type": "op", "psnr_db": 40.0 - 5 * i, "exact": False}
              for i, name in enumerate(tflite_models.ACTIVATIONS[1:])]
    report = {"schema": "qbench.report/1", "models": {"float": {"path": str(model), "format": "tflite"}},
              "layers": layers, "outputs": []}
    (tmp_path / "report.json").write_text(json.dumps(report))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from qbench.host.cli.main import main; main()", "view", str(tmp_path),
         "--port", str(port), "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url, deadline = None, time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("http://"):
                url = line.strip()
        assert url, "Model Explorer never printed its address"
        data = json.loads(urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["data"][0])
        overlay = tmp_path / "report.modelexplorer.json"
        assert data["models"] == [{"url": str(model)}] and data["nodeData"] == [str(overlay)]
        assert set(json.loads(overlay.read_text())["results"]) == {layer["name"] for layer in layers}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
