"""Every format-specific option is refused on the other format, by every command, in one line,
before anything is made or started (host/formats: each format's ``runner`` and ``check``)."""

from __future__ import annotations

import pytest

import tflite_models as tm
from cli import qbench
from models import build_convnet

COMMANDS = {"run": [], "compare": [], "calibrate": [], "fix": ["--target-psnr", "40"]}
#: (option and value, the commands that have it)
ONNX_ONLY = [(["--provider", "CPUExecutionProvider"], ("run", "compare")), (["--equalize"], tuple(COMMANDS)),
             (["--bias-correction"], tuple(COMMANDS)),
             (["--per-tensor"], tuple(COMMANDS)), (["--activation-type", "uint8"], tuple(COMMANDS)),
             (["--calibration-method", "entropy"], ("run", "compare", "fix"))]
TFLITE_ONLY = [(["--delegate", "xnnpack"], ("run", "compare")), (["--delegate-path", "/lib/none.so"], tuple(COMMANDS)),
               (["--delegate-option", "k=v"], tuple(COMMANDS)), (["--accelerator", "cpu"], tuple(COMMANDS)),
               (["--capture-delegate", "none"], tuple(COMMANDS)),
               (["--calibration-method", "octav"], ("run", "compare", "fix"))]
CASES = ([("tflite", option, command) for option, commands in ONNX_ONLY for command in commands]
         + [("onnx", option, command) for option, commands in TFLITE_ONLY for command in commands])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    build_convnet(folder / "convnet.onnx")
    (folder / "convnet.tflite").write_bytes(tm.float_convnet())
    return folder


@pytest.mark.parametrize("model_format, option, command", CASES,
                         ids=[f"{c}-{f}-{o[0].lstrip('-')}" for f, o, c in CASES])
def test_an_option_of_the_other_format_is_refused(models, tmp_path, model_format, option, command):
    model = models / f"convnet.{model_format}"
    proc = qbench(command, str(model), *COMMANDS[command], *option, "--out", str(tmp_path / "out"),
                  "--db", str(tmp_path / "db.sqlite"), cwd=tmp_path, cache=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("qbench: error:"), proc.stderr
    assert option[0] in lines[0] or option[-1] in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was made
