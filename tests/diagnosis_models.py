"""Models for the diagnosis tests (weight error, local error, equalization), built with onnx.helper.

* :func:`build_imbalanced_dw`: two depthwise-separable blocks whose depthwise filters differ in
  range by ``spread`` across channels, the following pointwise conv compensating (as after folding a
  batch norm), so every channel matters equally to the output: per-tensor weight quantization
  loses the small channels, and cross-layer equalization gets them back.
* :func:`build_pair`: two convs joined by a chosen activation (or a fork), for equalization's rules.
* :func:`build_outlier_channel`: conv -> relu -> conv -> relu -> conv where one channel of the
  first conv's output is an outlier the calibration data never shows (clipped at that layer only).
* :func:`build_offset_input`: an input that is a small variation on a large offset (as openwakeword's
  log-mel features, 5.6..12.2) into a first conv whose filters sum to zero (it removes the offset): the
  int8 rounding of its weights, times the offset, is large against its output, so that conv's weights
  are where the damage is.
* :func:`build_sigmoid_tail`: a Gemm whose logits lie far below 0 (-14..-8, a wake-word score that does not
  fire) into a Sigmoid: sigmoid(z) ~ e^z turns the logits' absolute error into the output's relative error,
  so SQNR falls by about 18 dB through an op whose own rounding is a small part of that error.
* :func:`build_log_power`: basic-pitch's front end (a filter bank, the power of its outputs, a Log): the
  power's int8 step crushes its many small values, which the Log turns into large errors; SQNR falls
  through the Log, which adds almost no rounding of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import IR_VERSION, PathLike


def _save(nodes, inits, inputs, outputs, path: PathLike) -> Path:
    graph = helper.make_graph(nodes, Path(path).stem, inputs, outputs,
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def build_imbalanced_dw(path: PathLike, channels: int = 16, spread: float = 100.0, seed: int = 0) -> Path:
    """x [1,8,12,12] -> (pw -> relu -> dw -> relu) x2 -> pw -> y [1,8,12,12]; depthwise gains span ``spread``."""
    rng = np.random.default_rng(seed)
    gains = np.geomspace(1.0 / np.sqrt(spread), np.sqrt(spread), channels)
    rng.shuffle(gains)
    nodes, inits, prev, width = [], {}, "x", 8
    for b in range(2):
        inits[f"pw{b}_w"] = rng.normal(scale=1 / np.sqrt(width), size=(channels, width, 1, 1))
        inits[f"pw{b}_b"] = rng.normal(scale=0.1, size=channels)
        if b:  # the previous depthwise gains folded into this pointwise conv's input channels
            inits[f"pw{b}_w"] /= prev_gains[None, :, None, None]
        inits[f"dw{b}_w"] = rng.normal(scale=0.3, size=(channels, 1, 3, 3)) * gains[:, None, None, None]
        inits[f"dw{b}_b"] = rng.normal(scale=0.05, size=channels) * gains
        nodes += [
            helper.make_node("Conv", [prev, f"pw{b}_w", f"pw{b}_b"], [f"pw{b}"], name=f"pw{b}"),
            helper.make_node("Relu", [f"pw{b}"], [f"pw{b}_relu"], name=f"pw{b}_relu"),
            helper.make_node("Conv", [f"pw{b}_relu", f"dw{b}_w", f"dw{b}_b"], [f"dw{b}"], name=f"dw{b}",
                             group=channels, pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"dw{b}"], [f"dw{b}_relu"], name=f"dw{b}_relu"),
        ]
        prev, width, prev_gains = f"dw{b}_relu", channels, gains
        gains = gains[rng.permutation(channels)]
    inits["out_w"] = rng.normal(scale=1 / np.sqrt(channels), size=(8, channels, 1, 1)) / prev_gains[None, :, None, None]
    inits["out_b"] = np.zeros(8)
    nodes.append(helper.make_node("Conv", [prev, "out_w", "out_b"], ["y"], name="out"))
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])], path)


def build_outlier_channel(path: PathLike, outlier: float = 100.0, seed: int = 0) -> Path:
    """x [1,4,8,8] -> c1 -> r1 -> c2 -> r2 -> c3 -> y, where only c1's channel 0 reads input channel 3.

    Calibrate with :func:`outlier_samples` ``(calibration=True)`` (input channel 3 all zero) and
    evaluate with ``calibration=False``: channel 0 of r1 then carries values ``outlier`` times larger
    than anything calibrated, clipped by r1's int8 range (low local PSNR at r1). c2 reads that channel
    with ``4/outlier`` weights into its channel 0 only, and its channel 7 has a bias that makes r2's
    range wide enough for the evaluation values: r2 and y inherit r1's error but add little of their own.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(scale=0.3, size=(8, 4, 3, 3))
    w1[:, 3] = 0.0
    w1[0] = 0.0
    w1[0, 3, 1, 1] = outlier
    w2 = rng.normal(scale=0.2, size=(8, 8, 3, 3))
    w2[:, 0] = 0.0
    w2[0, 0, 1, 1] = 4.0 / outlier
    b2 = np.zeros(8)
    b2[7] = 12.0
    inits = {"w1": w1, "b1": np.full(8, 0.1), "w2": w2, "b2": b2,
             "w3": rng.normal(scale=0.3, size=(4, 8, 1, 1)), "b3": np.zeros(4)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="c3"),
    ]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], path)


