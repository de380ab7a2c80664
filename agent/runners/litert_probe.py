"""Which LiteRT CompiledModel accelerators work here: found by trying, in a child process.

LiteRT registers its CPU, GPU and NPU accelerators whether or not the hardware and its libraries
are there, and a model compiled for ``GPU | CPU`` or ``NPU | CPU`` silently runs on the CPU when
the GPU or NPU is missing. The only honest test is to compile and run a model for one accelerator
*alone*, which LiteRT refuses unless that accelerator takes every op. The models are one ADD each,
float32 and int8 (NPUs that only run quantized ops take the int8 one); an accelerator that takes
neither is reported absent.

A GPU driver or NPU library can crash the process that loads it, so :func:`available_accelerators`
runs the trial as ``python -m qbench.agent.runners.litert_probe``, which prints each accelerator's
result as soon as it has it: a crash loses the accelerators not yet tried, not the agent's probe.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np

ACCELERATORS = ("cpu", "gpu", "npu")
#: seconds the child may take for every trial: GPU and NPU set-up loads drivers and compiles
PROBE_TIMEOUT_S = 60.0


def _one_add(dtype: type) -> bytes:
    """A model ``y = x + x`` over a (1, 8) tensor of ``dtype`` (int8 with scale 1/64, zero point 0)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    def tensor(name: str) -> fb.TensorT:
        t = fb.TensorT()
        t.name, t.shape, t.buffer = name, [1, 8], 0
        t.type = fb.TensorType.INT8 if dtype is np.int8 else fb.TensorType.FLOAT32
        if dtype is np.int8:
            t.quantization = fb.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [1 / 64], [0]
        return t

    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.ADD
    code.version = 2 if dtype is np.int8 else 1
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.AddOptions, fb.AddOptionsT()
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [tensor("x"), tensor("y")], [0], [1], [op]
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [fb.BufferT()]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _works_alone(accelerator: str, model: bytes, dtype: type) -> str | None:
    """None when ``model`` compiles for ``accelerator`` alone and runs; else LiteRT's reason."""
    from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator

    try:
        compiled = CompiledModel.from_buffer(model, hardware_accel=HardwareAccelerator[accelerator.upper()])
        inputs, outputs = compiled.create_input_buffers(0), compiled.create_output_buffers(0)
        inputs[0].write(np.ones((1, 8), dtype=dtype))
        compiled.run_by_index(0, inputs, outputs)
    except (RuntimeError, ValueError) as exc:
        return last_line(exc)
    return None


def last_line(exc: BaseException) -> str:
    """The last non-empty line of a LiteRT error: its message (the lines above are source locations)."""
    lines = [line.strip(" └") for line in str(exc).splitlines() if line.strip(" └")]
    return lines[-1] if lines else type(exc).__name__


def trial() -> None:
    """Prints ``{"accelerator": name, "error": None or why not}`` per accelerator, one line each as it is
    known, so that a crash in one accelerator's libraries keeps the lines already printed."""
    models = [(_one_add(dtype), dtype) for dtype in (np.float32, np.int8)]
    for accelerator in ACCELERATORS:
        reasons = [_works_alone(accelerator, model, dtype) for model, dtype in models]
        print(json.dumps({"accelerator": accelerator, "error": None if None in reasons else reasons[0]}), flush=True)


_started: list[subprocess.Popen] = []


def start() -> None:
    """Start the trial's child now (when LiteRT is installed), for :func:`available_accelerators` to read.

    The probe starts it before importing the runtimes, so the child's own start-up overlaps them.
    """
    if not _started and importlib.util.find_spec("ai_edge_litert") is not None:
        _started.append(subprocess.Popen([sys.executable, "-m", __name__], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True))


def available_accelerators() -> list[str]:
    """The accelerators that compiled and ran a one-op model on their own, tried in a child process.

    An accelerator whose trial crashed or hung the child is absent.

    Raises:
        ImportError: LiteRT's CompiledModel does not work here (not even on the CPU).
    """
    start()
    proc = _started.pop()
    try:
        stdout, _ = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
    found = {}
    for line in stdout.splitlines():
        try:
            entry = json.loads(line)
            found[entry["accelerator"]] = entry["error"]
        except (ValueError, KeyError, TypeError):
            continue  # LiteRT's own chatter, if any reaches stdout
    if "cpu" not in found or found["cpu"] is not None:
        raise ImportError(f"LiteRT's CompiledModel cannot run a one-op model on the CPU: {found.get('cpu', 'crashed')}")
    return [a for a in ACCELERATORS if a in found and found[a] is None]


if __name__ == "__main__":
    trial()
