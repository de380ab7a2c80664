"""CPU features on the wire (hello_reply.cpu_features) and the int16-saturation warning they drive.

On an x86 CPU with AVX2 and no VNNI, ONNX Runtime's u8s8 kernels saturate with 8-bit weights; the
warning claims it, and ``--reduce-range`` (7-bit weights) is the repair it names. Both claims are
checked on this machine when it is such a CPU; on another CPU, that no warning is given.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from cli import load_report, qbench
from models import build_convnet, write_convnet_samples
from qbench.agent.cpu import int8_features
from qbench.host.report.alerts import VNNI

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--profile-runs", "0", "--histogram-bins", "0"]


def test_features_are_read_for_the_machines_own_architecture(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp sha2\n")
    assert int8_features("x86_64", str(x86)) == ["avx2", "avx512f", "avx512_vnni"]
    assert int8_features("aarch64", str(arm)) == ["asimd", "asimddp"]
    assert int8_features("aarch64", str(x86)) == []  # qemu-user: the x86 host's file says nothing of the board
    assert int8_features("x86_64", str(tmp_path / "missing")) == []


def _flags() -> set[str]:
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _int8_weights(path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return [numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and numpy_helper.to_array(t).size > 1]


def test_the_saturation_warning_and_its_repair_hold_on_this_cpu(tmp_path, agent_cache):
    build_convnet(tmp_path / "convnet.onnx")
    write_convnet_samples(tmp_path, 7)
    common = ["--data", "eval.npz", "--calibration", "calib.npz", *FAST]
    plain = qbench("run", "convnet.onnx", "--out", "plain", *common, cwd=tmp_path, cache=agent_cache)
    reduced = qbench("run", "convnet.onnx", "--reduce-range", "--out", "reduced", *common, cwd=tmp_path,
                     cache=agent_cache)
    assert plain.returncode == 0 and reduced.returncode == 0, plain.stderr + reduced.stderr
    a, b = load_report(tmp_path / "plain"), load_report(tmp_path / "reduced")
    flags = _flags()
    assert a["device"]["cpu_features"] == [f for f in int8_features("x86_64") if f in flags]
    assert all(np.abs(w.astype(int)).max() <= 64 for w in _int8_weights(tmp_path / "reduced" / "model.int8.onnx"))
    assert b["settings"]["reduce_range"] is True and "kernels:" not in reduced.stdout
    saturating = "avx2" in flags and not flags & set(VNNI)
    assert ("kernels:" in plain.stdout) == saturating, plain.stdout
    if saturating:  # the claim: a layer loses dB here with 8-bit weights, and 7-bit ones give it back
        worst = min(a["layers"], key=lambda x: x["psnr_db"] if x["psnr_db"] is not None else 1e9)
        repaired = next(x for x in b["layers"] if x["name"] == worst["name"])
        assert repaired["psnr_db"] > worst["psnr_db"] + 3, (worst["name"], worst["psnr_db"], repaired["psnr_db"])


def test_reduce_range_is_refused_on_tflite(tmp_path):
    import tflite_models as tm

    (tmp_path / "m.tflite").write_bytes(tm.float_convnet())
    proc = qbench("run", "m.tflite", "--reduce-range", "--out", "never", cwd=tmp_path, cache=tmp_path)
    assert proc.returncode == 1 and "--reduce-range does not apply to TFLite models" in proc.stderr
    assert not (tmp_path / "never").exists()
