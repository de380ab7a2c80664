"""A real external TFLite delegate for the tests, and a model it partitions.

``delegate/relu_delegate.c`` is compiled with the system C compiler into a shared library loaded
through LiteRT's external delegate interface, the way vendor NPU delegates are. It takes every
float32 RELU, so :func:`relu_chain` (two RELUs in a row between fully connected layers) becomes one
partition whose middle tensor ``relu1`` is never written.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb

from tflite_models import Graph

SOURCE = Path(__file__).parent / "delegate" / "relu_delegate.c"
WIDTH = 16
#: tensors of :func:`relu_chain` in execution order; the delegate hides ``relu1``
ACTIVATIONS = ["x", "fc1", "relu1", "relu2", "y"]


def build_delegate(directory: Path) -> Path:
    """Compiles the test delegate into ``directory``; skips the test when there is no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc) to build the test delegate")
    out = Path(directory) / "librelu_delegate.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(SOURCE)], check=True, timeout=60,
                   capture_output=True)
    return out


def relu_chain(seed: int = 0) -> bytes:
    """x (1, 16) -> FC -> fc1 -> RELU -> relu1 -> RELU -> relu2 -> FC -> y, without a signature def."""
    rng = np.random.default_rng(seed)
    g = Graph()
    B = fb.BuiltinOperator
    x = g.tensor("x", (1, WIDTH))
    fc1 = g.tensor("fc1", (1, WIDTH))
    g.op(B.FULLY_CONNECTED, [x, g.const("fc1/weights", rng.normal(scale=0.4, size=(WIDTH, WIDTH)).astype(np.float32)),
                             g.const("fc1/bias", rng.normal(scale=0.1, size=WIDTH).astype(np.float32))],
         [fc1], fb.FullyConnectedOptionsT())
    relu1 = g.tensor("relu1", (1, WIDTH))
    g.op(B.RELU, [fc1], [relu1])
    relu2 = g.tensor("relu2", (1, WIDTH))
    g.op(B.RELU, [relu1], [relu2])
    y = g.tensor("y", (1, 4))
    g.op(B.FULLY_CONNECTED, [relu2, g.const("fc2/weights", rng.normal(scale=0.4, size=(4, WIDTH)).astype(np.float32)),
                             g.const("fc2/bias", rng.normal(scale=0.1, size=4).astype(np.float32))],
         [y], fb.FullyConnectedOptionsT())
    return g.to_bytes([x], [y], signature=None)
