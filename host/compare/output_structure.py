"""What the agent measures of each model output's structure (``StructureRequest``), read from the float graph.

Every float output gets per-slice sums (along every axis of 2..64 entries). An output read by
argmax gets class figures too:

- its producer (through shape-only ops: Identity, Reshape, Flatten, Squeeze, Unsqueeze, Cast) is a
  Softmax/LogSoftmax over the last axis, a softmax written out as ``Div(Exp(x), ...)`` (ONNX: how
  jax2tf exports it, magika's), or a Gemm/MatMul/FullyConnected (logits): class axis =
  the last axis (top-1/top-5 agreement), and a CTC reading (blank 0, the PaddleOCR and ddddocr
  convention) along the longest other axis when it has at least 8 entries; when the scores come out of
  a Loop or Scan (ONNX) or a WHILE (TFLite), an autoregressive decoder's (SLANet's table tokens), the
  reading keeps repeats: a repeated symbol there is a symbol (index 0, PaddleOCR's start token and
  the rows a decoder leaves zero after its end, is dropped)
- its producer is an ArgMax (an integer output): the indices themselves are read as CTC sequences
- its producer is a Sigmoid (a probability: a detector's text map, a voice-activity or presence
  flag, a note activation): the decisions value > :data:`DECISION_THRESHOLD` of both models

An output of an If (IF in TFLite) has the structure its branches agree on: the first real op that
makes the output in each branch, followed out to the enclosing graph where a branch passes a value
through (openwakeword's heads return their score, or run a verifier on it when it is high: a Sigmoid
either way).
"""

from __future__ import annotations

import collections
from typing import Sequence

from qbench.protocols.messages import StructureRequest

#: ops that only move or relabel values: the output's structure is its producer's
PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast",
                "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "DEQUANTIZE", "QUANTIZE"}
SCORES = {"Softmax", "LogSoftmax", "SOFTMAX", "LOG_SOFTMAX"}
LOGITS = {"Gemm", "MatMul", "FULLY_CONNECTED", "BATCH_MATMUL"}
INDICES = {"ArgMax", "ARG_MAX"}
DECODERS = {"Loop", "Scan", "WHILE"}
PROBABILITIES = {"Sigmoid", "LOGISTIC"}
BRANCHING = {"If", "IF"}
CTC_BLANK = 0
#: a probability above it is a positive decision: the convention of a sigmoid output without a tuned threshold
DECISION_THRESHOLD = 0.5


def request(producers: Sequence[tuple[str, bool]]) -> StructureRequest:
    """The structure request of an output.

    Args:
        producers: the ops that make the output, nearest first, each ``(op type, whether it works on
            the last axis)``; the second matters for Softmax/LogSoftmax/ArgMax only.
    """
    for k, (op, on_last_axis) in enumerate(producers):
        if op in PASS_THROUGH:
            continue
        if op in INDICES and on_last_axis:
            return StructureRequest(ctc_blank=CTC_BLANK, indices=True)
        if (op in SCORES and on_last_axis) or op in LOGITS:
            scored_by = next((o for o, _ in producers[k + 1:] if o not in PASS_THROUGH), None)
            return StructureRequest(class_axis=-1, ctc_blank=CTC_BLANK, collapse_repeats=scored_by not in DECODERS)
        if op in PROBABILITIES:
            return StructureRequest(threshold=DECISION_THRESHOLD)
        break
    return StructureRequest()


def onnx_producers(graph, name: str) -> list[tuple[str, bool]]:
    """The producer chain of ``name`` in a matching ``_Graph`` (nearest first, up to the first real op, or
    the second when the first is a Softmax: what computes the scores)."""
    return _onnx_chain(graph.producer, graph.types, name)


def _onnx_chain(producer, types, name: str) -> list[tuple[str, bool]]:
    chain = []
    node = producer.get(name)
    while node is not None:
        if node.op_type == "Div" and getattr(producer.get(node.input[0]), "op_type", None) == "Exp":
            chain.append(("Softmax", True))  # exp(x − max) / Σ exp: the class axis is the last, as jax2tf writes it
            break
        if node.op_type in BRANCHING:
            slot = list(node.output).index(name)
            branches = [a.g for a in node.attribute if a.type == a.GRAPH]
            chain.append(_agreed([_onnx_chain(collections.ChainMap({o: n for n in g.node for o in n.output}, producer),
                                              types, g.output[slot].name) for g in branches]))
            break
        chain.append((node.op_type, _onnx_on_last_axis(types, node)))
        if _chain_ends(chain) or not node.input:
            break
        name = node.input[0]
        node = producer.get(name)
    return chain


def _agreed(chains: list[list[tuple[str, bool]]]) -> tuple[str, bool]:
    """What an If's branches make: their first real op when all make the same, else the If itself."""
    reals = {next((step for step in chain if step[0] not in PASS_THROUGH), None) for chain in chains}
    return reals.pop() if len(reals) == 1 and None not in reals else ("If", False)


def _onnx_on_last_axis(types, node) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if node.op_type != "ArgMax" else 0)
    if axis == -1:
        return True
    tensor = node.input[0] if node.input else ""
    dims = types.get(tensor, (0, None))[1]
    return dims is not None and axis == len(dims) - 1


def tflite_producers(graph, tensor: int) -> list[tuple[str, bool]]:
    """The producer chain of tensor index ``tensor`` in a ``TFLiteGraph``, as :func:`onnx_producers` (TFLite's SOFTMAX
    is over the last axis)."""
    chain = []
    k = graph.producer.get(tensor)
    while k is not None:
        op = graph.ops[k]
        if op.type in BRANCHING and op.branches:
            slot = op.outputs.index(tensor)
            chain.append(_agreed([_tflite_branch(graph, op, graph.bodies[b - 1], slot) for b in op.branches]))
            break
        chain.append((op.type, op.type in SCORES))
        if _chain_ends(chain) or not op.inputs:
            break
        tensor = op.inputs[0]
        k = graph.producer.get(tensor)
    return chain


def _tflite_branch(graph, op, body, slot: int) -> list[tuple[str, bool]]:
    """The chain of an IF branch's output ``slot``, continued in ``graph`` where the branch passes its
    j-th input through (the IF's input j + 1: its first is the condition)."""
    tensor, moves = body.outputs[slot], []
    while tensor in body.producer and body.ops[body.producer[tensor]].type in PASS_THROUGH:
        moves.append((body.ops[body.producer[tensor]].type, False))
        tensor = body.ops[body.producer[tensor]].inputs[0]
    if tensor in body.inputs:
        return moves + tflite_producers(graph, op.inputs[body.inputs.index(tensor) + 1])
    return tflite_producers(body, body.outputs[slot])


def _chain_ends(chain: list[tuple[str, bool]]) -> bool:
    """Whether a producer chain reached its last op: a real op, unless it is the only one and a Softmax."""
    real = [op for op, _ in chain if op not in PASS_THROUGH]
    return bool(real) and (len(real) > 1 or real[0] not in SCORES)
