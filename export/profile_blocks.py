"""Which node of an exported graph belongs to which block instance, for the per-block profile.

From what the export writes: the block instances are the ``blocks`` metadata entry (the rewrite report: module
path and class of each replaced block); a node's module path is the dynamo exporter's
``pkg.torch.onnx.name_scopes`` node metadata (kept through simplification by ``simplify.keep_node_metadata``),
else the TorchScript exporter's node name (``/backbone.9/f/Conv``). Nodes made later without either (fp16 Casts,
onnxruntime's fusions and layout reorders) take the block of the nodes around them. onnxruntime profiles the
graph it optimised, not the one written: its nodes are matched to the written ones by name, by output name, and
by the names its optimisers derive (``fused X``, ``X_nchwc``, ``X/...Fusion/``, ``..._token_N``).

Reads ONNX protos (metadata, node names and scopes); writes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .diagnose import scope_names


def block_instances(model: Any) -> list[tuple[str, str]]:
    """(module path, class) of every block the export replaced, from the ``blocks_export.blocks`` metadata."""
    for p in model.metadata_props:
        if p.key == "blocks_export.blocks":
            try:
                entries = json.loads(p.value)
            except ValueError:
                return []
            return [(str(e["name"]), str(e.get("recognized_as") or e.get("original_class") or ""))
                    for e in entries if isinstance(e, dict) and "name" in e]
    return []


def module_paths(node: Any) -> list[str]:
    """Full module paths a node sits in, outermost first: the dynamo exporter's scope metadata, else the
    TorchScript exporter's node name (``/model.9/model.9.1/cv1/conv/Conv`` -> ``model.9``, ``model.9.1``,
    ``model.9.1.cv1``, ``model.9.1.cv1.conv``)."""
    scopes = scope_names(node)
    if scopes is not None:
        return _absolute([s for s in scopes if s])
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return _absolute([s for s in node.name.split("/")[1:-1] if s])
    return []


def _absolute(scopes: Sequence[str]) -> list[str]:
    """Each scope of a nesting stack as a full path. Both exporters name a module either by its full path or by
    its path inside the module whose forward called it (dynamo: ``['model.4', 'm.0', 'm.0.cv2']``, TorchScript:
    ``/model.9/model.9.1/cv1``): an entry that does not extend the previous one is relative to it."""
    out: list[str] = []
    prev = ""
    for scope in scopes:
        if not out:
            out.append(scope)
        elif scope.startswith(prev + "."):
            out.append(out[-1] + scope[len(prev):])
        else:
            out.append(f"{out[-1]}.{scope}")
        prev = scope
    return out


def _block_of(paths: Sequence[str], blocks: Sequence[str]) -> str | None:
    """The deepest block containing one of ``paths``."""
    best: str | None = None
    for b in blocks:
        if any(p == b or p.startswith(b + ".") for p in paths) and (best is None or len(b) > len(best)):
            best = b
    return best


def node_blocks(model: Any, blocks: Sequence[str] | None = None) -> dict[str, str | None]:
    """Node name -> block instance (``None``: outside every block) for every node of ``model``.

    ``blocks`` defaults to the ``blocks`` metadata; without it, each top-level module is a part. A node with no
    module path of its own takes the block its neighbours agree on (producers of its inputs and consumers of
    its outputs), repeatedly, so chains of inserted nodes (fp16 Casts) are placed too.
    """
    names = [b for b, _ in block_instances(model)] if blocks is None else list(blocks)
    graph = model.graph
    out: dict[str, str | None] = {}
    unplaced = []
    for n in graph.node:
        paths = module_paths(n)
        if not names and paths:
            out[n.name] = paths[0]
        elif paths:
            out[n.name] = _block_of(paths, names)
        else:
            unplaced.append(n)
    _place_by_neighbours(graph.node, out, unplaced)
    return out


def _common_block(blocks: set[str | None]) -> str | None:
    """The one of ``blocks`` that holds all the others (a nested block's parent), else ``None`` (outside)."""
    if None in blocks:
        return None
    names = [b for b in blocks if b is not None]
    return next((c for c in names if all(b == c or b.startswith(c + ".") for b in names)), None)


def _place_by_neighbours(nodes: Iterable[Any], out: dict[str, str | None], unplaced: list[Any]) -> None:
    """Give each node of ``unplaced`` the block its placed neighbours share (outside when they disagree)."""
    nodes = list(nodes)
    producer = {o: n.name for n in nodes for o in n.output if o}
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n.name)
    pending = list(unplaced)
    while pending:
        still = []
        for n in pending:
            around = [producer[i] for i in n.input if i in producer] + \
                [c for o in n.output for c in consumers.get(o, [])]
            placed = {out[a] for a in around if a in out}
            if placed:
                out[n.name] = _common_block(placed)
            else:
                still.append(n)
        if len(still) == len(pending):
            for n in still:
                out[n.name] = None
            break
        pending = still


# onnxruntime's optimisers name what they make after what they replace: "fused X", "X_nchwc", "X/QuickGeluFusion/",
# "ReorderOutput_token_12" (core/optimizer/*.cc, core/optimizer/nchwc_transformer.cc).
_ORT_NAME_PARTS = (re.compile(r"^fused "), re.compile(r"_nchwc$"), re.compile(r"/[A-Za-z]*Fusion/?$"),
                   re.compile(r"_token_\d+$"))


def _ort_origin(name: str) -> str:
    prev = None
    while prev != name:
        prev = name
        for pattern in _ORT_NAME_PARTS:
            name = pattern.sub("", name)
    return name


def optimized_node_blocks(written: Any, optimized: Any, blocks: Sequence[str] | None = None) -> dict[str, str | None]:
    """Node name of onnxruntime's optimised graph -> block, through the written graph's nodes (same name, same
    output, or the name an optimiser derived), then through neighbours."""
    by_node = node_blocks(written, blocks)
    by_value = {o: by_node.get(n.name) for n in written.graph.node for o in n.output if o}
    out: dict[str, str | None] = {}
    unplaced = []
    for n in optimized.graph.node:
        origin = _ort_origin(n.name)
        if n.name in by_node:
            out[n.name] = by_node[n.name]
        elif origin in by_node:
            out[n.name] = by_node[origin]
        elif any(o in by_value for o in n.output):
            out[n.name] = next(by_value[o] for o in n.output if o in by_value)
        elif origin in by_value:
            out[n.name] = by_value[origin]
        else:
            unplaced.append(n)
    _place_by_neighbours(optimized.graph.node, out, unplaced)
    return out
