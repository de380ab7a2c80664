"""The user's names for the layers of a prepared float model.

qbench compares the prepared copy of the user's model (``host/quantize/prepare.py``), and preparation
rewrites graphs: ONNX Runtime's pre-processing inlines function ops, so a ``HardSwish`` node ``act``
with output ``hs`` becomes ``HardSigmoid`` -> ``_inlfunc_HardSwish_HS_X`` and ``Mul`` -> ``hs``, and
it fuses BatchNormalization into the Conv before it. A report must name what the user can find in
their own model, so :func:`relabel` maps every compared tensor back:

* a tensor the user's model has keeps its name; when the user's node producing it is another op
  than the one computing it in the prepared graph (the ``Mul`` above, a Conv carrying a fused
  BatchNormalization's output), the layer also gets ``user_node`` and ``user_op_type``;
* a tensor that exists only in the prepared copy, computed by a node that keeps the name and op
  of one of the user's (ONNX Runtime's transpose optimizer renames outputs it moves a Transpose
  across), is named after that node;
* any other tensor of the prepared copy belongs to the first user tensor it flows into: its layer
  is named ``<user node>/<prepared op>`` (``act/HardSigmoid``; the node's first output when the
  node has no name).

Either way ``#2``, ``#3`` is added on a clash, and ``user_node``, ``user_op_type`` and
``prepared_name`` (the tensor's name in the prepared model, which the model files and the capture
use) are set. A tensor that flows into no user tensor keeps its prepared name.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import onnx

from .matching import Matching


@dataclass(frozen=True)
class UserName:
    """What the report calls one tensor of the prepared model.

    Attributes:
        name: the layer's name in the report.
        user_node: the user's node it belongs to (None when it is the user's tensor from the same op).
        user_op_type: that node's op type.
        prepared_name: the tensor's name in the prepared model, when ``name`` is not it.
    """

    name: str
    user_node: str | None = None
    user_op_type: str | None = None
    prepared_name: str | None = None

    def fields(self) -> dict[str, str]:
        """The report fields beside ``name``, only those that are set."""
        return {k: v for k, v in (("user_node", self.user_node), ("user_op_type", self.user_op_type),
                                  ("prepared_name", self.prepared_name)) if v is not None}


def user_names(user: onnx.ModelProto, prepared: onnx.ModelProto) -> dict[str, UserName]:
    """Every prepared tensor whose report name or op differs from the user's model, by prepared name."""
    user_producer = {o: n for n in user.graph.node for o in n.output if o}
    known = set(user_producer) | {i.name for i in user.graph.input} | {t.name for t in user.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in prepared.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    user_nodes = {n.name: n for n in user.graph.node if n.name}
    taken = set(known)  # report names so far: the user's tensors, then the new ones
    names: dict[str, UserName] = {}
    for node in prepared.graph.node:
        for tensor in node.output:
            if not tensor:
                continue
            if tensor in known:
                mine = user_producer.get(tensor)
                if mine is not None and mine.op_type != node.op_type:
                    names[tensor] = UserName(tensor, _label(mine), mine.op_type)
                continue
            same = user_nodes.get(node.name)
            if same is not None and same.op_type == node.op_type:  # the user's node, its output renamed
                name = _unique(node.name, taken)
            else:
                owner = _owner(tensor, consumers, user_producer)
                if owner is None:
                    taken.add(tensor)  # keeps its prepared name
                    continue
                same = user_producer[owner]
                name = _unique(f"{_label(same)}/{node.op_type}", taken)
            taken.add(name)
            names[tensor] = UserName(name, _label(same), same.op_type, tensor)
    return names


def relabel(matching: Matching, user: onnx.ModelProto, prepared: onnx.ModelProto) -> None:
    """Gives the layers, parents and unmatched tensors of ``matching`` the user's names, in place."""
    names = user_names(user, prepared)
    if not names:
        return
    for layer in matching.layers:
        found = names.get(layer.name)
        if found is not None:
            layer.name, layer.user_fields = found.name, found.fields()
        layer.parents = [names[p].name if p in names else p for p in layer.parents]
    for entry in matching.unmatched:
        found = names.get(entry.name)
        if found is not None:
            entry.name, entry.user_fields = found.name, found.fields()


def _owner(tensor: str, consumers: dict[str, list[onnx.NodeProto]], known) -> str | None:
    """The first user tensor that ``tensor`` flows into (breadth first, in node order), or None."""
    seen, queue = {tensor}, deque([tensor])
    while queue:
        for node in consumers.get(queue.popleft(), []):
            for out in node.output:
                if out in known:
                    return out
                if out and out not in seen:
                    seen.add(out)
                    queue.append(out)
    return None


def _label(node: onnx.NodeProto) -> str:
    return node.name or next(o for o in node.output if o)


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}#{k}", k + 1
    return candidate