def outlier_samples(count: int, calibration: bool, seed: int = 0) -> np.ndarray:
    """Inputs for :func:`build_outlier_channel`, ``(count, 1, 4, 8, 8)``; channel 3 is zero for calibration."""
    x = np.random.default_rng(seed).normal(size=(count, 1, 4, 8, 8)).astype(np.float32)
    if calibration:
        x[:, :, 3] = 0.0
    return x


def build_pair(path: PathLike, activation: str = "Relu", group: int = 1, fork: bool = False, seed: int = 0) -> Path:
    """x [1,4,6,6] -> conv a (8 channels, gains spanning 50x) -> ``activation`` -> conv b (``group``) -> y.

    ``activation``: an op type, ``Clip0`` (Clip with min 0 and no max), ``Relu6`` (Clip 0..6) or
    ``None`` (the convs joined directly). ``fork`` makes the activation also a second output ``z``.
    """
    rng = np.random.default_rng(seed)
    gains = np.geomspace(0.1, 5.0, 8)
    inits = {"wa": rng.normal(size=(8, 4, 3, 3)) * gains[:, None, None, None], "ba": rng.normal(size=8) * gains,
             "wb": rng.normal(size=(6, 8 // group, 3, 3)), "bb": rng.normal(size=6)}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1])]
    joined = "a"
    if activation != "None":
        inputs, op = ["a"], activation
        if activation == "Clip0":
            inits["lo"], op = np.array(0.0), "Clip"
            inputs += ["lo"]
        elif activation == "Relu6":
            inits["lo"], inits["hi"], op = np.array(0.0), np.array(6.0), "Clip"
            inputs += ["lo", "hi"]
        elif activation == "PRelu":
            inits["slope"] = np.full((8, 1, 1), 0.2)
            inputs += ["slope"]
        nodes.append(helper.make_node(op, inputs, ["act"], name="act"))
        joined = "act"
    nodes.append(helper.make_node("Conv", [joined, "wb", "bb"], ["y"], name="b", group=group))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4, 4])]
    if fork:
        nodes.append(helper.make_node("Identity", [joined], ["z"], name="fork"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 6, 6]))
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])], outputs, path)


def build_offset_input(path: PathLike, seed: int = 0) -> Path:
    """x [1,1,24,16] -> conv1 (zero-sum 3x3 filters) -> relu1 -> conv2 -> relu2 -> conv3 -> y [1,4,24,16]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(scale=0.5, size=(8, 1, 3, 3))
    inits = {"w1": w1 - w1.mean(axis=(1, 2, 3), keepdims=True), "b1": rng.normal(scale=0.05, size=8),
             "w2": rng.normal(scale=0.3, size=(8, 8, 3, 3)), "b2": rng.normal(scale=0.05, size=8),
             "w3": rng.normal(scale=0.3, size=(4, 8, 1, 1)), "b3": np.zeros(4)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3")]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 24, 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 24, 16])], path)


def offset_samples(count: int, seed: int = 0) -> np.ndarray:
    """(count, 1, 1, 24, 16): 8 plus rows of slow sines of amplitude 0.3, plus noise of 0.05."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 16)
    rows = np.sin(2 * np.pi * (rng.uniform(1, 4, (count, 1, 1, 24, 1)) * t + rng.uniform(0, 1, (count, 1, 1, 24, 1))))
    return (8 + 0.3 * rows + 0.05 * rng.standard_normal((count, 1, 1, 24, 16))).astype(np.float32)


