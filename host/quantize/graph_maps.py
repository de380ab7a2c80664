"""What qbench's rewrites of a quantized ONNX graph share: its lookup maps, and writing its nodes back."""

from __future__ import annotations

from typing import Any, Iterable


def subgraphs(node: Any) -> list:
    """The graphs a node holds (the branches of an If, the body of a Loop or Scan)."""
    graphs = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            graphs.append(attribute.g)
        graphs.extend(attribute.graphs)
    return graphs


def subgraph_nodes(node: Any) -> list:
    """Every node inside a node's subgraphs, nested ones included."""
    found = []
    for graph in subgraphs(node):
        for inner in graph.node:
            found.append(inner)
            found.extend(subgraph_nodes(inner))
    return found


def reads(node: Any) -> list[str]:
    """The tensors a node reads: its inputs, then the outer tensors its subgraphs read (an If branch reads
    the enclosing graph's tensors by name, not through the If's inputs)."""
    names = list(node.input)
    for graph in subgraphs(node):
        local = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {
            out for inner in graph.node for out in inner.output}
        for inner in graph.node:
            names.extend(name for name in reads(inner) if name not in local)
    return names


def readers_of(graph: Any) -> dict[str, list]:
    """Tensor name -> the nodes that read it (:func:`reads`), in graph order."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in dict.fromkeys(reads(node)):
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
    used = {name for node in graph.node for name in reads(node)}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
