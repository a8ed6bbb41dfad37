"""Walking an ONNX graph and its subgraphs (``If``/``Loop``/``Scan`` bodies): the one walker of the package.

It lives here, the lowest layer that reads ONNX, so that ``plugins/`` and ``export/`` share it without a cycle.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by ``node``'s attributes (``GRAPH`` and ``GRAPHS``), not recursing into them."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, depth first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from graphs(sub)


def nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its nested graphs."""
    for g in graphs(graph):
        yield from g.node
