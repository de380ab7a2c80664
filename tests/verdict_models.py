"""Models that build the patterns scale-free diagnosis and output verdicts must get right (onnx.helper).

* :func:`build_capped_activations`: a wide conv, then Clip (ReLU6), Sigmoid, SiLU and HardSwish,
  each an output: the cap lowers PSNR by 10+ dB while the error does not grow (no drop).
* :func:`build_image_detector`: a 0..255 image input (exact in int8), an outlier-dominated stem (dark
  images with a few bright pixels) with a dead weight channel, and a YOLO-style head whose boxes
  (up to ~300) and scores (0..1) are concatenated into one output under one int8 scale.
* :func:`build_argmax_head`: logits over thousands of classes for 16 time steps, then Softmax: read
  by argmax (top-1) and as a CTC sequence; :func:`blind_int8` is its int8 model with a logits scale
  so coarse that every logit rounds to 0: the int8 model reads no text.
* :func:`build_loop_decoder`: an autoregressive decoder in a Loop whose per-step scores go through a
  Softmax; its symbols repeat (each lasts about 3 steps), so a CTC reading, which collapses repeats,
  would miss an int8 model that changes how many times a symbol repeats (:func:`coarse_int8` of its
  start state at scale 1).
* :func:`build_probability_head`: a voice-activity-like head, Gemm to one logit per frame near 0,
  then Sigmoid; with :func:`coarse_int8` of its logits at scale 0.5 the probabilities stay within 0.07 of
  the float ones (SQNR above 20 dB) while most positive decisions (p > 0.5) are lost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import IR_VERSION, PathLike

CLASSES = 3000
STEPS = 16
BOXES = 4
SIZE = 32  # image side: few bright pixels in many dark ones


def _save(nodes, inits, inputs, outputs, path: PathLike, opset: int = 14) -> Path:
    graph = helper.make_graph(nodes, Path(path).stem, inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def build_capped_activations(path: PathLike, seed: int = 0) -> Path:
    """x [1,4,16,16] -> wide (conv, values to about ±60) -> relu6, sig, silu (wide·sig), hswish: all outputs."""
    rng = np.random.default_rng(seed)
    inits = {"w": _f32(rng.normal(scale=6.0, size=(8, 4, 3, 3))), "b": _f32(np.zeros(8)),
             "lo": _f32(0.0), "hi": _f32(6.0)}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["wide"], name="wide", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["wide", "lo", "hi"], ["relu6"], name="relu6"),
        helper.make_node("Sigmoid", ["wide"], ["sig"], name="sig"),
        helper.make_node("Mul", ["wide", "sig"], ["silu"], name="silu"),
        helper.make_node("HardSwish", ["wide"], ["hswish"], name="hswish"),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 16, 16]) for n in ("relu6", "sig", "silu", "hswish")]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])], outs, path)


def build_image_detector(path: PathLike, seed: int = 0) -> Path:
    """x [1,1,32,32] (0..255) -> stem conv (channel 2 dead) -> relu -> pool -> boxes ‖ scores (sigmoid) -> det [1,6,256]."""
    rng = np.random.default_rng(seed)
    stem = np.abs(rng.normal(scale=0.1, size=(4, 1, 3, 3)))  # positive: the relu keeps every value
    stem[2] *= 1e-9  # a dead channel: training left it at ~0
    inits = {
        "stem_w": _f32(stem), "stem_b": _f32(np.zeros(4)),
        "box_w": _f32(np.abs(rng.normal(scale=4.0, size=(BOXES, 4, 1, 1)))), "box_b": _f32(np.full(BOXES, 5.0)),
        "score_w": _f32(rng.normal(scale=0.05, size=(2, 4, 1, 1))), "score_b": _f32(np.zeros(2)),
        "shape": np.array([1, BOXES + 2, (SIZE // 2) ** 2], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["stem"], ["stem_relu"], name="stem_relu"),
        helper.make_node("MaxPool", ["stem_relu"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pooled", "box_w", "box_b"], ["boxes"], name="boxes"),
        helper.make_node("Conv", ["pooled", "score_w", "score_b"], ["score_logits"], name="score_logits"),
        helper.make_node("Sigmoid", ["score_logits"], ["scores"], name="scores"),
        helper.make_node("Concat", ["boxes", "scores"], ["head"], name="head", axis=1),
        helper.make_node("Reshape", ["head", "shape"], ["det"], name="det"),
    ]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, SIZE, SIZE])],
                 [helper.make_tensor_value_info("det", TensorProto.FLOAT, [1, BOXES + 2, (SIZE // 2) ** 2])], path)


def dark_images(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 1, 1, 32, 32)`` integer images 0..255: dark (0 or 1) with one bright (255) pixel each."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(count, 1, 1, SIZE, SIZE)).astype(np.float32)
    for i in range(count):
        x[i, 0, 0].flat[rng.integers(SIZE * SIZE)] = 255.0
    x[0, 0, 0, 0, 0] = 0.0
    return x


def build_argmax_head(path: PathLike, seed: int = 0) -> Path:
    """x [1,16,32] -> logits (MatMul to 3000 classes) -> probs (Softmax over the classes) [1,16,3000]."""
    rng = np.random.default_rng(seed)
    inits = {"w": _f32(rng.normal(scale=1.0, size=(32, CLASSES)))}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="logits"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="probs", axis=-1)]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEPS, 32])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, STEPS, CLASSES])], path, opset=13)


def text_samples(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 1, 16, 32)`` inputs of :func:`build_argmax_head`."""
    return np.random.default_rng(seed).normal(size=(count, 1, STEPS, 32)).astype(np.float32)


