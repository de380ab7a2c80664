"""Benchmark models built with ``onnx.helper`` (no torch), their int8 versions and input data.

* :func:`detection_model`: a MobileNetV2-style backbone (BatchNorm folded into the conv
  weights, ReLU6 as ``Clip``), a two-pass FPN/PAN neck over P3..P7 (lateral 1x1 convs,
  nearest ``Resize``, ``Add``, depthwise-separable 3x3 output convs) and FCOS-like
  class/box heads per level. About 650 nodes; at 640x640 the float intermediates of
  one sample are several hundred MB.
* :func:`tiny_model`: one conv, for start-up timing.
* :func:`deep_model`: N residual depthwise-separable blocks at a fixed resolution, for the
  depth-scaling curve (float intermediates grow linearly with N).

Weights are random with He scaling so activations stay finite and non-degenerate;
residual branches are damped the way a trained, BN-folded network would be.

:func:`cached_pair` builds, quantizes (QDQ, per-channel int8 weights) and caches a model
pair under ``benchmarks/.cache``. This module imports nothing from ``benchmarks`` so the
tests can load it by path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
REPO = Path(__file__).resolve().parent.parent
#: onnxruntime 1.31 loads IR <= 13; onnx 1.23 would write IR 14 by default.
IR_VERSION = 8
OPSET = 17

# MobileNetV2-style stages: (expansion, out channels, repeats, stride).
_BACKBONE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 6, 2), (6, 64, 8, 2), (6, 96, 8, 1), (6, 160, 8, 2), (6, 320, 2, 1)]
_FPN_CHANNELS = 96
_FPN_PASSES = 4
_HEAD_LAYERS = 5
_NUM_CLASSES = 80
# 32 x 80 x 80 float activations (0.8 MB) make even a 10-block model overflow a 16 MB budget.
DEEP_SIZE = 80


@dataclass
class _Graph:
    """Accumulates nodes and initializers; names are unique and readable."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    counter: int = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str, **attrs) -> str:
        out = self.name(prefix)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
             act: bool = True, gain: float = 1.0) -> str:
        """Conv (BN folded: weight + bias) optionally followed by ReLU6 as ``Clip(0, 6)``."""
        fan_in = cin // groups * k * k
        # He init for a ReLU6 input; linear (projection) convs get `gain` < 1 to damp residuals.
        std = gain * np.sqrt((2.0 if act else 1.0) / fan_in)
        w = (self.rng.standard_normal((cout, cin // groups, k, k)) * std).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        y = self.op("Conv", [x, self.const("w", w), self.const("b", b)], "conv",
                    kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=groups)
        if not act:
            return y
        return self.op("Clip", [y, self._relu6_min, self._relu6_max], "relu6")

    def dw_separable(self, x: str, cin: int, cout: int, stride: int = 1) -> str:
        y = self.conv(x, cin, cin, k=3, stride=stride, groups=cin)
        return self.conv(y, cin, cout)

    def inverted_residual(self, x: str, cin: int, cout: int, expansion: int, stride: int) -> str:
        hidden = cin * expansion
        y = self.conv(x, cin, hidden) if expansion != 1 else x
        y = self.conv(y, hidden, hidden, k=3, stride=stride, groups=hidden)
        y = self.conv(y, hidden, cout, act=False, gain=0.5)
        if stride == 1 and cin == cout:
            y = self.op("Add", [x, y], "res")
        return y

    def upsample2x(self, x: str) -> str:
        if not self._scales2x:  # created on first use: ORT warns about unused initializers
            self._scales2x = self.const("scales2x", np.array([1, 1, 2, 2], np.float32))
        return self.op("Resize", [x, "", self._scales2x], "up", mode="nearest")

    def setup_constants(self) -> None:
        self._relu6_min = self.const("relu6_min", np.array(0.0, np.float32))
        self._relu6_max = self.const("relu6_max", np.array(6.0, np.float32))
        self._scales2x = ""

    def model(self, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="qbench-benchmarks")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def _backbone(g: _Graph, x: str) -> list[tuple[str, int]]:
    """Stem + inverted residual stages; returns (tensor, channels) at strides 8, 16, 32."""
    y, cin = g.conv(x, 3, 32, k=3, stride=2), 32
    by_stride, stride = {}, 2
    for expansion, cout, repeats, first_stride in _BACKBONE:
        for i in range(repeats):
            s = first_stride if i == 0 else 1
            y, cin = g.inverted_residual(y, cin, cout, expansion, s), cout
            stride *= s
        by_stride[stride] = (y, cin)  # the last stage at each stride feeds the neck
    return [by_stride[s] for s in (8, 16, 32)]


def _neck(g: _Graph, c3: tuple, c4: tuple, c5: tuple) -> list[str]:
    """Lateral 1x1 convs to P3..P5, P6/P7 by strided convs, then top-down + bottom-up passes."""
    ch = _FPN_CHANNELS
    levels = [g.conv(t, c, ch, act=False) for t, c in (c3, c4, c5)]
    levels.append(g.conv(c5[0], c5[1], ch, k=3, stride=2))
    levels.append(g.conv(levels[-1], ch, ch, k=3, stride=2))
    for _ in range(_FPN_PASSES):
        for i in range(len(levels) - 2, -1, -1):  # top-down: P6 .. P3
            merged = g.op("Add", [levels[i], g.upsample2x(levels[i + 1])], "td")
            levels[i] = g.dw_separable(merged, ch, ch)
        for i in range(1, len(levels)):  # bottom-up: P4 .. P7
            down = g.conv(levels[i - 1], ch, ch, k=3, stride=2, groups=ch)
            merged = g.op("Add", [levels[i], down], "bu")
            levels[i] = g.dw_separable(merged, ch, ch)
    return levels


def _head(g: _Graph, feature: str, out_channels: int) -> str:
    """A tower of depthwise-separable convs and a prediction conv, flattened to [1, H*W, C]."""
    y = feature
    for _ in range(_HEAD_LAYERS):
        y = g.dw_separable(y, _FPN_CHANNELS, _FPN_CHANNELS)
    y = g.conv(y, _FPN_CHANNELS, out_channels, act=False, gain=0.5)
    y = g.op("Transpose", [y], "nhwc", perm=[0, 2, 3, 1])
    shape = g.const("shape", np.array([1, -1, out_channels], np.int64))
    return g.op("Reshape", [y, shape], "flat")


def detection_model(size: int = 640, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 + FPN/PAN + FCOS-like heads; input ``images`` [1, 3, size, size].

    ``size`` must be a multiple of 128 so that P7 (stride 128) upsamples back exactly.
    Outputs: ``scores`` [1, A, 80] (sigmoid) and ``boxes`` [1, A, 4].
    """
    if size % 128:
        raise ValueError(f"size must be a multiple of 128, got {size}")
    g = _Graph(np.random.default_rng(seed))
    g.setup_constants()
    c3, c4, c5 = _backbone(g, "images")
    levels = _neck(g, c3, c4, c5)
    cls = [_head(g, p, _NUM_CLASSES) for p in levels]
    box = [_head(g, p, 4) for p in levels]
    logits = g.op("Concat", cls, "cls", axis=1)
    g.nodes.append(helper.make_node("Sigmoid", [logits], ["scores"], name="scores_node"))
    g.nodes.append(helper.make_node("Concat", box, ["boxes"], name="boxes_node", axis=1))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, None, _NUM_CLASSES]),
               helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4])]
    return g.model(inputs, outputs, "detection")


def deep_model(blocks: int, size: int = DEEP_SIZE, channels: int = 32, seed: int = 0) -> onnx.ModelProto:
    """Stem + ``blocks`` residual depthwise-separable blocks at ``size`` x ``size``; input ``x``."""
    g = _Graph(np.random.default_rng(seed))
    g.setup_constants()
    y = g.conv("x", 3, channels, k=3)
    for _ in range(blocks):
        z = g.conv(y, channels, channels, k=3, groups=channels)
        z = g.conv(z, channels, channels, act=False, gain=0.5)
        y = g.op("Add", [y, z], "res")
    pooled = g.op("GlobalAveragePool", [y], "pool")
    g.nodes.append(helper.make_node("Flatten", [pooled], ["y"], name="y_node"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels])]
    return g.model(inputs, outputs, f"deep{blocks}")


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """One 3x3 conv + ReLU6 on [1, 3, 32, 32]; input ``x``."""
    g = _Graph(np.random.default_rng(seed))
    g.setup_constants()
    y = g.conv("x", 3, 8, k=3)
    g.nodes.append(helper.make_node("Identity", [y], ["y"], name="y_node"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])]
    return g.model(inputs, outputs, "tiny")


def random_samples(model: onnx.ModelProto, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``count`` input feeds with image-like values in [0, 1)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        feed = {}
        for inp in model.graph.input:
            shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            feed[inp.name] = rng.random(shape, dtype=np.float32)
        samples.append(feed)
    return samples


def save_samples(samples: list[dict[str, np.ndarray]], path: Path) -> Path:
    """Write samples as ``.npz``: one array per input, samples stacked on a new leading axis."""
    names = samples[0].keys()
    np.savez(path, **{n: np.stack([s[n] for s in samples]) for n in names})
    return path


def load_samples(path: Path) -> list[dict[str, np.ndarray]]:
    """Inverse of :func:`save_samples`."""
    with np.load(path) as data:
        arrays = {n: data[n] for n in data.files}
    count = len(next(iter(arrays.values())))
    return [{n: a[i] for n, a in arrays.items()} for i in range(count)]


def quantize(float_path: Path, int8_path: Path, calibration: list[dict[str, np.ndarray]]) -> None:
    """QDQ static quantization: per-channel int8 weights, uint8 activations, MinMax calibration.

    uint8 activations with int8 weights is onnxruntime's recommendation for x86 CPUs;
    ARM boards would use int8 activations, which does not change what is benchmarked.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(float_path), str(int8_path), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _build(kind: str, blocks: int, size: int) -> onnx.ModelProto:
    if kind == "detection":
        return detection_model(size)
    if kind == "deep":
        return deep_model(blocks)
    if kind == "tiny":
        return tiny_model()
    raise ValueError(f"unknown model kind {kind!r}")


@dataclass
class ModelPair:
    """Paths of a cached float/int8 pair and its benchmark input samples."""

    float_path: Path
    int8_path: Path
    data_path: Path
    nodes: int


def cached_pair(kind: str, blocks: int = 0, size: int = 640, samples: int = 2,
                calibration: int = 4, cache_dir: Path = CACHE_DIR) -> ModelPair:
    """Build, quantize and cache a model pair; rebuilds only what is missing.

    Args:
        kind: ``detection``, ``deep`` or ``tiny``.
        blocks: depth of a ``deep`` model.
        size: input resolution of a ``detection`` model.
        samples: number of benchmark samples written to ``data.npz`` (seed 1).
        calibration: number of random calibration samples (seed 2, disjoint from the data).
        cache_dir: root of the cache.
    """
    tag = {"detection": f"detection{size}", "deep": f"deep{blocks}x{DEEP_SIZE}", "tiny": "tiny"}[kind]
    folder = cache_dir / tag
    folder.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = folder / "float.onnx", folder / "int8.onnx"
    data_path = folder / f"data{samples}.npz"
    if not float_path.exists():
        tmp = folder / "float.onnx.tmp"
        onnx.save(_build(kind, blocks, size), tmp)
        tmp.replace(float_path)
    model = onnx.load(float_path, load_external_data=False)
    if not int8_path.exists():
        tmp = folder / "int8.onnx.tmp"
        quantize(float_path, tmp, random_samples(model, calibration, seed=2))
        tmp.replace(int8_path)
    if not data_path.exists():
        save_samples(random_samples(model, samples, seed=1), data_path)
    return ModelPair(float_path, int8_path, data_path, len(model.graph.node))


def published_pair(name: str, samples: int = 2, calibration: int = 8, cache_dir: Path = CACHE_DIR) -> ModelPair:
    """A real published float model (benchmarks/published.py) and its int8 twin, quantized by qbench's own path
    (``host/quantize``: prepare, then calibrate on ``calibration`` real-looking samples); the same pair goes to
    both tools. The data are ``samples`` evaluation samples, disjoint from the calibration images."""
    from qbench.host.quantize.onnx import quantize_onnx
    from qbench.host.quantize.prepare import prepare_float

    from . import published

    m = published.model(name)
    folder = cache_dir / f"published-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    int8_path, data_path = folder / "int8.onnx", folder / f"data{samples}.npz"
    batch = lambda d: {k: v[:, None] for k, v in d.items()}  # (N, *input shape): the batch axis of 1 stays
    if not int8_path.exists():
        prepared = prepare_float(m.path, {m.input_shape.split(":")[0]: _dims(m.input_shape)}, folder)
        tmp = folder / "int8.onnx.tmp"
        quantize_onnx(prepared.path, tmp, batch(published.samples(m, calibration, split="calib")))
        tmp.replace(int8_path)
    if not data_path.exists():
        np.savez(data_path, **batch(published.samples(m, samples, split="eval")))
    nodes = len(onnx.load(m.path, load_external_data=False).graph.node)
    return ModelPair(Path(m.path), int8_path, data_path, nodes)


def pair_in_subprocess(kind: str, **options) -> ModelPair:
    """:func:`cached_pair` (or, kind ``published``, :func:`published_pair` of ``name``), built in a process of its own.

    Linux keeps a process's peak RSS across fork and exec: every tool the benchmarks start from a parent that
    had just quantized the 640x640 detector (about 2 GB) would report that peak as its own.
    """
    args = [sys.executable, "-m", "benchmarks.models", kind,
            *(f"--{key}={value}" for key, value in options.items())]
    made = subprocess.run(args, cwd=str(REPO), capture_output=True, text=True, check=True)
    paths = json.loads(made.stdout.strip().splitlines()[-1])
    return ModelPair(Path(paths["float_path"]), Path(paths["int8_path"]), Path(paths["data_path"]),
                     int(paths["nodes"]))


def _dims(input_shape: str) -> list[int]:
    return [int(d) for d in input_shape.split(":")[1].split(",")]


def _main() -> None:
    parser = argparse.ArgumentParser(description="Build and cache a benchmark float/int8 model pair.")
    parser.add_argument("kind", choices=["detection", "deep", "tiny", "published"])
    parser.add_argument("--name", default="ppocr-v4-det", help="published model (kind published)")
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    pair = (published_pair(args.name, args.samples) if args.kind == "published"
            else cached_pair(args.kind, args.blocks, args.size, args.samples))
    print(json.dumps({k: v if isinstance(v, int) else str(v) for k, v in vars(pair).items()}))


if __name__ == "__main__":
    _main()
