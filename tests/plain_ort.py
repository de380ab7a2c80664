"""Plain onnxruntime sessions: the independent computation tests check qbench's figures against."""

from __future__ import annotations

import onnx
import onnxruntime as ort
from onnx import helper


def session(path, extra_outputs=()) -> ort.InferenceSession:
    """A session of the model at ``path`` with ``extra_outputs`` exposed, written with onnx.helper (not qbench)."""
    model = onnx.load(str(path))
    for name in extra_outputs:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def qdq_layer_sqnr(float_path, int8_path, feeds) -> dict[str, float]:
    """SQNR (dB, pooled over ``feeds``) of every float tensor the int8 QDQ model quantizes, by its name: the
    QuantizeLinear output, dequantized with numpy, against the float model's tensor. The int8 model runs with
    ONNX Runtime's optimizations off: the QDQ arithmetic itself, which the deployed integer kernels follow to
    within a rounding step here and there, so a layer that qbench reads from another tensor stands out."""
    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(str(int8_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    float_names = {o for n in onnx.load(str(float_path)).graph.node for o in n.output}
    quantized = {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"
                 and n.input[0] in float_names and n.input[1] in inits and inits[n.input[1]].size == 1}
    names = list(quantized)
    for name in names:
        model.graph.output.append(helper.make_empty_tensor_value_info(quantized[name].output[0]))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    q_sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    f_sess = session(float_path, names)
    err = dict.fromkeys(names, 0.0)
    signal = dict.fromkeys(names, 0.0)
    for feed in feeds:
        q_out = q_sess.run([quantized[n].output[0] for n in names], feed)
        f_out = f_sess.run(names, feed)
        for name, q, f in zip(names, q_out, f_out):
            node = quantized[name]
            real = (q.astype(np.float64) - inits[node.input[2]].astype(np.float64)) * float(inits[node.input[1]])
            err[name] += float(np.sum((f.astype(np.float64) - real) ** 2))
            signal[name] += float(np.sum(f.astype(np.float64) ** 2))
    return {n: 10 * np.log10(signal[n] / err[n]) for n in names if err[n] > 0 and signal[n] > 0}
