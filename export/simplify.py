"""Graph simplification with onnxslim (constant folding, dead-node removal, pattern fusion).

onnxslim: https://github.com/inisis/OnnxSlim. A failed simplification is not fatal: the unsimplified graph is
kept and the reason is reported. Metadata is written after this step, so nothing the simplifier drops matters.

Before slimming, value infos with an unknown dim (neither a size nor a symbol) are dropped: the dynamo exporter
leaves such entries on the outputs of in-graph Reshapes (the portable DeformConv's sampling chain), and onnxslim
0.1.98 takes two unknown dims as equal and removes a Reshape [?, ?, ?, ?] -> [?, ?, ?, ?] that is not a no-op
(measured: MatMul dimension mismatch in onnxruntime, or silently wrong output where the sizes happen to fit).
Without the entry onnxslim infers what it can itself, and keeps what it cannot prove.
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
    return slim, f"{before} -> {len(slim.graph.node)} nodes"


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
