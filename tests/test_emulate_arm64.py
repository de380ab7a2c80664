"""The emulated arm64 board (`qbench emulate arm64`): Debian's aarch64 CPython under qemu-user.

The board is built once and cached ($QBENCH_EMULATE_CACHE, else the user cache dir): the
first run downloads about 60 MB from Debian and PyPI; later runs reuse it. The comparisons run
the same models with the same runtime versions on this x86 machine and on the board, so what
differs is the CPU kernels (and float rounding), which is what the board is for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cli import load_report, qbench
from models import build_convnet, write_convnet_samples
from qbench.host.emulate import CACHE_ENV, QEMU, default_root

pytestmark = [
    pytest.mark.slow,
    pytest.mark.emulation,
    pytest.mark.timeout(900),  # a first run builds the board (downloads) inside the first test's setup
    pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} not found: apt-get install qemu-user-static"),
]

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet"]

# Runs one model on one input with the runtime of whichever Python runs it, on x86 or the board.
_RUN_ONNX = """
import sys, numpy as np, onnxruntime as ort
model, inputs, out = sys.argv[1:4]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
x = np.load(inputs)["x"]
np.savez(out, **dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x}))))
"""

_RUN_TFLITE = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
model, inputs, out = sys.argv[1:4]
it = Interpreter(model_path=model)
it.allocate_tensors()
it.set_tensor(it.get_input_details()[0]["index"], np.load(inputs)["x"])
it.invoke()
np.savez(out, y=it.get_tensor(it.get_output_details()[0]["index"]))
"""


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> dict:
    """``qbench emulate arm64`` through the real CLI into a fresh devices.yaml; the board itself is cached."""
    tmp = tmp_path_factory.mktemp("emulate")
    cache = os.environ.get(CACHE_ENV) or str(default_root().parent)
    proc = qbench("emulate", "arm64", "--name", "pi4-emu", "--devices", str(tmp / "devices.yaml"),
                  cwd=tmp, env={CACHE_ENV: cache}, timeout=900)
    assert proc.returncode == 0, proc.stderr
    devices = tmp / "devices.yaml"
    entry = yaml.safe_load(devices.read_text())["devices"]["pi4-emu"]
    return {"tmp": tmp, "devices": devices, "entry": entry, "python": entry["python"], "stderr": proc.stderr}


