"""`qbench compare` end to end: real CLI, real agents (one per target), real ONNX Runtime and LiteRT.

The cross-target figures are checked against an independent computation: plain ORT sessions or
LiteRT interpreters set up as each target was, and PSNR computed here with numpy.
"""

from __future__ import annotations

import json
import socket
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import tflite_models as M
from ai_edge_litert import interpreter as tfl

from cli import qbench
from models import build_convnet, write_convnet_samples
from qbench.host.store.db import ResultsStore
from test_report_html import render

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--profile-runs", "0", "--quiet"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _devices_yaml(path) -> None:
    path.write_text(f"""devices:
  one:
    transport: local
    threads: 1
  two:
    transport: local
    threads: 2
  down:
    host: 127.0.0.1
    port: {_closed_port()}
    connect_timeout: 3
""")


def _psnr(reference: np.ndarray, other: np.ndarray) -> float:
    reference, other = reference.astype(np.float64), other.astype(np.float64)
    return 10 * np.log10(np.max(np.abs(reference)) ** 2 / np.mean((other - reference) ** 2))


def _check_row(row: dict, reference: np.ndarray, other: np.ndarray) -> None:
    """A cross row against the numpy figures of the same two tensors."""
    if np.array_equal(reference, other):
        assert row["exact"] is True and row["psnr_db"] is None, row
    else:
        assert row["exact"] is False and row["psnr_db"] == pytest.approx(_psnr(reference, other), abs=1e-3), row


def _ort_outputs(path, threads: int, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.stack([session.run(["probs"], {"x": sample})[0] for sample in x])


def _litert_outputs(path, delegate: str, x: np.ndarray) -> np.ndarray:
    """Every sample through a plain LiteRT interpreter with XNNPACK (LiteRT's default) or builtin kernels."""
    kwargs = {"model_path": str(path)}
    if delegate == "none":
        kwargs["experimental_op_resolver_type"] = tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tfl.Interpreter(**kwargs)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    got = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample)
        interpreter.invoke()
        got.append(interpreter.get_tensor(out["index"]).copy())
    return np.stack(got)


def _cross(doc: dict, target: str, model: str) -> dict:
    (row,) = [r for r in doc["cross"] if r["target"] == target and r["model"] == model]
    return row


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    build_convnet(tmp / "convnet.onnx")
    write_convnet_samples(tmp, 11)
    _devices_yaml(tmp / "devices.yaml")
    return tmp


@pytest.fixture(scope="module")
def two_devices(work, agent_cache):
    """The same pair on two local devices with different thread counts, `--json`."""
    out = work / "two"
    proc = qbench("compare", "convnet.onnx", "--devices", "devices.yaml", "--device", "one", "--device", "two",
                  "--data", "eval.npz", "--calibration", "calib.npz", "--out", str(out), "--db", "results.db",
                  "--json", *FAST, cwd=work, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "compare.json").read_text()), proc


@pytest.mark.slow
def test_every_target_measures_the_same_pair(work, two_devices):
    out, doc, proc = two_devices
    assert doc["schema"] == "qbench.compare/1" and doc["reference"] == "one"
    assert [t["label"] for t in doc["targets"]] == ["one", "two"]
    # Quantized once, on the host: one int8 model, and both targets ran exactly its bytes.
    assert (out / "model.int8.onnx").is_file() and not list(out.glob("*/model.int8.onnx"))
    for target, threads in zip(doc["targets"], (1, 2)):
        assert target["status"] == "ok" and target["error"] is None
        report = json.loads((out / target["label"] / "report.json").read_text())
        assert report["status"] == "ok" and report["models"] == doc["models"]
        assert report["settings"]["runner"]["threads"] == threads
        # quantized for both devices' CPUs, asked before quantizing (the same CPU here: one choice for both)
        assert report["settings"]["reduce_range_reason"].startswith("auto: ")
        assert "(one, two)" in report["settings"]["reduce_range_reason"]
        assert (out / target["label"] / "report.html").is_file()
        # Recorded in the results store, as `run` does.
        assert ResultsStore(work / "results.db").get(target["run_id"])["device"]["name"] == target["label"]
    assert doc["models"]["int8"]["path"] == str((out / "model.int8.onnx").resolve())
    # --json prints the table that compare.json holds.
    printed = json.loads(proc.stdout)
    assert printed["table"] == doc["table"] and printed["compare"] == str(out / "compare.json")


@pytest.mark.slow
def test_table_holds_each_targets_figures(two_devices):
    out, doc, _ = two_devices
    for row, target in zip(doc["table"], doc["targets"]):
        report = target["report"]
        assert row["target"] == target["label"] and row["status"] == "ok"
        assert row["latency_ms"] == {k: report["latency"][k]["median_ms"] for k in ("float", "int8")}
        assert row["speedup"] == report["latency"]["speedup"]
        assert row["peak_mb"] == {k: report["memory"][k]["peak_mb"] for k in ("float", "int8")}
        assert row["output_psnr_db"] == report["summary"]["output_psnr_db"] is not None
        assert row["worst_layers"] == report["summary"]["worst_layers"]
        assert row["ran"] == "CPUExecutionProvider" and row["device"]["arch"]
    assert doc["table"][0]["vs_reference"] == "reference"


