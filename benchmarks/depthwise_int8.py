"""ONNX Runtime's int8 depthwise convolution against float, by channel count, on this CPU.

    .venv/bin/python -m benchmarks.depthwise_int8                     # 5x5 on 6x24, the README's channel counts
    .venv/bin/python -m benchmarks.depthwise_int8 --kernel 3 --height 12 --width 48 --channels 40,48

Each case is one depthwise convolution (with bias and a Relu) on a 1xCxHxW input, float and as
ONNX Runtime's own QDQ model of it (uint8 activations, symmetric per-channel int8 weights, the form
qbench makes), and compares the convolution's kernel time from ONNX Runtime's profile (one thread;
the first five runs dropped): ``QLinearConv`` against the float ``Conv``. ``QLinearConv`` takes the
depthwise kernel with fused requantization (``MlasConvSymDepthwiseKernel*``) only when the channel
count is a multiple of 16 on x86 (``MlasConvSymPackWSize``), the generic ``MlasConvDepthwise`` plus a
separate requantization otherwise. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNS, WARMUP = 200, 5


def _build(path: Path, channels: int, height: int, width: int, kernel: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(channels, 1, kernel, kernel)).astype(np.float32) * 0.2, "W")
    bias = numpy_helper.from_array(rng.normal(size=(channels,)).astype(np.float32) * 0.1, "B")
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], group=channels, pads=[kernel // 2] * 4),
             helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "depthwise", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, channels, height, width])], [helper.make_tensor_value_info(
            "z", TensorProto.FLOAT, None)], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _quantize(float_path: Path, int8_path: Path, shape: tuple[int, ...]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"x": np.random.default_rng(i).normal(size=shape).astype(np.float32)} for i in range(4)])

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(float_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def conv_kernel_us(path: Path, x: np.ndarray) -> float:
    """The convolution's kernel time per run, in µs, from ONNX Runtime's profile (one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(RUNS):
        session.run(None, {"x": x})
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    ends = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
    start = ends[WARMUP - 1]
    total = sum(e["dur"] for e in events if e.get("cat") == "Node" and e["ts"] > start
                and e["name"].endswith("_kernel_time") and e["args"]["op_name"] in ("Conv", "FusedConv", "QLinearConv"))
    return total / (len(ends) - WARMUP)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--height", type=int, default=6)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--channels", default="192,200,208,40,48,88,96")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the quantizer's advice to pre-process, once per case
    print(f"| channels | multiple of 16 | float Conv µs | QLinearConv µs | int8 / float |  ({args.kernel}x{args.kernel} "
          f"on {args.height}x{args.width}, one thread, {os.cpu_count()} CPUs)")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="qbench-dw-") as tmp:
        for channels in (int(c) for c in args.channels.split(",")):
            shape = (1, channels, args.height, args.width)
            float_path, int8_path = Path(tmp) / f"dw{channels}.onnx", Path(tmp) / f"dw{channels}.int8.onnx"
            _build(float_path, channels, args.height, args.width, args.kernel)
            _quantize(float_path, int8_path, shape)
            x = np.random.default_rng(9).normal(size=shape).astype(np.float32)
            # the lower of two sessions each: the machine is shared
            f = min(conv_kernel_us(float_path, x) for _ in range(2))
            q = min(conv_kernel_us(int8_path, x) for _ in range(2))
            print(f"| {channels} | {'yes' if channels % 16 == 0 else 'no'} | {f:.1f} | {q:.1f} | {q / f:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
