"""The quantization of an int8 model's integer outputs, read from the model file on the host.

A TFLite model converted with int8 outputs, or an ONNX graph ending in ``QuantizeLinear``, returns
integer codes; comparing them across targets needs their scale and zero point
(:func:`qbench.host.compare.cross.compare_tensor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from qbench.protocols.messages import QParams

from .tflite_matching import read_graph


def int8_output_qparams(path: Union[str, Path]) -> dict[str, QParams]:
    """Output name -> quantization, for every integer output of the model at ``path`` that has one."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    return _tflite(path) if head[4:8] == b"TFL3" else _onnx(path)


def _tflite(path: Path) -> dict[str, QParams]:
    graph = read_graph(path)
    outputs = (graph.tensors[i] for i in graph.outputs)
    return {t.name: t.qparams for t in outputs if not t.is_float and t.qparams is not None}


def _onnx(path: Path) -> dict[str, QParams]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constants.update((node.output[0], numpy_helper.to_array(node.attribute[0].t)) for node in graph.node
                     if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value")
    producers = {out: node for node in graph.node for out in node.output}
    found = {}
    for output in graph.output:
        node = producers.get(output.name)
        if node is None or node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        scale, zero = constants.get(node.input[1]), constants.get(node.input[2])
        if scale is None or zero is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.size > 1 else None
        found[output.name] = QParams(scale=[float(s) for s in scale.reshape(-1)],
                                     zero_point=[int(z) for z in zero.reshape(-1)], axis=axis,
                                     dtype=np.dtype(zero.dtype).name)
    return found
