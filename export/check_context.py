"""What a target-check rule is given and what it records: ``CheckContext`` (the target's parser table, the graph's
opset, constants, ranks, initializers, producers and consumers) and ``Issue`` (one thing the target cannot run).

The small readers every rule shares (a node's attribute, its n-th input, "this input must be a constant") live
here too; the rules themselves are ``check_rules`` and ``check_qdq``, the walk over the graph ``check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import onnx

from .targets import Target
from .trt_ops import ParserTable, TrtVersion


class Issue(NamedTuple):
    """One thing the target cannot run: where (node name), what (op type), why, and what to do."""

    node_name: str
    op_type: str
    why: str
    fix: str

    def line(self) -> str:
        return f"{self.node_name} | {self.op_type} | {self.why} | fix: {self.fix}"


@dataclass
class CheckContext:
    target: Target
    parser: ParserTable | None  # the target's TensorRT parser table (None: onnxruntime)
    opset: int
    constants: set[str]  # initializers and Constant outputs: what the parser sees as weights
    ranks: dict[str, int]
    issues: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)  # weights, for Q/DQ rules
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    model: onnx.ModelProto | None = None  # for the element types of plugin inputs, inferred when first needed
    _types: dict[str, int] | None = None

    @property
    def version(self) -> TrtVersion:
        """The release line of the target's parser (``TrtVersion(0, 0)`` for onnxruntime)."""
        return self.parser.version if self.parser is not None else TrtVersion(0, 0)

    def types(self) -> dict[str, int]:
        """Element type of every tensor the graph types (type inference over the graph, once)."""
        if self._types is None:
            from .fp16 import elem_types

            self._types = elem_types(self.model) if self.model is not None else {}
        return self._types

    def fail(self, node: onnx.NodeProto, why: str, fix: str) -> None:
        self.issues.append(Issue(_name(node), node.op_type, why, fix))

    def warn(self, node: onnx.NodeProto, why: str, fix: str) -> None:
        self.warnings.append(Issue(_name(node), node.op_type, why, fix))

    @property
    def trt(self) -> str:
        return f"TensorRT {self.target.trt_version}"


def _name(node: onnx.NodeProto) -> str:
    return node.name or (f"<unnamed, output {node.output[0]}>" if node.output else "<unnamed>")


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def node_input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def require_constant(ctx: CheckContext, node: onnx.NodeProto, index: int, what: str, source: str) -> None:
    name = node_input(node, index)
    if name and name not in ctx.constants:
        ctx.fail(node, f"`{what}` is computed at run time; {ctx.trt}'s parser needs it as an initializer ({source})",
                 "constant-fold the graph (simplify is on by default: drop `simplify=False`) or export at static "
                 "shapes")


def table_doc(ctx: CheckContext) -> str:
    return ctx.parser.source if ctx.parser is not None else "the parser's operator table"
