"""What qbench's rewrites of a quantized ONNX graph share: its lookup maps, and writing its nodes back."""

from __future__ import annotations

from typing import Any, Iterable


def readers_of(graph: Any) -> dict[str, list]:
    """Tensor name -> the nodes that read it, in graph order."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def producers_of(graph: Any) -> dict[str, Any]:
    """Tensor name -> the node that writes it."""
    return {out: node for node in graph.node for out in node.output}


def set_nodes(graph: Any, nodes: Iterable[Any]) -> None:
    """Makes ``nodes`` the graph's nodes and drops the initializers none of them reads any more
    (a rewrite that replaces a node leaves its constants behind)."""
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