@pytest.mark.slow
def test_cross_target_psnr_matches_plain_onnxruntime(work, two_devices):
    out, doc, _ = two_devices
    x = np.load(work / "eval.npz")["x"]
    for model in ("int8", "float"):
        path = doc["models"][model]["path"]
        row = _cross(doc, "two", model)
        assert row["output"] == "probs" and row["kind"] == "float"
        _check_row(row, _ort_outputs(path, 1, x), _ort_outputs(path, 2, x))
        summary = doc["table"][1]["vs_reference"][model]
        assert summary["psnr_db"] == row["psnr_db"] and summary["exact"] == row["exact"]


@pytest.mark.slow
@pytest.mark.browser
def test_compare_html_renders_every_chart(two_devices, tmp_path):
    out, doc, _ = two_devices
    seen = render(out / "compare.html", tmp_path)
    assert seen["errors"] == []
    assert seen["divs"] == seen["plotted"] >= 4, seen
    titles = " | ".join(seen["titles"])
    for expected in ("Output PSNR (int8 vs float), per target", "PSNR per layer against depth, per target",
                     "Latency per inference, per target", "Peak memory, per target"):
        assert expected in titles, titles


@pytest.mark.slow
def test_delegates_diverge_as_plain_litert_does(tmp_path, agent_cache):
    paths = M.write_models(tmp_path)
    x = M.calibration_samples(4, seed=5)
    np.savez(tmp_path / "eval.npz", input=x)
    proc = qbench("compare", str(paths["float"]), "--int8", str(paths["int8"]), "--delegate", "xnnpack",
                  "--delegate", "none", "--data", "eval.npz", "--out", "out", "--db", "results.db", *FAST,
                  cwd=tmp_path, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert [t["label"] for t in doc["targets"]] == ["local:xnnpack", "local:none"]
    assert doc["reference"] == "local:xnnpack"
    assert [t["report"]["device"]["delegate"] for t in doc["targets"]] == ["xnnpack", "none"]
    for model in ("float", "int8"):
        path = paths[model]
        _check_row(_cross(doc, "local:none", model), _litert_outputs(path, "xnnpack", x),
                   _litert_outputs(path, "none", x))
    # XNNPACK and the builtin kernels round differently: the float outputs really are compared, not equal.
    assert _cross(doc, "local:none", "float")["psnr_db"] is not None
    assert "local:none" in proc.stdout and "reference" in proc.stdout


@pytest.mark.slow
def test_failed_targets_keep_the_others_results(work, two_devices, agent_cache):
    out, doc, _ = two_devices
    float_path, int8_path = doc["models"]["float"]["path"], doc["models"]["int8"]["path"]
    proc = qbench("compare", float_path, "--int8", int8_path, "--devices", "devices.yaml", "--device", "one",
                  "--device", "down", "--provider", "CPUExecutionProvider", "--provider", "XnnpackExecutionProvider",
                  "--data", "eval.npz", "--out", "partial", "--db", "results.db", *FAST, cwd=work, cache=agent_cache)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qbench: error:")]
    assert len(errors) == 1 and "3 of 4 targets failed" in errors[0] and "Traceback" not in proc.stderr, (proc.stdout[-2000:], proc.stderr)
    partial = json.loads((work / "partial" / "compare.json").read_text())
    status = {row["target"]: (row["status"], row["error"]) for row in partial["table"]}
    assert status["one:CPU"] == ("ok", None)
    assert status["one:Xnnpack"][0] == "failed"
    assert "XnnpackExecutionProvider" in status["one:Xnnpack"][1]
    assert "not available" in status["one:Xnnpack"][1]
    for label in ("down:CPU", "down:Xnnpack"):
        assert status[label][0] == "failed" and status[label][1].startswith("connect failed")
    # The target that ran has its whole report; the reasons are in the table and the page.
    ok = json.loads((work / "partial" / "one_CPU" / "report.json").read_text())
    assert ok["status"] == "ok" and ok["layers"]
    assert partial["reference"] == "one:CPU" and partial["cross"] == []
    html = (work / "partial" / "compare.html").read_text()
    assert "connect failed" in html and "not available" in html
    assert proc.stdout.count("FAILED") == 3 and "connect failed" in proc.stdout


@pytest.mark.slow
def test_a_gate_on_any_target_exits_3(work, two_devices, agent_cache):
    out, doc, _ = two_devices
    proc = qbench("compare", doc["models"]["float"]["path"], "--int8", doc["models"]["int8"]["path"],
                  "--data", "eval.npz", "--out", "gated", "--db", "results.db", "--fail-under-speedup", "1000",
                  "--json", *FAST, cwd=work, cache=agent_cache)
    assert proc.returncode == 3, proc.stderr
    (row,) = json.loads(proc.stdout)["table"]
    assert row["status"] == "ok" and len(row["gates_failed"]) == 1 and "< 1000x" in row["gates_failed"][0]


@pytest.mark.parametrize("args, message", [
    (["--delegate", "xnnpack"], "--delegate does not apply to ONNX models"),
    (["--device", "local", "--device", "local"], "target local is given twice"),
    (["--device", "nowhere"], "unknown device 'nowhere'"),
])
def test_bad_target_lists_are_one_line_errors(work, args, message):
    proc = qbench("compare", "convnet.onnx", "--devices", "devices.yaml", *args, "--out", "never", cwd=work)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (work / "never").exists()
