"""Bad input: one clear line on stderr, a non-zero exit, never a traceback (unless --debug)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cli import qbench
from models import build_convnet, build_two_inputs_int64

FAST = ["--runs", "2", "--warmup", "0", "--min-seconds", "0", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    build_convnet(tmp / "convnet.onnx")
    build_two_inputs_int64(tmp / "other.onnx")
    (tmp / "notes.txt").write_text("hello, not a model")
    (tmp / "truncated.onnx").write_bytes((tmp / "convnet.onnx").read_bytes()[:300])
    np.savez(tmp / "wrongkey.npz", y=np.zeros((2, 1, 3, 16, 16), np.float32))
    np.savez(tmp / "wrongshape.npz", x=np.zeros((2, 1, 3, 8, 8), np.float32))
    (tmp / "bad-devices.yaml").write_text("devices:\n  pi4:\n    host: 10.0.0.1\n    port: notaport\n")
    (tmp / "silent.yaml").write_text(
        "devices:\n  dead:\n    transport: local\n    python: [%s, %s]\n" % (
            sys.executable, str(tmp / "fake_agent.py")))
    (tmp / "fake_agent.py").write_text(
        "import sys, time, zmq\n"
        "s = zmq.Context().socket(zmq.ROUTER); p = s.bind_to_random_port('tcp://127.0.0.1')\n"
        "print('QBENCH_AGENT_READY tcp://127.0.0.1:%d' % p, flush=True)\n"
        "sys.stdin.read()\n")
    return tmp


CASES = {
    "missing file": (["run", "nope.onnx"], "nope.onnx"),
    "not a model": (["run", "notes.txt"], "not an ONNX or TFLite model"),
    "truncated model": (["run", "truncated.onnx"], "truncated.onnx"),
    "wrong input name": (["run", "convnet.onnx", "--input-shape", "y:1,3,16,16"], "no input 'y'"),
    "wrong rank": (["run", "convnet.onnx", "--input-shape", "x:1,3,16"], "x"),
    "npz keys": (["run", "convnet.onnx", "--data", "wrongkey.npz"], "x"),
    "npz shapes": (["run", "convnet.onnx", "--data", "wrongshape.npz"], "shape"),
    "not the same network": (["run", "convnet.onnx", "--int8", "other.onnx"], "not the same network"),
    "unknown device": (["run", "convnet.onnx", "--device", "pi9"], "pi9"),
    "memory budget": (["run", "convnet.onnx", "--memory-budget", "lots"], "--memory-budget"),
    "bad devices.yaml": (["run", "convnet.onnx", "--device", "pi4", "--devices", "bad-devices.yaml"], "port"),
    "agent does not answer": (["run", "convnet.onnx", "--device", "dead", "--devices", "silent.yaml",
                               "--timeout", "2"], "no answer"),
    # calibrate asks the device's CPU (--reduce-range auto) before its first trial quantizes
    "agent does not answer before calibrating": (["calibrate", "convnet.onnx", "--device", "dead", "--devices",
                                                  "silent.yaml", "--timeout", "2", "--methods", "minmax"],
                                                 "could not start the agent"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_non_zero(files, case, agent_cache):
    args, fragment = CASES[case]
    proc = qbench(*args, *FAST, cwd=files, cache=agent_cache, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("qbench: error:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_debug_shows_the_traceback(files):
    proc = qbench("--debug", "run", "nope.onnx", cwd=files)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_failed_stage_keeps_what_was_measured(files, agent_cache):
    proc = qbench("run", "convnet.onnx", "--device", "dead", "--devices", "silent.yaml", "--timeout", "2",
                  "--out", "partial", *FAST, cwd=files, cache=agent_cache)
    assert proc.returncode == 1
    import json

    report = json.loads((files / "partial" / "report.json").read_text())
    assert report["status"] == "failed" and report["error"]["stage"] == "connect"
    assert (files / "partial" / "model.int8.onnx").is_file()  # the quantized model is not lost
