"""Helpers over an ONNX graph that several steps share: who produces and who reads each tensor, best-effort shape
inference and the shapes it finds, and the LayerNormalization decomposition. (Walking subgraphs is
``plugins/onnx_graph.py``; converting opsets is ``opset_down.convert_opset``.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import ExportFailed

if TYPE_CHECKING:  # onnx is imported where it is used: importing this module costs nothing
    import onnx


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node of ``graph`` that outputs it (not looking into subgraphs)."""
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes of ``graph`` that read it, in graph order (a node reading it twice is listed
    twice)."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            found.setdefault(i, []).append(n)
    return found


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``onnx.shape_inference.infer_shapes(model)``, or ``None`` where inference fails (a node type it has no
    schema for, inconsistent shapes): inference is best effort everywhere it is used, and each caller decides
    what a failure means."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        return None


def shapes_of(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor name -> its dims (``None`` where not a number) for every graph input, value_info and output that
    carries a shape; pass the result of ``infer_shapes`` for the intermediate tensors."""
    found: dict[str, list[int | None]] = {}
    g = model.graph
    for v in (*g.input, *g.value_info, *g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            found[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return found


def decompose_layer_norm(model: onnx.ModelProto) -> int:
    """Replace every ``LayerNormalization`` (opset >= 17) by standard ops, in place; returns how many.

    y = (x - mean) / sqrt(var + eps) * scale + bias over the axes [axis, rank), as the operator is defined
    (https://onnx.ai/onnx/operators/onnx__LayerNormalization.html). Needed below opset 17 and for TensorRT
    8.5, whose ONNX parser has no LayerNormalization (onnx-tensorrt 8.5 docs/operators.md). Written at opset
    18 (ReduceMean takes its axes as an input); the opset conversion that follows handles older forms.
    """
    from onnx import helper, numpy_helper

    inferred = infer_shapes(model)
    ranks = {name: len(dims) for name, dims in shapes_of(inferred).items()} if inferred is not None else {}
    out_nodes = []
    count = 0
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            out_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
        if any(o for o in node.output[1:]):
            raise ExportFailed(f"node {node.name}: LayerNormalization's Mean/InvStdDev outputs are used; "
                               "it cannot be decomposed")
        x = node.input[0]
        if axis >= 0:
            if x not in ranks:
                raise ExportFailed(f"node {node.name}: the rank of its input is unknown; LayerNormalization "
                                   "cannot be decomposed (use a target with opset >= 17)")
            axis -= ranks[x]
        p = f"{node.name or 'layernorm'}_decomposed"
        axes = numpy_helper.from_array(np.arange(axis, 0, dtype=np.int64), f"{p}_axes")
        epsilon = numpy_helper.from_array(np.array(eps, dtype=np.float32), f"{p}_eps")
        model.graph.initializer.extend([axes, epsilon])
        out_nodes += [
            helper.make_node("ReduceMean", [x, axes.name], [f"{p}_mean"], name=f"{p}_mean", keepdims=1),
            helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"], name=f"{p}_sub"),
            helper.make_node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_d2"], name=f"{p}_sq"),
            helper.make_node("ReduceMean", [f"{p}_d2", axes.name], [f"{p}_var"], name=f"{p}_var", keepdims=1),
            helper.make_node("Add", [f"{p}_var", epsilon.name], [f"{p}_vareps"], name=f"{p}_addeps"),
            helper.make_node("Sqrt", [f"{p}_vareps"], [f"{p}_std"], name=f"{p}_sqrt"),
            helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_norm"], name=f"{p}_div"),
        ]
        scaled = f"{p}_scaled" if len(node.input) > 2 and node.input[2] else node.output[0]
        out_nodes.append(helper.make_node("Mul", [f"{p}_norm", node.input[1]], [scaled], name=f"{p}_scale"))
        if scaled != node.output[0]:
            out_nodes.append(helper.make_node("Add", [scaled, node.input[2]], [node.output[0]], name=f"{p}_bias"))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(out_nodes)
    return count