FRAMES = 64
DECODER_STEPS = 24
SYMBOLS = 8


def build_loop_decoder(path: PathLike, seed: int = 0) -> Path:
    """x [1,16] -> start (MatMul, [1,2]) -> Loop of 24 steps (state rotated by 2π/24, scores = state · W over 8
    symbols at angles 2πk/8) -> Reshape [1,24,8] -> probs (Softmax)."""
    rng = np.random.default_rng(seed)
    turn = 2 * np.pi / DECODER_STEPS
    angles = 2 * np.pi * np.arange(SYMBOLS) / SYMBOLS
    body = helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "rotate"], ["state_out"], name="rotate_state"),
         helper.make_node("MatMul", ["state_out", "symbols"], ["scores"], name="score"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")],
        "step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, SYMBOLS])],
        [numpy_helper.from_array(_f32([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]]), "rotate"),
         numpy_helper.from_array(_f32(4.0 * np.stack([np.cos(angles), np.sin(angles)])), "symbols")])
    inits = {"w": _f32(rng.normal(scale=1.0, size=(16, 2))), "steps": np.array(DECODER_STEPS, np.int64),
             "go": np.array(True), "shape": np.array([1, DECODER_STEPS, SYMBOLS], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["start"], name="start"),
             helper.make_node("Loop", ["steps", "go", "start"], ["final", "step_scores"], name="decode", body=body),
             helper.make_node("Reshape", ["step_scores", "shape"], ["scores"], name="sequence"),
             helper.make_node("Softmax", ["scores"], ["probs"], name="probs", axis=-1)]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, DECODER_STEPS, SYMBOLS])], path, opset=13)


def build_probability_head(path: PathLike, seed: int = 0) -> Path:
    """x [1,64,16] -> logits (MatMul to one value per frame, about ±0.3) -> probs (Sigmoid) [1,64,1]."""
    rng = np.random.default_rng(seed)
    inits = {"w": _f32(rng.normal(scale=0.3 / 4, size=(16, 1)))}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="logits"),
             helper.make_node("Sigmoid", ["logits"], ["probs"], name="probs")]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FRAMES, 16])],
                 [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, FRAMES, 1])], path, opset=13)


def frame_samples(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 1, 64, 16)`` inputs of :func:`build_probability_head`."""
    return np.random.default_rng(seed).normal(size=(count, 1, FRAMES, 16)).astype(np.float32)


def blind_int8(float_path: PathLike, path: PathLike) -> Path:
    """The int8 model of :func:`build_argmax_head` whose logits are quantized with scale 1000 (all round to 0)."""
    return coarse_int8(float_path, path, "logits", 1000.0)


def coarse_int8(float_path: PathLike, path: PathLike, tensor: str, scale: float) -> Path:
    """A float model's int8 stand-in: ``tensor`` alone quantized (QuantizeLinear/DequantizeLinear, int8) at ``scale``."""
    model = onnx.load(str(float_path))
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(_f32(scale), f"{tensor}_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), f"{tensor}_zero_point")])
    nodes = list(g.node)
    for node in nodes:
        node.input[:] = [f"{tensor}_dq" if i == tensor else i for i in node.input]
    at = next(k for k, n in enumerate(nodes) if tensor in n.output) + 1
    qdq = [helper.make_node("QuantizeLinear", [tensor, f"{tensor}_scale", f"{tensor}_zero_point"], [f"{tensor}_q"], name="q"),
           helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_scale", f"{tensor}_zero_point"],
                            [f"{tensor}_dq"], name="dq")]
    del g.node[:]
    g.node.extend(nodes[:at] + qdq + nodes[at:])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)
