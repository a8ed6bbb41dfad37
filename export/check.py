"""Static check of an ONNX graph against one target's ONNX support, before anyone copies a file to a Jetson.

``check_model(model, target)`` visits every node (subgraphs and local functions included) and reports what
that runtime's parser would reject: the opset, operator types (tables in ``trt_ops``), the attributes and modes
the parser documents as unsupported, constant-input requirements, custom domains and plugin versions, and data
types. Each issue names the node, its op, why, and the fix. ``bool(report)`` is pass.

The rules are ``check_rules`` (per operator type, domain and plugin) and ``check_qdq`` (quantization), given a
``check_context.CheckContext``; this module walks the graph, checks the opset and the data types, and builds the
report. Reading the file, and refusing one no runtime loads, is ``onnx_file``.

Sources (cited per rule): onnx-tensorrt ``docs/operators.md`` of the 8.5-GA, 8.6-GA and 10.1-GA branches
(``../shared/reference/onnx-tensorrt/``), onnx-tensorrt ``docs/Changelog.md``, TensorRT's Python API docs
(``IGridSampleLayer``), NVIDIA TensorRT release notes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx.defs
from onnx import TensorProto

from blocks_export.plugins.onnx_graph import subgraphs

from .check_context import CheckContext, Issue
from .check_qdq import index_graph
from .check_rules import RULES, STANDARD_DOMAINS, check_ort_node, check_trt_node
from .graph import infer_shapes
from .onnx_file import load_onnx
from .targets import get_target


@dataclass(frozen=True)
class CheckReport:
    """Result of ``check_model``: ``bool(report)`` is pass; warnings never fail a check."""

    target: str
    issues: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    nodes_checked: int = 0

    def __bool__(self) -> bool:
        return not self.issues

    def lines(self) -> list[str]:
        head = (f"PASSED | target {self.target} | {self.nodes_checked} nodes" if self else
                f"FAILED | target {self.target} | {len(self.issues)} issue(s) in {self.nodes_checked} nodes")
        return [head, *(f"FAILED | {i.line()}" for i in self.issues), *(f"WARNING | {w.line()}" for w in self.warnings)]

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "passed": bool(self), "nodes_checked": self.nodes_checked,
                "issues": [i._asdict() for i in self.issues], "warnings": [w._asdict() for w in self.warnings]}


# ---- graph traversal -------------------------------------------------------------------------------------------

def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for n in graph.node:
        for g in subgraphs(n):
            names |= _constants(g)
    return names


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    return infer_shapes(model) or model  # best effort here: ranks and types of intermediate tensors


def _ranks(inferred: onnx.ModelProto) -> dict[str, int]:
    g = inferred.graph
    ranks: dict[str, int] = {}
    for v in (*g.input, *g.value_info, *g.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            ranks[v.name] = len(t.shape.dim)
    for init in g.initializer:
        ranks[init.name] = len(init.dims)
    return ranks


_BAD_TYPES_ALL = {TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.COMPLEX128, TensorProto.UINT16,
                  TensorProto.UINT32, TensorProto.UINT64, TensorProto.INT16}
# The 8.5/8.6 tables list DOUBLE, FLOAT32, FLOAT16, INT8, BOOL (+ limited INT32/INT64, UINT8 IO); BFLOAT16,
# FP8 and INT4 arrive with 9.x/10.0 (operators-10.1-GA.md data types).
_BAD_TYPES_8 = {TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                TensorProto.FLOAT8E5M2FNUZ, TensorProto.INT4, TensorProto.UINT4}


def _check_types(ctx: CheckContext, model: onnx.ModelProto) -> None:
    g = model.graph
    typed = [(v.name, v.type.tensor_type.elem_type) for v in (*g.input, *g.output, *g.value_info)]
    typed += [(t.name, t.data_type) for t in g.initializer]
    bad = _BAD_TYPES_ALL | (_BAD_TYPES_8 if ctx.version < (9, 0) else set())
    reported: set[int] = set()
    for name, dtype in typed:
        type_name = TensorProto.DataType.Name(dtype) if dtype else "UNDEFINED"
        if dtype in bad and dtype not in reported:
            reported.add(dtype)
            ctx.issues.append(Issue(name, "tensor", f"data type {type_name} is not a {ctx.trt} type",
                                    "cast the tensor to float32/float16/int32 in the model"))
        elif dtype == TensorProto.DOUBLE and dtype not in reported:
            reported.add(dtype)
            # "TensorRT will attempt to cast ... DOUBLE down to FLOAT" (operators-8.5-GA.md, 10.1-GA.md)
            ctx.warnings.append(Issue(name, "tensor", "DOUBLE tensors are cast down to float32 by the parser",
                                      "export in float32"))


def _visit(ctx: CheckContext, graph: onnx.GraphProto, functions: dict[tuple[str, str], onnx.FunctionProto],
           check_node: Callable[[CheckContext, onnx.NodeProto], None], seen: set[tuple[str, str]]) -> int:
    count = 0
    for node in graph.node:
        count += 1
        key = (node.domain, node.op_type)
        if key in functions:
            if ctx.target.is_tensorrt and ctx.version < (9, 0):
                # Local functions are parsed from TensorRT 9.0 EA (onnx-tensorrt docs/Changelog.md).
                ctx.fail(node, f"ONNX local function {node.domain}::{node.op_type}: {ctx.trt} cannot import "
                         "local functions", "inline them (onnx.inliner.inline_local_functions) before building")
            elif key not in seen:
                seen.add(key)
                fn_graph = onnx.helper.make_graph(list(functions[key].node), node.op_type, [], [])
                count += _visit(ctx, fn_graph, functions, check_node, seen)
            continue
        check_node(ctx, node)
        for sub in subgraphs(node):
            count += _visit(ctx, sub, functions, check_node, seen)
    return count


def check_model(model: onnx.ModelProto | str | os.PathLike[str], target: str) -> CheckReport:
    """Check every node of ``model`` against ``target``'s ONNX support (see the module docstring)."""
    tgt = get_target(target)
    proto = load_onnx(model)
    opset = next((o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS), 0)
    inferred = _infer(proto)
    ctx = CheckContext(tgt, tgt.table, opset, _constants(proto.graph), _ranks(inferred), model=proto)
    index_graph(ctx, proto.graph)
    if tgt.max_opset and opset > tgt.max_opset:
        ctx.issues.append(Issue("(model)", "opset_import", f"default-domain opset {opset} is newer than "
                                f"{ctx.trt}'s parser supports (up to {tgt.max_opset})",
                                f"export with `target={tgt.name}` (opset {tgt.opset})"))
    elif opset > onnx.defs.onnx_opset_version():
        # onnxruntime refuses an opset newer than it was built with; none is newer than onnx itself knows.
        ctx.issues.append(Issue("(model)", "opset_import", f"default-domain opset {opset} is newer than any "
                                f"ONNX opset onnx {onnx.__version__} knows (up to {onnx.defs.onnx_opset_version()})",
                                f"export with `target={tgt.name}` (opset {tgt.opset})"))
    functions = {(f.domain, f.name): f for f in proto.functions}
    check_node = check_trt_node if tgt.is_tensorrt else check_ort_node
    count = _visit(ctx, proto.graph, functions, check_node, set())
    if tgt.is_tensorrt:
        _check_types(ctx, inferred)
    return CheckReport(tgt.name, ctx.issues, ctx.warnings, count)


__all__ = ["CheckReport", "Issue", "RULES", "check_model"]
