"""`qbench compare --device local --device ov`: the CPU provider against OpenVINO's, both real.

The OpenVINO device is a venv with onnxruntime-openvino (``make .venv-openvino``, which ``make test``
runs; or ``$QBENCH_OPENVINO_ENV``). The cross-target figures are checked against plain ONNX Runtime
sessions: the CPU provider here, the OpenVINO provider in that venv's Python.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from cli import qbench
from models import build_convnet, write_convnet_samples
from qbench.host.emulate_openvino import PROVIDER, STAMP, ensure_openvino
from test_compare import _check_row, _cross, _ort_outputs

ROOT = Path(os.environ.get("QBENCH_OPENVINO_ENV") or Path(__file__).resolve().parents[1] / ".venv-openvino")
ARGS = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--profile-runs", "2", "--quiet"]

_OV_OUTPUTS = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["OpenVINOExecutionProvider", "CPUExecutionProvider"])
x = np.load(sys.argv[2])["x"]
np.save(sys.argv[3], np.stack([session.run(["probs"], {"x": sample})[0] for sample in x]))
"""


@pytest.fixture(scope="module")
def openvino_env():
    if not (ROOT / STAMP).is_file():
        pytest.skip(f"no OpenVINO environment at {ROOT}: make .venv-openvino (or set QBENCH_OPENVINO_ENV)")
    return ensure_openvino(ROOT)


@pytest.fixture(scope="module")
def compared(openvino_env, tmp_path_factory, agent_cache):
    work = tmp_path_factory.mktemp("openvino")
    build_convnet(work / "convnet.onnx")
    write_convnet_samples(work, 5)
    (work / "devices.yaml").write_text(yaml.safe_dump({"devices": {"ov": openvino_env.device_entry()}}))
    out = work / "out"
    proc = qbench("compare", "convnet.onnx", "--device", "local", "--device", "ov", "--data", "eval.npz",
                  "--calibration", "calib.npz", "--out", str(out), "--json", *ARGS, cwd=work, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    return work, json.loads((out / "compare.json").read_text())


@pytest.mark.slow
def test_both_providers_ran_and_the_agent_works_with_the_openvino_builds_runtime(compared, openvino_env):
    _, doc = compared
    local, ov = (t["report"] for t in doc["targets"])
    assert doc["reference"] == "local" and all(t["status"] == "ok" for t in doc["targets"])
    assert ov["device"]["runtime_version"] == openvino_env.versions["onnxruntime"]
    assert tuple(int(p) for p in ov["device"]["runtime_version"].split(".")[:2]) >= (1, 17)
    assert PROVIDER in ov["device"]["providers_used"] and PROVIDER not in local["device"]["providers_used"]
    assert ov["layers"] and ov["summary"]["output_psnr_db"] is not None


@pytest.mark.slow
def test_output_divergence_matches_plain_sessions_of_each_provider(compared, openvino_env, tmp_path):
    work, doc = compared
    for model in ("int8", "float"):
        path = doc["models"][model]["path"]
        saved = tmp_path / f"{model}.npy"
        subprocess.run([str(openvino_env.python), "-c", _OV_OUTPUTS, path, str(work / "eval.npz"), str(saved)],
                       check=True, timeout=120)
        row = _cross(doc, "ov", model)
        threads = doc["targets"][0]["report"]["settings"]["runner"].get("threads") or 0
        _check_row(row, _ort_outputs(path, threads, np.load(work / "eval.npz")["x"]), np.load(saved))


@pytest.mark.slow
def test_table_says_what_openvino_took_and_which_layers_diverge(compared):
    _, doc = compared
    local, ov = doc["table"]
    split = ov["execution"]["int8"]
    assert PROVIDER in split and all(name.startswith("OpenVINO-EP-subgraph") for name in split[PROVIDER]["names"])
    assert sum(entry["share"] for entry in split.values()) == pytest.approx(1.0, abs=1e-3)
    assert "OpenVINO:" in ov["ran"] and local["layers_vs_reference"] == []
    reference = {layer["name"]: layer["psnr_db"] for layer in doc["targets"][0]["report"]["layers"]}
    mine = {layer["name"]: layer["psnr_db"] for layer in doc["targets"][1]["report"]["layers"]}
    for layer in ov["layers_vs_reference"]:
        if layer["delta_db"] is not None:
            assert layer["delta_db"] == pytest.approx(mine[layer["name"]] - reference[layer["name"]], abs=1e-3)
