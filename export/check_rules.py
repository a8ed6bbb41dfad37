"""Target-check rules per node: the operator types, domains and plugins each target's parser imports, and the
attributes, modes and constant inputs it documents as unsupported (``RULES``, by op type).

``check_trt_node`` and ``check_ort_node`` are what ``check.check_model`` calls for every node; each writes the
issues it finds into the ``CheckContext``. Sources are cited per rule (the documents are listed in ``check``).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import TensorProto

from . import trt_ops
from .check_context import CheckContext, node_attr, node_input, require_constant, table_doc
from .check_qdq import rule_qdq
from .targets import ort_deform_conv
from .trt_ops import PLUGIN_OP

STANDARD_DOMAINS = ("", "ai.onnx")
# Domains onnxruntime itself implements (https://onnxruntime.ai/docs/reference/operators/ContribOperators.html).
ORT_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


# ---- per-operator rules: the parser's documented restrictions --------------------------------------------------

def _rule_pad(ctx: CheckContext, node: onnx.NodeProto) -> None:
    mode = node_attr(node, "mode", "constant")
    # Pad modes: edge and reflect from 8.2, wrap from 10.0 EA (onnx-tensorrt docs/Changelog.md).
    modes = {"constant", "reflect", "edge"} | ({"wrap"} if ctx.version >= (10, 0) else set())
    if mode not in modes:
        ctx.fail(node, f"Pad mode {mode!r} is not imported by {ctx.trt} (supported: {', '.join(sorted(modes))})",
                 "use constant, reflect or edge padding in the model" if "wrap" not in modes
                 else "use a supported padding mode")
    # "`axes` must be an initializer" (operators-10.1-GA.md); tensor axes from 10.4 (Changelog "10.4 GA").
    # (8.x parses opsets up to 17, where Pad has no axes input.)
    if ctx.version < (10, 4):
        require_constant(ctx, node, 3, "axes", "operators-10.1-GA.md, Pad")


def _rule_grid_sample(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # IGridSampleLayer: rank-4 input and grid, interpolation NEAREST/LINEAR/CUBIC, sample modes FILL (zeros),
    # CLAMP (border), REFLECT (TensorRT Python API, IGridSampleLayer); "Input must be 4D" (operators-10.1-GA.md).
    mode = node_attr(node, "mode", "bilinear" if ctx.opset < 20 else "linear")
    padding = node_attr(node, "padding_mode", "zeros")
    if mode not in ("bilinear", "linear", "nearest", "bicubic", "cubic"):
        ctx.fail(node, f"GridSample mode {mode!r} has no TensorRT interpolation mode", "use mode bilinear")
    if padding not in ("zeros", "border", "reflection"):
        ctx.fail(node, f"GridSample padding_mode {padding!r} has no TensorRT sample mode", "use zeros padding")
    rank = ctx.ranks.get(node_input(node, 0))
    if rank is not None and rank != 4:
        ctx.fail(node, f"GridSample input has rank {rank}; TensorRT's grid sample layer takes rank 4 only",
                 "sample 2-D feature maps (N, C, H, W)")


def _rule_deform_conv(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # "`input` must have 1D or 2D spatial dimensions. `pads` for the beginning and end along each spatial axis
    # must be the same" (operators-10.1-GA.md, DeformConv).
    pads = list(node_attr(node, "pads", []) or [])
    kernel = list(node_attr(node, "kernel_shape", []) or [])
    rank = ctx.ranks.get(node_input(node, 0))
    spatial = len(kernel) if kernel else (rank - 2 if rank else None)
    if spatial is not None and spatial not in (1, 2):
        ctx.fail(node, f"DeformConv with {spatial} spatial dimensions; {ctx.trt} imports 1-D and 2-D only",
                 "use a 2-D deformable convolution")
    half = len(pads) // 2
    if pads and pads[:half] != pads[half:]:
        ctx.fail(node, f"DeformConv pads {pads}: begin and end differ; {ctx.trt} needs them equal",
                 "export with `deform_conv=portable`, or use symmetric padding")


def _rule_reduce(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # Reduce ops take `axes` as an input from opset 18 (ReduceSum from 13): "`axes` must be an initializer"
    # (operators-10.1-GA.md); the 8.x importers read it as weights as well.
    require_constant(ctx, node, 1, "axes", "operators-10.1-GA.md, " + node.op_type)


def _rule_resize(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # Supported transformation modes, modes, nearest modes, aspect ratio policy `stretch`, no antialiasing
    # (operators-8.5-GA.md and operators-10.1-GA.md, Resize).
    mode = node_attr(node, "mode", "nearest")
    ctm = node_attr(node, "coordinate_transformation_mode", "half_pixel")
    allowed_ctm = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
    if mode not in ("nearest", "linear"):
        ctx.fail(node, f"Resize mode {mode!r} is not supported by {ctx.trt} (nearest, linear)",
                 "use bilinear or nearest upsampling")
    if ctm not in allowed_ctm:
        ctx.fail(node, f"Resize coordinate_transformation_mode {ctm!r} is not supported by {ctx.trt}",
                 f"use one of {', '.join(allowed_ctm)}")
    nearest = node_attr(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"):
        ctx.fail(node, f"Resize nearest_mode {nearest!r} is not supported by {ctx.trt}", "use nearest_mode floor")
    if node_attr(node, "antialias", 0):
        ctx.fail(node, "Resize with antialias=1: antialiasing is not supported", "resize without antialiasing")
    if node_attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        ctx.fail(node, "Resize keep_aspect_ratio_policy other than stretch", "give explicit sizes or scales")


def _rule_pool(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # "2D or 3D Pooling only", "`dilations` must be empty or all ones", MaxPool "`Indices` output tensor
    # unsupported" (operators-8.5-GA.md, operators-10.1-GA.md).
    kernel = list(node_attr(node, "kernel_shape", []) or [])
    if kernel and len(kernel) not in (2, 3):
        ctx.fail(node, f"{len(kernel)}-D pooling; TensorRT pools 2-D or 3-D only", "pool 2-D feature maps")
    dilations = list(node_attr(node, "dilations", []) or [])
    if any(d != 1 for d in dilations):
        ctx.fail(node, f"pooling with dilations {dilations}; TensorRT needs all ones", "use undilated pooling")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        ctx.fail(node, "MaxPool `Indices` output is not supported", "drop return_indices=True")


def _rule_layer_norm(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # "Only the first output `Y` is supported." (operators-10.1-GA.md, LayerNormalization)
    if any(node.output[1:]):
        ctx.fail(node, "LayerNormalization Mean/InvStdDev outputs are not supported", "use only the output Y")


def _rule_slice(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # "`axes` must be an initializer" (8.5, 8.6, 10.1 tables); tensor axes from 10.3 (Changelog "10.3 GA").
    if ctx.version < (10, 3):
        require_constant(ctx, node, 3, "axes", table_doc(ctx))


def _rule_squeeze(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # Squeeze "`axes` must be an initializer", Unsqueeze "`axes` must be a constant tensor" (8.5 to 10.1
    # tables); dynamic axes from 10.7 (Changelog "10.7 GA").
    if ctx.version < (10, 7):
        require_constant(ctx, node, 1, "axes", f"{node.op_type} in operators-8.5/8.6/10.1-GA.md")


def _rule_topk(ctx: CheckContext, node: onnx.NodeProto) -> None:
    if ctx.version < (8, 6):  # "`K` input must be an initializer" (operators-8.5-GA.md)
        require_constant(ctx, node, 1, "K", "operators-8.5-GA.md, TopK")
    if ctx.version >= (10, 0) and node_attr(node, "sorted", 1) != 1:  # "`sorted` must be 1" (10.1 table)
        ctx.fail(node, "TopK with sorted=0 is not supported", "use sorted TopK")


def _rule_cumsum(ctx: CheckContext, node: onnx.NodeProto) -> None:
    require_constant(ctx, node, 1, "axis", "CumSum in operators-8.5/8.6/10.1-GA.md")


def _rule_dropout(ctx: CheckContext, node: onnx.NodeProto) -> None:
    # "`is_traning` must be an initializer and evaluate to False" (operators-10.1-GA.md, Dropout)
    require_constant(ctx, node, 2, "training_mode", "operators-10.1-GA.md, Dropout")


_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSum", "ReduceSumSquare")
RULES: dict[str, Callable[[CheckContext, onnx.NodeProto], None]] = {
    "Pad": _rule_pad, "GridSample": _rule_grid_sample, "DeformConv": _rule_deform_conv, "Resize": _rule_resize,
    "MaxPool": _rule_pool, "AveragePool": _rule_pool, "LayerNormalization": _rule_layer_norm,
    "Slice": _rule_slice, "Squeeze": _rule_squeeze, "Unsqueeze": _rule_squeeze, "TopK": _rule_topk,
    "CumSum": _rule_cumsum, "Dropout": _rule_dropout, **{op: _rule_reduce for op in _REDUCE_OPS},
}

RULES.update({"QuantizeLinear": rule_qdq, "DequantizeLinear": rule_qdq})


# ---- operator-type, domain and plugin rules --------------------------------------------------------------------

def _unsupported_fix(ctx: CheckContext, op: str) -> str:
    if op == "DeformConv":
        return ("export with `deform_conv=plugin` (or `deform_conv=portable`)" if ctx.parser is not None
                and ctx.parser.plugin(PLUGIN_OP) else "export with `deform_conv=portable`")
    if op == "LayerNormalization":
        return "export with `target=jetpack5` (LayerNormalization written as ReduceMean/Sub/Pow/Sqrt/Div)"
    newer = trt_ops.first_with(op, ctx.version)
    if newer is not None:
        return f"rewrite the op with supported ones, or deploy with TensorRT {newer.version}+"
    return "rewrite the op with supported ones"


def _check_plugin(ctx: CheckContext, node: onnx.NodeProto) -> None:
    assert ctx.parser is not None
    rule = ctx.parser.plugin(node.op_type)
    if rule is None:
        first = next((t for v, t in sorted(trt_ops.PARSERS.items()) if t.plugin(node.op_type)), None)
        since = f" (built in from TensorRT {first.version})" if first is not None else ""
        ctx.fail(node, f"{ctx.trt} ships no {node.op_type} plugin{since}", "export with `deform_conv=portable`")
        return
    version = str(node_attr(node, "plugin_version", "1"))
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


def _check_input_types(ctx: CheckContext, node: onnx.NodeProto, rule: trt_ops.PluginRule) -> None:
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


def check_trt_node(ctx: CheckContext, node: onnx.NodeProto) -> None:
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


def check_ort_node(ctx: CheckContext, node: onnx.NodeProto) -> None:
    if node.op_type == PLUGIN_OP:
        ctx.fail(node, "TensorRT plugin node: stock onnxruntime has no kernel for it",
                 "export with `deform_conv=std` (or portable)")
    elif node.domain not in ORT_DOMAINS:
        ctx.fail(node, f"custom domain {node.domain!r} is not implemented by onnxruntime",
                 "replace the op, or register a custom-op library in the session")
    elif node.op_type == "DeformConv" and ort_deform_conv() != "std":
        ctx.fail(node, "the installed onnxruntime has no DeformConv kernel (added in 1.25.0)",
                 "export with `deform_conv=portable`, or upgrade onnxruntime to >= 1.25")
