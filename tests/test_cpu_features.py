"""CPU features on the wire (hello_reply.cpu_features), the weight range they choose and the
int16-saturation warning they drive.

On an x86 CPU with AVX2 and no VNNI, ONNX Runtime's u8s8 kernels saturate with 8-bit weights; the
warning claims it, and 7-bit weights are the repair, which ``--reduce-range`` auto takes by itself
on such a device. The claims are checked on this machine when it is such a CPU; on another CPU, that
auto keeps 8-bit weights and no warning is given. The decision for other CPUs (ARM boards, VNNI x86)
is checked on the hello replies they send.
"""

from __future__ import annotations

import platform

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qbench
from cli import load_report, qbench as qbench_cli
from models import build_convnet, write_convnet_samples
from qbench.agent.cpu import int8_features
from qbench.host.quantize.reduce_range import VNNI, choose, saturates
from qbench.protocols.messages import HelloReply, Limits

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


def _hello(machine: str, features: list[str]) -> HelloReply:
    return HelloReply(protocol_version="2.0", agent_version="", python="3.11", machine=machine, system="Linux",
                      cpu_count=4, total_memory_bytes=2**30, runtimes={}, limits=Limits(2**20, 2**30, 2**20), cpu_features=features)


@pytest.mark.parametrize("machine, features, reduced", [
    ("x86_64", ["avx2"], True),  # this project's AMD EPYC
    ("x86_64", ["avx2", "avx512f", "avx512bw"], True),  # Skylake-X: AVX512BW kernels use VPMADDUBSW too
    ("x86_64", ["avx2", "avx512f", "avx512bw", "avx512_vnni"], False),
    ("x86_64", ["avx2", "avx_vnni"], False),
    ("x86_64", [], False),  # features unknown: no claim
    ("aarch64", ["asimd", "asimddp"], False),  # an ARM board
    ("aarch64", [], False),  # a qemu-emulated arm64 device (tests/test_emulate_arm64.py) reports none
])
def test_auto_takes_7_bit_weights_exactly_on_x86_without_vnni(machine, features, reduced):
    chosen, reason = choose(None, {"board": _hello(machine, features)})
    assert chosen is reduced and reason.startswith("auto: ")
    assert ("without VNNI" in reason) == reduced
    assert choose(True, {"board": _hello(machine, features)}) == (True, "asked for (--reduce-range)")
    assert choose(False, {"board": _hello(machine, features)}) == (False, "asked for (--no-reduce-range)")


def test_auto_keeps_8_bit_weights_when_no_device_answered():
    for hellos in ({}, {"board": None}, {"a": None, "b": None}):
        chosen, reason = choose(None, hellos)
        assert chosen is False and "no device's CPU was known" in reason


def test_one_int8_file_for_several_devices_takes_7_bit_weights_only_if_all_saturate():
    """compare measures one int8 file on every target: 7-bit weights where every device's kernels saturate."""
    old, vnni, arm = _hello("x86_64", ["avx2"]), _hello("x86_64", ["avx2", "avx512_vnni"]), _hello("aarch64", ["asimd"])
    chosen, reason = choose(None, {"epyc": old, "zen2": old, "pi4": None})
    assert chosen is True and "every device (epyc, zen2)" in reason and "pi4 did not answer" in reason
    chosen, reason = choose(None, {"xeon": vnni, "pi4": arm})
    assert chosen is False and "no device's int8 kernels saturate int16 sums (pi4, xeon)" in reason
    chosen, reason = choose(None, {"epyc": old, "pi4": arm})
    assert chosen is False and "x86 without VNNI: epyc; others: pi4" in reason and "lower the figures of epyc" in reason


def _this_cpu_saturates() -> bool:
    return saturates(platform.machine(), int8_features(platform.machine()))