def build_sigmoid_tail(path: PathLike, seed: int = 0) -> Path:
    """x [1,64] -> fc1 -> relu -> fc2 -> relu -> fc3 (logits about -9 +- 1) -> Sigmoid -> y [1,4]."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(scale=0.25, size=(64, 64)), "b1": np.zeros(64),
             "w2": rng.normal(scale=0.25, size=(64, 64)), "b2": np.zeros(64),
             "w3": rng.normal(scale=0.03, size=(64, 4)), "b3": np.full(4, -9.0)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["logits"], name="fc3"),
             helper.make_node("Sigmoid", ["logits"], ["y"], name="score")]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], path)


def build_log_power(path: PathLike, seed: int = 0) -> Path:
    """audio [1,1,256] -> Conv1d filter bank (8 of 16 taps, stride 4) -> power (Mul) -> + 1e-4 -> Log -> 1x1
    Conv1d (4) -> y [1,4,61]."""
    rng = np.random.default_rng(seed)
    t = np.arange(16)
    bank = np.stack([np.cos(2 * np.pi * f * t / 32) * np.hanning(16) for f in range(1, 9)])[:, None, :]
    inits = {"bank": bank, "bank_b": np.zeros(8), "eps": np.array(1e-4), "mix": rng.normal(0, 0.3, (4, 8, 1)),
             "mix_b": np.zeros(4)}
    nodes = [helper.make_node("Conv", ["audio", "bank", "bank_b"], ["bands"], name="filter_bank", strides=[4]),
             helper.make_node("Mul", ["bands", "bands"], ["power"], name="power"),
             helper.make_node("Add", ["power", "eps"], ["floored"], name="floor"),
             helper.make_node("Log", ["floored"], ["log_power"], name="log"),
             helper.make_node("Conv", ["log_power", "mix", "mix_b"], ["y"], name="mix")]
    return _save(nodes, inits, [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1, 256])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 61])], path)


def tones(count: int, seed: int) -> np.ndarray:
    """``count`` windows of 256 samples, (count, 1, 1, 256): a few decaying tones each, amplitudes over 40 dB."""
    rng = np.random.default_rng(seed)
    t = np.arange(256)
    out = np.zeros((count, 256))
    for row in out:
        for _ in range(3):
            row += 10 ** rng.uniform(-2, 0) * np.sin(2 * np.pi * rng.uniform(0.02, 0.3) * t + rng.uniform(0, 6))
    return out[:, None, None, :].astype(np.float32)


FAINT = [3, 11, 19, 27]


def build_faint_channels(path: PathLike, seed: int = 0) -> Path:
    """x [1,8,12,12] -> conv1 (3x3) -> relu1 -> proj (1x1, 32 channels of weights about 1e-5; 4 of them
    (:data:`FAINT`) about 3e-8 with a bias of 0.5, as PP-OCRv5's detector has) -> y [1,32,12,12].

    ONNX Runtime's quantizer widens a weight channel's scale until its bias fits int32 at
    input scale × weight scale, so the faint channels' weights round to a level or two: a low PSNR
    against their own peak, and nothing lost in the output."""
    rng = np.random.default_rng(seed)
    w2 = rng.normal(scale=1e-5, size=(32, 8, 1, 1))
    w2[FAINT] *= 3e-3
    b2 = rng.normal(scale=1e-4, size=32)
    b2[FAINT] = 0.5
    inits = {"w1": rng.normal(scale=0.3, size=(8, 8, 3, 3)), "b1": rng.normal(scale=0.05, size=8),
             "w2": w2, "b2": b2}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="proj")]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 12, 12])], path)

