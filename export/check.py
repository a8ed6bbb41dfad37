"""Static check of an ONNX graph against one target's ONNX support, before anyone copies a file to a Jetson.

``check_model(model, target)`` visits every node (subgraphs and local functions included) and reports what
that runtime's parser would reject: the opset, operator types (tables in ``trt_ops``), the attributes and modes
the parser documents as unsupported, constant-input requirements, custom domains and plugin versions, and data
types. Each issue names the node, its op, why, and the fix. ``bool(report)`` is pass.

Sources (cited per rule below): onnx-tensorrt ``docs/operators.md`` of the 8.5-GA, 8.6-GA and 10.1-GA branches
(``../shared/reference/onnx-tensorrt/``), onnx-tensorrt ``docs/Changelog.md``, TensorRT's Python API docs
(``IGridSampleLayer``), NVIDIA TensorRT release notes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnx.defs
import onnx.numpy_helper
from onnx import TensorProto

from blocks_export.plugins.onnx_graph import subgraphs

from . import trt_ops
from .errors import InputError
from .graph import consumers, infer_shapes, producers
from .targets import Target, get_target, ort_deform_conv
from .trt_ops import PLUGIN_OP, ParserTable, TrtVersion

STANDARD_DOMAINS = ("", "ai.onnx")
# Domains onnxruntime itself implements (https://onnxruntime.ai/docs/reference/operators/ContribOperators.html).
ORT_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


class Issue(NamedTuple):
    """One thing the target cannot run: where (node name), what (op type), why, and what to do."""

    node_name: str
    op_type: str
    why: str
    fix: str

    def line(self) -> str:
        return f"{self.node_name} | {self.op_type} | {self.why} | fix: {self.fix}"


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


@dataclass
class _Context:
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


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _require_constant(ctx: _Context, node: onnx.NodeProto, index: int, what: str, source: str) -> None:
    name = _input(node, index)
    if name and name not in ctx.constants:
        ctx.fail(node, f"`{what}` is computed at run time; {ctx.trt}'s parser needs it as an initializer ({source})",
                 "constant-fold the graph (simplify is on by default: drop `simplify=False`) or export at static "
                 "shapes")


# ---- per-operator rules: the parser's documented restrictions --------------------------------------------------

def _rule_pad(ctx: _Context, node: onnx.NodeProto) -> None:
    mode = _attr(node, "mode", "constant")
    # Pad modes: edge and reflect from 8.2, wrap from 10.0 EA (onnx-tensorrt docs/Changelog.md).
    modes = {"constant", "reflect", "edge"} | ({"wrap"} if ctx.version >= (10, 0) else set())
    if mode not in modes:
        ctx.fail(node, f"Pad mode {mode!r} is not imported by {ctx.trt} (supported: {', '.join(sorted(modes))})",
                 "use constant, reflect or edge padding in the model" if "wrap" not in modes
                 else "use a supported padding mode")
    # "`axes` must be an initializer" (operators-10.1-GA.md); tensor axes from 10.4 (Changelog "10.4 GA").
    # (8.x parses opsets up to 17, where Pad has no axes input.)
    if ctx.version < (10, 4):
        _require_constant(ctx, node, 3, "axes", "operators-10.1-GA.md, Pad")


def _rule_grid_sample(ctx: _Context, node: onnx.NodeProto) -> None:
    # IGridSampleLayer: rank-4 input and grid, interpolation NEAREST/LINEAR/CUBIC, sample modes FILL (zeros),
    # CLAMP (border), REFLECT (TensorRT Python API, IGridSampleLayer); "Input must be 4D" (operators-10.1-GA.md).
    mode = _attr(node, "mode", "bilinear" if ctx.opset < 20 else "linear")
    padding = _attr(node, "padding_mode", "zeros")
    if mode not in ("bilinear", "linear", "nearest", "bicubic", "cubic"):
        ctx.fail(node, f"GridSample mode {mode!r} has no TensorRT interpolation mode", "use mode bilinear")
    if padding not in ("zeros", "border", "reflection"):
        ctx.fail(node, f"GridSample padding_mode {padding!r} has no TensorRT sample mode", "use zeros padding")
    rank = ctx.ranks.get(_input(node, 0))
    if rank is not None and rank != 4:
        ctx.fail(node, f"GridSample input has rank {rank}; TensorRT's grid sample layer takes rank 4 only",
                 "sample 2-D feature maps (N, C, H, W)")


def _rule_deform_conv(ctx: _Context, node: onnx.NodeProto) -> None:
    # "`input` must have 1D or 2D spatial dimensions. `pads` for the beginning and end along each spatial axis
    # must be the same" (operators-10.1-GA.md, DeformConv).
    pads = list(_attr(node, "pads", []) or [])
    kernel = list(_attr(node, "kernel_shape", []) or [])
    rank = ctx.ranks.get(_input(node, 0))
    spatial = len(kernel) if kernel else (rank - 2 if rank else None)
    if spatial is not None and spatial not in (1, 2):
        ctx.fail(node, f"DeformConv with {spatial} spatial dimensions; {ctx.trt} imports 1-D and 2-D only",
                 "use a 2-D deformable convolution")
    half = len(pads) // 2
    if pads and pads[:half] != pads[half:]:
        ctx.fail(node, f"DeformConv pads {pads}: begin and end differ; {ctx.trt} needs them equal",
                 "export with `deform_conv=portable`, or use symmetric padding")


def _rule_reduce(ctx: _Context, node: onnx.NodeProto) -> None:
    # Reduce ops take `axes` as an input from opset 18 (ReduceSum from 13): "`axes` must be an initializer"
    # (operators-10.1-GA.md); the 8.x importers read it as weights as well.
    _require_constant(ctx, node, 1, "axes", "operators-10.1-GA.md, " + node.op_type)


def _rule_resize(ctx: _Context, node: onnx.NodeProto) -> None:
    # Supported transformation modes, modes, nearest modes, aspect ratio policy `stretch`, no antialiasing
    # (operators-8.5-GA.md and operators-10.1-GA.md, Resize).
    mode = _attr(node, "mode", "nearest")
    ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
    allowed_ctm = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
    if mode not in ("nearest", "linear"):
        ctx.fail(node, f"Resize mode {mode!r} is not supported by {ctx.trt} (nearest, linear)",
                 "use bilinear or nearest upsampling")
    if ctm not in allowed_ctm:
        ctx.fail(node, f"Resize coordinate_transformation_mode {ctm!r} is not supported by {ctx.trt}",
                 f"use one of {', '.join(allowed_ctm)}")
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"):
        ctx.fail(node, f"Resize nearest_mode {nearest!r} is not supported by {ctx.trt}", "use nearest_mode floor")
    if _attr(node, "antialias", 0):
        ctx.fail(node, "Resize with antialias=1: antialiasing is not supported", "resize without antialiasing")
    if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        ctx.fail(node, "Resize keep_aspect_ratio_policy other than stretch", "give explicit sizes or scales")


def _rule_pool(ctx: _Context, node: onnx.NodeProto) -> None:
    # "2D or 3D Pooling only", "`dilations` must be empty or all ones", MaxPool "`Indices` output tensor
    # unsupported" (operators-8.5-GA.md, operators-10.1-GA.md).
    kernel = list(_attr(node, "kernel_shape", []) or [])
    if kernel and len(kernel) not in (2, 3):
        ctx.fail(node, f"{len(kernel)}-D pooling; TensorRT pools 2-D or 3-D only", "pool 2-D feature maps")
    dilations = list(_attr(node, "dilations", []) or [])
    if any(d != 1 for d in dilations):
        ctx.fail(node, f"pooling with dilations {dilations}; TensorRT needs all ones", "use undilated pooling")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        ctx.fail(node, "MaxPool `Indices` output is not supported", "drop return_indices=True")


def _rule_layer_norm(ctx: _Context, node: onnx.NodeProto) -> None:
    # "Only the first output `Y` is supported." (operators-10.1-GA.md, LayerNormalization)
    if any(node.output[1:]):
        ctx.fail(node, "LayerNormalization Mean/InvStdDev outputs are not supported", "use only the output Y")


def _rule_slice(ctx: _Context, node: onnx.NodeProto) -> None:
    # "`axes` must be an initializer" (8.5, 8.6, 10.1 tables); tensor axes from 10.3 (Changelog "10.3 GA").
    if ctx.version < (10, 3):
        _require_constant(ctx, node, 3, "axes", _table_doc(ctx))


def _rule_squeeze(ctx: _Context, node: onnx.NodeProto) -> None:
    # Squeeze "`axes` must be an initializer", Unsqueeze "`axes` must be a constant tensor" (8.5 to 10.1
    # tables); dynamic axes from 10.7 (Changelog "10.7 GA").
    if ctx.version < (10, 7):
        _require_constant(ctx, node, 1, "axes", f"{node.op_type} in operators-8.5/8.6/10.1-GA.md")


def _rule_topk(ctx: _Context, node: onnx.NodeProto) -> None:
    if ctx.version < (8, 6):  # "`K` input must be an initializer" (operators-8.5-GA.md)
        _require_constant(ctx, node, 1, "K", "operators-8.5-GA.md, TopK")
    if ctx.version >= (10, 0) and _attr(node, "sorted", 1) != 1:  # "`sorted` must be 1" (10.1 table)
        ctx.fail(node, "TopK with sorted=0 is not supported", "use sorted TopK")


def _rule_cumsum(ctx: _Context, node: onnx.NodeProto) -> None:
    _require_constant(ctx, node, 1, "axis", "CumSum in operators-8.5/8.6/10.1-GA.md")


def _rule_dropout(ctx: _Context, node: onnx.NodeProto) -> None:
    # "`is_traning` must be an initializer and evaluate to False" (operators-10.1-GA.md, Dropout)
    _require_constant(ctx, node, 2, "training_mode", "operators-10.1-GA.md, Dropout")


_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSum", "ReduceSumSquare")
RULES: dict[str, Callable[[_Context, onnx.NodeProto], None]] = {
    "Pad": _rule_pad, "GridSample": _rule_grid_sample, "DeformConv": _rule_deform_conv, "Resize": _rule_resize,
    "MaxPool": _rule_pool, "AveragePool": _rule_pool, "LayerNormalization": _rule_layer_norm,
    "Slice": _rule_slice, "Squeeze": _rule_squeeze, "Unsqueeze": _rule_squeeze, "TopK": _rule_topk,
    "CumSum": _rule_cumsum, "Dropout": _rule_dropout, **{op: _rule_reduce for op in _REDUCE_OPS},
}


# ---- Q/DQ (explicit quantization) ------------------------------------------------------------------------------
# Sources: onnx-tensorrt docs/operators.md (8.5-GA, 8.6-GA: QuantizeLinear/DequantizeLinear "INT8", "zero point must
# be 0"; 10.1-GA: DequantizeLinear INT8, FP8, INT4), TensorRT developer guide "Working with Quantized Types" /
# "Explicit Quantization" (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
# quantized-types-explicit-quantization.html): symmetric quantization, INT4 weight-only, per-channel scales on
# the weights' output-channel axis (K of a Conv kernel [K, C, R, S], the last axis of MatMul weights [C, K]).

_QDQ_FIX = "quantize again with `int8=True` (symmetric int8: zero point 0, per-channel weights on the output axis)"
_FP8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ}
_INT4 = {TensorProto.INT4, TensorProto.UINT4}


def _index_graph(ctx: _Context, graph: onnx.GraphProto) -> None:
    ctx.initializers = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            ctx.initializers[n.output[0]] = n.attribute[0].t
    ctx.producers, ctx.consumers = producers(graph), consumers(graph)


def _qdq_type(ctx: _Context, node: onnx.NodeProto) -> int:
    """The quantized element type of a Q/DQ node: its zero point's, ``output_dtype``'s, or (none given) INT8 as
    TensorRT reads it."""
    zp = ctx.initializers.get(_input(node, 2))
    if zp is not None:
        return int(zp.data_type)
    if node.op_type == "DequantizeLinear":
        x = ctx.initializers.get(_input(node, 0))
        if x is not None:
            return int(x.data_type)
    return int(_attr(node, "output_dtype", 0) or TensorProto.INT8)


def _weight_axis(ctx: _Context, node: onnx.NodeProto, rank: int) -> int | None:
    """The output-channel axis of the weight a DQ feeds (Conv 0, ConvTranspose 1, MatMul last, Gemm by transB)."""
    for c in ctx.consumers.get(node.output[0], []):
        if c.op_type == "Conv":
            return 0
        if c.op_type == "ConvTranspose":
            return 1
        if c.op_type == "MatMul":
            return rank - 1
        if c.op_type == "Gemm":
            return 0 if _attr(c, "transB", 0) else 1
    return None


def _is_weight(ctx: _Context, node: onnx.NodeProto) -> bool:
    """A Q/DQ on a constant: Q(weight), DQ(int8 weight), or DQ(Q(weight))."""
    x = _input(node, 0)
    if x in ctx.constants:
        return True
    q = ctx.producers.get(x)
    return node.op_type == "DequantizeLinear" and q is not None and q.op_type == "QuantizeLinear" and \
        _input(q, 0) in ctx.constants


def _rule_qdq(ctx: _Context, node: onnx.NodeProto) -> None:
    eight = ctx.version < (9, 0)
    dtype = _qdq_type(ctx, node)
    name = TensorProto.DataType.Name(dtype)
    if dtype == TensorProto.UINT8:
        ctx.fail(node, f"{name} quantization: {ctx.trt} quantizes to signed INT8 only (symmetric, zero point 0)",
                 _QDQ_FIX)
    elif dtype in _INT4 and eight:
        ctx.fail(node, f"{name} quantization: {ctx.trt}'s parser takes INT8 only (INT4 weights arrive in TensorRT 10)",
                 _QDQ_FIX)
    elif dtype in _INT4 and not _is_weight(ctx, node):
        ctx.fail(node, f"{name} on an activation: INT4 is weight-only in {ctx.trt}", _QDQ_FIX)
    elif dtype in _FP8 and eight:
        ctx.fail(node, f"{name} quantization: {ctx.trt}'s parser takes INT8 only", _QDQ_FIX)
    zp = ctx.initializers.get(_input(node, 2))
    if zp is not None and zp.data_type not in _INT4 and onnx.numpy_helper.to_array(zp).any():
        ctx.fail(node, f"non-zero zero point: {ctx.trt}'s parser needs zero point 0 (symmetric quantization)",
                 _QDQ_FIX)
    if _attr(node, "block_size", 0) and eight:
        ctx.fail(node, f"block quantization (block_size): {ctx.trt} has per-tensor and per-channel scales only",
                 _QDQ_FIX)
    scale = ctx.initializers.get(_input(node, 1))
    if scale is None:
        if _input(node, 1):
            ctx.fail(node, f"the scale is computed at run time; {ctx.trt}'s parser needs it as an initializer",
                     "constant-fold the graph (simplify is on by default: drop `simplify=False`)")
        return
    if len(scale.dims) == 0 or int(np.prod(scale.dims)) == 1:
        return
    if ctx.opset < 13:
        ctx.fail(node, f"per-channel scale at opset {ctx.opset}: the `axis` attribute exists from opset 13",
                 "export with opset 13 or newer")
    if not _is_weight(ctx, node):
        if eight:
            ctx.fail(node, f"per-channel scale on an activation: {ctx.trt} scales activations per tensor",
                     _QDQ_FIX)
        return
    weight = ctx.initializers.get(_input(node, 0))
    if weight is None:  # DQ(Q(weight)): the weight is the Q's input
        q = ctx.producers.get(_input(node, 0))
        weight = ctx.initializers.get(_input(q, 0)) if q is not None else None
    rank = len(weight.dims) if weight is not None else 0
    axis = int(_attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    want = _weight_axis(ctx, _dq_of(ctx, node), rank) if rank else None
    if eight and want is not None and axis != want:
        ctx.fail(node, f"per-channel weight scale on axis {axis}: {ctx.trt}'s parser takes the output-channel axis "
                 f"({want}) only", _QDQ_FIX)


def _dq_of(ctx: _Context, node: onnx.NodeProto) -> onnx.NodeProto:
    """The DequantizeLinear a weight's Q/DQ pair ends in (the node itself when it is one)."""
    if node.op_type == "DequantizeLinear":
        return node
    return next((c for c in ctx.consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"), node)


RULES.update({"QuantizeLinear": _rule_qdq, "DequantizeLinear": _rule_qdq})


# ---- operator-type, domain and plugin rules --------------------------------------------------------------------

def _table_doc(ctx: _Context) -> str:
    return ctx.parser.source if ctx.parser is not None else "the parser's operator table"


def _unsupported_fix(ctx: _Context, op: str) -> str:
    if op == "DeformConv":
        return ("export with `deform_conv=plugin` (or `deform_conv=portable`)" if ctx.parser is not None
                and ctx.parser.plugin(PLUGIN_OP) else "export with `deform_conv=portable`")
    if op == "LayerNormalization":
        return "export with `target=jetpack5` (LayerNormalization written as ReduceMean/Sub/Pow/Sqrt/Div)"
    newer = trt_ops.first_with(op, ctx.version)
    if newer is not None:
        return f"rewrite the op with supported ones, or deploy with TensorRT {newer.version}+"
    return "rewrite the op with supported ones"


def _check_plugin(ctx: _Context, node: onnx.NodeProto) -> None:
    assert ctx.parser is not None
    rule = ctx.parser.plugin(node.op_type)
    if rule is None:
        first = next((t for v, t in sorted(trt_ops.PARSERS.items()) if t.plugin(node.op_type)), None)
        since = f" (built in from TensorRT {first.version})" if first is not None else ""
        ctx.fail(node, f"{ctx.trt} ships no {node.op_type} plugin{since}", "export with `deform_conv=portable`")
        return
    version = str(_attr(node, "plugin_version", "1"))
    if version not in rule.versions:
        ctx.fail(node, f"plugin {node.op_type} version {version} is not in {ctx.trt} "
                 f"(has {', '.join(sorted(rule.versions))})", "export with `deform_conv=plugin` (writes version 1)")
    if node.domain == "trt.plugins":
        # onnxruntime's TensorRT EP wants this domain; the parser itself reads a node's domain as the plugin
        # namespace from 10.10 (onnx-tensorrt docs/Changelog.md, "10.10 GA").
        ctx.warn(node, "domain 'trt.plugins' is the onnxruntime TensorRT EP form of the plugin node",
                 "build the engine from the exported graph (plugin nodes in the default domain)")
    _check_input_types(ctx, node, rule)


_TYPE_FIX = ("export with blocks-export's `fp16=True` for this target (it keeps the deformable convolution's "
             "inputs float32), or Cast the inputs to float32 in the graph")


def _check_input_types(ctx: _Context, node: onnx.NodeProto, rule: trt_ops.PluginRule) -> None:
    """The plugin's ``supportsFormatCombination`` (``trt_ops``): input 0 of an accepted type, the others of its
    type. ONNX ``DeformConv`` is imported as the same plugin from TensorRT 10.1 (operators-10.1-GA.md)."""
    types = ctx.types()
    names = ["x", "offset", "mask", "weight", "bias"] if node.op_type == PLUGIN_OP else \
        ["X", "W", "offset", "B", "mask"]
    found = [(names[i] if i < len(names) else f"input {i}", types.get(name)) for i, name in enumerate(node.input)
             if name]
    if not found or found[0][1] is None:
        return
    first = found[0][1]
    what = f"TensorRT {ctx.parser.version if ctx.parser else ''}'s {PLUGIN_OP} plugin"
    if first not in rule.first_input_types:
        ctx.fail(node, f"input {found[0][0]} is {_type_name(first)}; {what} takes {rule.type_names()} only "
                 f"({rule.source})", _TYPE_FIX)
        return
    mixed = [(n, t) for n, t in found[1:] if t is not None and t != first]
    if rule.same_type and mixed:
        listed = ", ".join(f"{n} {_type_name(t)}" for n, t in mixed)
        ctx.fail(node, f"inputs of mixed types ({found[0][0]} {_type_name(first)}; {listed}): {what} needs every "
                 f"input in {found[0][0]}'s type ({rule.source})", _TYPE_FIX)


def _type_name(dtype: int) -> str:
    if dtype == TensorProto.FLOAT:
        return "float32"
    return TensorProto.DataType.Name(dtype).lower() if dtype else "undefined"


def _check_trt_node(ctx: _Context, node: onnx.NodeProto) -> None:
    assert ctx.parser is not None
    supported = ctx.parser.ops
    if node.op_type == PLUGIN_OP and node.domain in ("", "trt.plugins"):
        _check_plugin(ctx, node)
    elif node.domain not in STANDARD_DOMAINS:
        if node.domain == "ai.onnx.contrib":
            ctx.fail(node, "node in domain 'ai.onnx.contrib': this is the CPU-reference copy of a plugin graph",
                     "check and build the exported graph, not its onnxruntime CPU copy")
        else:
            ctx.fail(node, f"custom domain {node.domain!r}: {ctx.trt}'s parser has no importer and no built-in "
                     f"plugin for {node.op_type}", "replace the op, or register a plugin library that provides it")
    elif node.op_type not in supported:
        ctx.fail(node, f"{node.op_type} is not supported by {ctx.trt}'s ONNX parser ({ctx.parser.source})",
                 _unsupported_fix(ctx, node.op_type))
    else:
        if node.op_type == "DeformConv" and (rule := ctx.parser.plugin(PLUGIN_OP)) is not None:
            _check_input_types(ctx, node, rule)
        if node.op_type in RULES:
            RULES[node.op_type](ctx, node)


def _check_ort_node(ctx: _Context, node: onnx.NodeProto) -> None:
    if node.op_type == PLUGIN_OP:
        ctx.fail(node, "TensorRT plugin node: stock onnxruntime has no kernel for it",
                 "export with `deform_conv=std` (or portable)")
    elif node.domain not in ORT_DOMAINS:
        ctx.fail(node, f"custom domain {node.domain!r} is not implemented by onnxruntime",
                 "replace the op, or register a custom-op library in the session")
    elif node.op_type == "DeformConv" and ort_deform_conv() != "std":
        ctx.fail(node, "the installed onnxruntime has no DeformConv kernel (added in 1.25.0)",
                 "export with `deform_conv=portable`, or upgrade onnxruntime to >= 1.25")


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


def _check_types(ctx: _Context, model: onnx.ModelProto) -> None:
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


def _visit(ctx: _Context, graph: onnx.GraphProto, functions: dict[tuple[str, str], onnx.FunctionProto],
           check_node: Callable[[_Context, onnx.NodeProto], None], seen: set[tuple[str, str]]) -> int:
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


def read_onnx(model: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse the ONNX file at ``model`` (no external data); ``InputError`` (one line) for a corrupt, truncated
    or absurdly nested file (protobuf's DecodeError, onnx's errors, a RecursionError all end here) and for a
    graph no runtime loads (``_check_structure``)."""
    path = os.fspath(model)
    # An empty file parses as an empty ModelProto (protobuf's wire format has no header), which would
    # "pass" with 0 nodes: refuse it, and anything else that decodes to a model without a graph.
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty; export the model again or copy it again")
    try:
        # The weights are not needed to check operators; large external data stays on disk.
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and onnx's own errors share no useful base class
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise InputError(f"{path}: not a valid ONNX model ({type(e).__name__}: {first}); the file may be "
                         "truncated or corrupted: export it again or copy it again") from None
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph in the file); export it again or copy it again")
    _check_structure(proto, path)
    return proto


def _load(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    """The model at ``model``; ``InputError`` (one line) for a file that is not a usable ONNX model."""
    if isinstance(model, onnx.ModelProto):
        _check_tensor_data(model, "the model")
        return model
    path = os.fspath(model)
    proto = read_onnx(path)
    _check_external_data(proto, path)
    _check_tensor_data(proto, path)
    _run_onnx_checker(proto, path)
    return proto


def _check_structure(proto: onnx.ModelProto, path: str) -> None:
    """Refuse, in one line, a graph onnxruntime and the TensorRT parser refuse before any operator is looked at:
    an IR version newer than this onnx reads, a node input nothing produces, a cycle, a graph output nothing
    produces or without a type. Kahn's order over the top-level nodes (a subgraph's outer-scope names are the
    top level's, so they are not followed here)."""
    if proto.ir_version > onnx.IR_VERSION:
        raise InputError(f"{path}: IR version {proto.ir_version} is newer than any this toolkit reads "
                         f"(onnx {onnx.__version__} reads up to {onnx.IR_VERSION}); export it again with an "
                         "older opset or update onnx")
    graph = proto.graph
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    known |= {t.name for t in graph.sparse_initializer}
    produced_by: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        for out in node.output:
            if out:
                produced_by[out] = k
    waiting = [0] * len(graph.node)
    readers: dict[int, list[int]] = {}
    for k, node in enumerate(graph.node):
        for name in node.input:
            if name in known:
                continue
            if name not in produced_by:
                raise InputError(f"{path}: node {node.name or node.op_type!r} reads {name!r}, which no node, graph "
                                 "input or initializer produces; export the model again")
            waiting[k] += 1
            readers.setdefault(produced_by[name], []).append(k)
    ready = [k for k, n in enumerate(waiting) if n == 0]
    done = 0
    while ready:
        k = ready.pop()
        done += 1
        for r in readers.get(k, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    if done != len(graph.node):
        stuck = next(graph.node[k] for k, n in enumerate(waiting) if n > 0)
        raise InputError(f"{path}: the graph has a cycle (through node {stuck.name or stuck.op_type!r}); "
                         "export the model again")
    for out in graph.output:
        if out.name not in produced_by and out.name not in known:
            raise InputError(f"{path}: graph output {out.name!r} is produced by no node; export the model again")
        if not out.type.HasField("tensor_type") and not out.type.HasField("sequence_type") \
                and not out.type.HasField("map_type") and not out.type.HasField("optional_type"):
            raise InputError(f"{path}: graph output {out.name!r} has no type; export the model again")


_PLUGIN_DOMAIN = "blocks_export.unknown_op"  # where the checker sees default-domain operators onnx does not define


def _run_onnx_checker(proto: onnx.ModelProto, path: str) -> None:
    """onnx's full checker (strict shape inference included) on the file at ``path``, after the checks above
    (they say more precisely what is wrong): a graph it refuses is one line. Given the path, the checker finds
    external data beside the model without loading it. Operators onnx does not define (TensorRT plugins, in
    their own domain or the default one; com.microsoft) are left to the per-node rules. A graph input or output without a shape (onnxruntime
    takes it, onnx's checker requires one) is not run through it."""
    if any(v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")
           for v in (*proto.graph.input, *proto.graph.output)):
        return
    target: onnx.ModelProto | str = path
    unknown = [n for n in proto.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unknown:  # a TensorRT plugin written in the default domain: checked as a custom-domain node, like others
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            return  # the copy would not find the external data the path does
        target = onnx.ModelProto()
        target.CopyFrom(proto)
        for node in target.graph.node:
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
                node.domain = _PLUGIN_DOMAIN
        target.opset_import.append(onnx.helper.make_opsetid(_PLUGIN_DOMAIN, 1))
    try:
        onnx.checker.check_model(target, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: the ONNX checker refuses the graph ({first}); export the model again") from None


def _check_tensor_data(proto: onnx.ModelProto, path: str) -> None:
    """Refuse a tensor that declares more elements than it holds (onnxruntime refuses such a model at load:
    a 2^50-element initializer with no data must not PASS)."""
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if onnx.external_data_helper.uses_external_data(tensor):
            continue
        declared = 1
        for d in tensor.dims:
            declared *= d
        if declared == 0:
            continue
        held = (len(tensor.float_data) + len(tensor.int32_data) + len(tensor.int64_data) + len(tensor.double_data)
                + len(tensor.uint64_data) + len(tensor.string_data))
        if not held and tensor.HasField("raw_data"):
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            except Exception:  # a data type numpy has no dtype for (4-bit, float8): not checked by size
                itemsize = 0
            if itemsize and tensor.data_type not in _SUB_BYTE_TYPES and len(tensor.raw_data) != declared * itemsize:
                raise InputError(f"{path}: tensor {tensor.name!r} declares {declared} elements but holds "
                                 f"{len(tensor.raw_data)} bytes; export the model again")
            continue
        if not held:
            raise InputError(f"{path}: tensor {tensor.name!r} declares {declared} elements and holds no data; "
                             "export the model again")


_SUB_BYTE_TYPES = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "INT2", "UINT2", "FLOAT4E2M1")
                   if hasattr(TensorProto, n)}


def _check_external_data(proto: onnx.ModelProto, path: str) -> None:
    """Refuse a model whose external-data files are missing: the TensorRT parser and onnxruntime need them."""
    folder = os.path.dirname(os.path.abspath(path))
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        # onnxruntime refuses a location that is absolute or leaves the model's folder
        # (onnxruntime/core/framework/tensorprotoutils.cc, ValidateExternalDataPath); a symlink out of it
        # is refused here too, so what `check` passes is what is loaded from the folder.
        real_folder = os.path.realpath(folder)
        resolved = os.path.realpath(os.path.join(real_folder, location))
        if (not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/")
                or os.path.commonpath([real_folder, resolved]) != real_folder):
            raise InputError(f"{path}: tensor {tensor.name!r} is stored in external-data file {location!r}, "
                             f"outside the model's folder {folder}; copy the data file beside the model and "
                             "reference it by file name")
        if not os.path.isfile(os.path.join(folder, location)):
            raise InputError(f"{path}: tensor {tensor.name!r} is stored in external-data file {location!r}, "
                             f"which is not in {folder}; copy it beside the model")


def check_model(model: onnx.ModelProto | str | os.PathLike[str], target: str) -> CheckReport:
    """Check every node of ``model`` against ``target``'s ONNX support (see the module docstring)."""
    tgt = get_target(target)
    proto = _load(model)
    opset = next((o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS), 0)
    inferred = _infer(proto)
    ctx = _Context(tgt, tgt.table, opset, _constants(proto.graph), _ranks(inferred), model=proto)
    _index_graph(ctx, proto.graph)
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
    check_node = _check_trt_node if tgt.is_tensorrt else _check_ort_node
    count = _visit(ctx, proto.graph, functions, check_node, set())
    if tgt.is_tensorrt:
        _check_types(ctx, inferred)
    return CheckReport(tgt.name, ctx.issues, ctx.warnings, count)


__all__ = ["CheckReport", "Issue", "RULES", "check_model"]