def test_the_saturation_warning_and_its_repair_hold_on_this_cpu(tmp_path, agent_cache):
    build_convnet(tmp_path / "convnet.onnx")
    write_convnet_samples(tmp_path, 7)
    common = ["--data", "eval.npz", "--calibration", "calib.npz", *FAST]
    auto = qbench_cli("run", "convnet.onnx", "--out", "auto", *common, cwd=tmp_path, cache=agent_cache)
    full = qbench_cli("run", "convnet.onnx", "--no-reduce-range", "--out", "full", *common, cwd=tmp_path,
                      cache=agent_cache)
    assert auto.returncode == 0 and full.returncode == 0, auto.stderr + full.stderr
    a, b = load_report(tmp_path / "auto"), load_report(tmp_path / "full")
    flags = _flags()
    assert a["device"]["cpu_features"] == [f for f in int8_features("x86_64") if f in flags]
    saturating = "avx2" in flags and not flags & set(VNNI)
    assert saturating == _this_cpu_saturates()
    # auto: 7-bit weights exactly on such a CPU, said in the report and in one line, and no warning then
    assert a["settings"]["reduce_range"] is saturating, a["settings"]
    assert a["settings"]["reduce_range_reason"].startswith("auto: x86 with" if not saturating else
                                                           "auto: x86 without VNNI")
    said = [line for line in auto.stderr.splitlines() if "reduce range" in line]
    assert len(said) == 1 and ("7-bit" if saturating else "8-bit") in said[0], auto.stderr
    widest = max(np.abs(w.astype(int)).max() for w in _int8_weights(tmp_path / "auto" / "model.int8.onnx"))
    assert bool(widest <= 64) is saturating, widest
    assert "kernels:" not in auto.stdout
    assert b["settings"]["reduce_range"] is False and b["settings"]["reduce_range_reason"] == \
        "asked for (--no-reduce-range)"
    assert ("kernels:" in full.stdout) == saturating, full.stdout
    if saturating:  # the claim: a layer loses dB here with 8-bit weights, and 7-bit ones give it back
        worst = min(b["layers"], key=lambda x: x["psnr_db"] if x["psnr_db"] is not None else 1e9)
        repaired = next(x for x in a["layers"] if x["name"] == worst["name"])
        assert repaired["psnr_db"] > worst["psnr_db"] + 3, (worst["name"], worst["psnr_db"], repaired["psnr_db"])


def test_calibrate_quantizes_every_method_with_the_devices_choice(tmp_path, monkeypatch, agent_cache):
    build_convnet(tmp_path / "convnet.onnx")
    write_convnet_samples(tmp_path, 7)
    monkeypatch.setenv("HOME", str(agent_cache))
    monkeypatch.chdir(tmp_path)
    best = qbench.calibrate("convnet.onnx", calibration="calib.npz", data="eval.npz",
                            methods=["minmax", "percentile"], out="calib", runs=3, warmup=1, min_seconds=0.0,
                            histogram_bins=0)
    saturating = _this_cpu_saturates()
    assert best.to_dict()["settings"]["reduce_range"] is saturating
    for method in ("minmax", "percentile"):
        report = load_report(tmp_path / "calib" / method)
        assert report["settings"]["reduce_range"] is saturating
        assert report["settings"]["reduce_range_reason"].startswith("auto: ")
        widest = max(np.abs(w.astype(int)).max() for w in _int8_weights(tmp_path / "calib" / method /
                                                                         "model.int8.onnx"))
        assert bool(widest <= 64) is saturating, (method, widest)


def test_reduce_range_is_refused_on_tflite(tmp_path):
    import tflite_models as tm

    (tmp_path / "m.tflite").write_bytes(tm.float_convnet())
    proc = qbench_cli("run", "m.tflite", "--reduce-range", "--out", "never", cwd=tmp_path, cache=tmp_path)
    assert proc.returncode == 1 and "--reduce-range does not apply to TFLite models" in proc.stderr
    assert not (tmp_path / "never").exists()