def _run_both(board: dict, script: str, model: Path, x: np.ndarray, tmp: Path) -> tuple[dict, dict]:
    """The script's outputs from this machine's Python and from the board's."""
    (tmp / "run.py").write_text(script)
    np.savez(tmp / "in.npz", x=x)
    outs = []
    for label, python in (("x86", sys.executable), ("arm64", board["python"])):
        out = tmp / f"out-{label}-{model.stem}.npz"
        proc = subprocess.run([python, str(tmp / "run.py"), str(model), str(tmp / "in.npz"), str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{label}: {proc.stderr[-2000:]}"
        outs.append(dict(np.load(out)))
    return outs[0], outs[1]


def test_device_entry_marks_emulation(board):
    entry = board["entry"]
    assert entry["transport"] == "local" and entry["emulation"].startswith("qemu-aarch64")
    assert "arm64" in entry["tags"]
    assert Path(entry["python"]).is_file() and os.access(entry["python"], os.X_OK)
    assert "added device 'pi4-emu'" in board["stderr"]


def test_board_python_is_aarch64_and_so_are_its_children(board):
    # The agent starts its workers with sys.executable; they must run emulated too.
    code = ("import json, platform, subprocess, sys, numpy, zmq, onnxruntime, ai_edge_litert.interpreter\n"
            "child = subprocess.run([sys.executable, '-c', 'import platform; print(platform.machine())'],"
            " capture_output=True, text=True).stdout.strip()\n"
            "print(json.dumps({'machine': platform.machine(), 'child': child, 'exe': sys.executable,"
            " 'ort': onnxruntime.__version__, 'providers': onnxruntime.get_available_providers(),"
            " 'zmq': zmq.zmq_version()}))")
    proc = subprocess.run([board["python"], "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["machine"] == info["child"] == "aarch64"
    assert info["exe"] == board["python"]
    assert "CPUExecutionProvider" in info["providers"]


def test_onnxruntime_float_and_int8_on_x86_and_arm64(board, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = build_convnet(tmp_path / "convnet.onnx")
    rng = np.random.default_rng(3)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.samples, None)

    int8 = tmp_path / "convnet.int8.onnx"
    quantize_static(str(model), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    x = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
    f_x86, f_arm = _run_both(board, _RUN_ONNX, model, x, tmp_path)
    q_x86, q_arm = _run_both(board, _RUN_ONNX, int8, x, tmp_path)
    print(f"\nfloat: max |x86 - arm64| = {np.abs(f_x86['probs'] - f_arm['probs']).max():.3g}; "
          f"int8: max |x86 - arm64| = {np.abs(q_x86['probs'] - q_arm['probs']).max():.3g}")
    np.testing.assert_allclose(f_arm["probs"], f_x86["probs"], rtol=1e-4, atol=1e-6)
    # int8 kernels may differ by a rounding step between CPUs, never by more than quantization noise
    assert np.abs(q_arm["probs"] - q_x86["probs"]).max() < 0.02
    assert np.abs(q_arm["probs"] - f_arm["probs"]).max() < 0.05


def test_litert_float_and_int8_on_x86_and_arm64(board, tmp_path):
    import tflite_models as tm

    samples = tm.calibration_samples()
    float_model = tmp_path / "convnet.tflite"
    float_model.write_bytes(tm.float_convnet())
    int8_model = tmp_path / "convnet.int8.tflite"
    int8_model.write_bytes(tm.int8_convnet(tm.activation_ranges(float_model.read_bytes(), samples)))
    f_x86, f_arm = _run_both(board, _RUN_TFLITE, float_model, samples[0], tmp_path)
    q_x86, q_arm = _run_both(board, _RUN_TFLITE, int8_model, samples[0], tmp_path)
    np.testing.assert_allclose(f_arm["y"], f_x86["y"], rtol=1e-4, atol=1e-6)
    assert np.abs(q_arm["y"] - q_x86["y"]).max() <= 2 / 256  # the int8 softmax step is 1/256
    assert np.abs(q_arm["y"] - f_arm["y"]).max() < 0.05


_RUN_ONNX_SAMPLES = """
import sys, numpy as np, onnxruntime as ort
model, inputs, out = sys.argv[1:4]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
samples = np.load(inputs)["x"]
np.savez(out, y=np.concatenate([sess.run(None, {"x": x})[0] for x in samples]))
"""


def _psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """The README's PSNR: peak = max|reference| and MSE pooled over every sample."""
    return float(10 * np.log10(np.abs(reference).max() ** 2 / np.mean((other.astype(np.float64) - reference) ** 2)))


def test_same_int8_model_per_layer_on_x86_and_emulated_arm64(board, agent_cache):
    """`qbench run` on the local x86 agent, then the same float and int8 models on the board.

    Each device's figures are checked against plain ONNX Runtime on that device, not against the
    other device's: int8 kernels really differ. On an x86 CPU with AVX2 and no VNNI, ORT's u8s8
    kernels (VPMADDUBSW) saturate int16 pair sums, and a layer can lose 10 dB there that an ARM
    board, or an x86 CPU with VNNI, does not lose.
    """
    tmp = board["tmp"]
    model = build_convnet(tmp / "convnet.onnx")
    write_convnet_samples(tmp, 7)
    common = ["--devices", str(board["devices"]), "--data", "eval.npz", *FAST]
    x86 = qbench("run", "--device", "local", str(model), "--calibration", "calib.npz", "--out", "x86", *common,
                 cwd=tmp, cache=agent_cache)
    assert x86.returncode == 0, x86.stderr
    int8 = tmp / "x86" / "model.int8.onnx"
    arm = qbench("run", "--device", "pi4-emu", str(model), "--int8", str(int8), "--out", "arm64",
                 *common, cwd=tmp, cache=agent_cache, timeout=600)
    assert arm.returncode == 0, arm.stderr
    rx86, rarm = load_report(tmp / "x86"), load_report(tmp / "arm64")
    assert rarm["device"]["arch"] == "aarch64" and rarm["device"]["emulated"] is True
    assert rx86["device"]["arch"] == "x86_64" and not rx86["device"]["emulated"]
    assert rarm["device"]["runtime_version"] == rx86["device"]["runtime_version"]
    layers_x86 = {layer["name"]: layer for layer in rx86["layers"]}
    layers_arm = {layer["name"]: layer for layer in rarm["layers"]}
    assert layers_arm.keys() == layers_x86.keys() and len(layers_arm) >= 5
    assert layers_arm["x"]["psnr_db"] == layers_x86["x"]["psnr_db"]  # the input: quantized alike everywhere
    (f_x86, f_arm), (q_x86, q_arm) = (_run_both(board, _RUN_ONNX_SAMPLES, path, np.load(tmp / "eval.npz")["x"], tmp)
                                      for path in (model, int8))
    for report, floats, int8s in ((rx86, f_x86, q_x86), (rarm, f_arm, q_arm)):
        measured = next(o for o in report["outputs"] if o["name"] == "probs")["psnr_db"]
        assert measured == pytest.approx(_psnr(floats["y"], int8s["y"]), abs=0.01), report["device"]["arch"]
    rows = [f"{'layer':<10}{'x86 PSNR':>12}{'arm64 PSNR':>12}{'delta dB':>10}"]
    for name, lx in layers_x86.items():
        la = layers_arm[name]
        rows.append(f"{name:<10}{lx['psnr_db']:>12.4f}{la['psnr_db']:>12.4f}{la['psnr_db'] - lx['psnr_db']:>10.4f}")
    print("\nper-layer PSNR (int8 vs float on each device):\n" + "\n".join(rows))
