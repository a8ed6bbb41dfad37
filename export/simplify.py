"""Graph simplification with onnxslim (constant folding, dead-node removal, pattern fusion).

onnxslim: https://github.com/inisis/OnnxSlim. A failed simplification is not fatal: the unsimplified graph is
kept and the reason is reported. Metadata is written after this step, so nothing the simplifier drops matters.

Before slimming, value infos with an unknown dim (neither a size nor a symbol) are dropped: the dynamo exporter
leaves such entries on the outputs of in-graph Reshapes (the portable DeformConv's sampling chain), and onnxslim
0.1.98 takes two unknown dims as equal and removes a Reshape [?, ?, ?, ?] -> [?, ?, ?, ?] that is not a no-op
(measured: MatMul dimension mismatch in onnxruntime, or silently wrong output where the sizes happen to fit).
Without the entry onnxslim infers what it can itself, and keeps what it cannot prove.

After slimming, a mean over H or W (or both) of a 4-D tensor whose H and W are static becomes an
``AveragePool`` (``GlobalAveragePool``) with the whole extent as kernel: the same sum over the same elements
(``static_pools``). onnxruntime's CPU provider runs pooling in its blocked NCHWc layout, next to the
convolutions, where a ``ReduceMean`` makes it convert the tensor back first (Coordinate Attention's two means per
block: MobileNetV2-CA at batch 8, measured in benchmarks/run.py). Dynamic H/W keep the ``ReduceMean``, which
needs no size; so do means over more than ``fp16.LARGE_REDUCTION`` elements, which the fp16 pass keeps in fp32.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any


def simplify(model: Any) -> tuple[Any, str]:
    """Return ``(simplified_model, note)``; on any failure ``(model, why it was kept)``.

    The simplified graph must keep the input and output names, or it is rejected.
    """
    try:
        import onnxslim
    except ImportError:
        return model, "onnxslim is not installed: the graph was kept as exported"
    before = len(model.graph.node)
    work = without_unknown_dims(model)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(work)
    except Exception as e:  # any simplifier bug must only cost the simplification
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return model, f"simplification failed ({type(e).__name__}: {first}); kept the unsimplified graph"
    if slim is None:
        return model, "simplification returned nothing; kept the unsimplified graph"
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if ([i.name for i in slim.graph.input], [o.name for o in slim.graph.output]) != names:
        return model, "simplification renamed the graph inputs/outputs; kept the unsimplified graph"
    keep_node_metadata(model, slim)
    pools = static_pools(slim)
    note = f"{before} -> {len(slim.graph.node)} nodes"
    return slim, note + (f", {pools} mean(s) over a static H/W as pooling" if pools else "")


def static_pools(model: Any) -> int:
    """Rewrite, in place, ``ReduceMean`` over axis 2, 3 or (2, 3) with ``keepdims=1`` of a 4-D input with static
    H and W (at most ``fp16.LARGE_REDUCTION`` elements reduced) into ``AveragePool`` / ``GlobalAveragePool``.
    Returns how many nodes were rewritten; a graph whose shapes cannot be inferred is left as it is."""
    from onnx import helper, numpy_helper

    from .fp16 import LARGE_REDUCTION
    from .graph import infer_shapes, shapes_of

    candidates = [n for n in model.graph.node if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")]
    if not candidates:
        return 0
    inferred = infer_shapes(model)
    if inferred is None:  # shapes unknown: nothing is rewritten
        return 0
    dims = shapes_of(inferred)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    count = 0
    for node in candidates:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) > 1 and node.input[1] in consts:
            axes = [int(a) for a in consts[node.input[1]].reshape(-1)]
        else:
            axes = [int(a) for a in attrs.get("axes", [])]
        shape = dims.get(node.input[0])
        if attrs.get("keepdims", 1) != 1 or not shape or len(shape) != 4 or None in shape[2:]:
            continue
        h, w = int(shape[2] or 0), int(shape[3] or 0)
        axes = sorted(a % 4 for a in axes)
        kernel = {(2,): [h, 1], (3,): [1, w], (2, 3): [h, w]}.get(tuple(axes))
        if kernel is None or kernel[0] * kernel[1] > LARGE_REDUCTION or min(kernel) < 1:
            continue
        if axes == [2, 3]:
            new = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        else:
            new = helper.make_node("AveragePool", [node.input[0]], list(node.output), name=node.name,
                                   kernel_shape=kernel)
        new.metadata_props.extend(node.metadata_props)
        freed = list(node.input[1:])
        node.CopyFrom(new)
        count += 1
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        for name in (f for f in freed if f and f not in used):  # the axes constant, if nothing else reads it
            keep = [t for t in model.graph.initializer if t.name != name]
            del model.graph.initializer[:]
            model.graph.initializer.extend(keep)
            producers = [n for n in model.graph.node if n.op_type == "Constant" and name in n.output]
            for p in producers:
                model.graph.node.remove(p)
    return count


def keep_node_metadata(source: Any, target: Any) -> None:
    """Copy node metadata (the exporter's module scopes) from ``source`` onto the nodes of ``target`` that are
    the same node: same name, else the same first output. onnxslim drops ``metadata_props``; without them a
    failure in the written graph could not be placed in a block (``verify.locate_divergence``)."""
    by_name = {n.name: n for n in source.graph.node if n.metadata_props}
    by_output = {n.output[0]: n for n in source.graph.node if n.metadata_props and n.output}
    for node in target.graph.node:
        if node.metadata_props:
            continue
        origin = by_name.get(node.name) or (by_output.get(node.output[0]) if node.output else None)
        if origin is not None and origin.op_type == node.op_type:
            node.metadata_props.extend(origin.metadata_props)


def without_unknown_dims(model: Any) -> Any:
    """A copy of ``model`` without the value infos that carry an unknown dim (see the module docstring)."""
    import onnx

    def unknown(v: Any) -> bool:
        t = v.type.tensor_type
        return t.HasField("shape") and any(not d.dim_param and not d.HasField("dim_value") for d in t.shape.dim)

    if not any(unknown(v) for v in model.graph.value_info):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [v for v in out.graph.value_info if not unknown(v)]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    return out
