"""Target-check rules for explicit quantization: the QuantizeLinear/DequantizeLinear forms each TensorRT parser
line imports (element type, zero point, scale shape and axis).

Reads the graph's initializers, producers and consumers, which ``index_graph`` puts in the ``CheckContext`` before
the walk; writes issues into it. ``check_rules.RULES`` dispatches Q/DQ nodes to ``rule_qdq``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto

from .check_context import CheckContext, node_attr, node_input
from .graph import consumers, producers

# ---- Q/DQ (explicit quantization) ------------------------------------------------------------------------------
# Sources: onnx-tensorrt docs/operators.md (8.5-GA, 8.6-GA: QuantizeLinear/DequantizeLinear "INT8", "zero point must
# be 0"; 10.1-GA: DequantizeLinear INT8, FP8, INT4), TensorRT developer guide "Working with Quantized Types" /
# "Explicit Quantization" (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
# quantized-types-explicit-quantization.html): symmetric quantization, INT4 weight-only, per-channel scales on
# the weights' output-channel axis (K of a Conv kernel [K, C, R, S], the last axis of MatMul weights [C, K]).

_QDQ_FIX = "quantize again with `int8=True` (symmetric int8: zero point 0, per-channel weights on the output axis)"
_FP8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ}
_INT4 = {TensorProto.INT4, TensorProto.UINT4}


def index_graph(ctx: CheckContext, graph: onnx.GraphProto) -> None:
    ctx.initializers = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            ctx.initializers[n.output[0]] = n.attribute[0].t
    ctx.producers, ctx.consumers = producers(graph), consumers(graph)


def _qdq_type(ctx: CheckContext, node: onnx.NodeProto) -> int:
    """The quantized element type of a Q/DQ node: its zero point's, ``output_dtype``'s, or (none given) INT8 as
    TensorRT reads it."""
    zp = ctx.initializers.get(node_input(node, 2))
    if zp is not None:
        return int(zp.data_type)
    if node.op_type == "DequantizeLinear":
        x = ctx.initializers.get(node_input(node, 0))
        if x is not None:
            return int(x.data_type)
    return int(node_attr(node, "output_dtype", 0) or TensorProto.INT8)


def _weight_axis(ctx: CheckContext, node: onnx.NodeProto, rank: int) -> int | None:
    """The output-channel axis of the weight a DQ feeds (Conv 0, ConvTranspose 1, MatMul last, Gemm by transB)."""
    for c in ctx.consumers.get(node.output[0], []):
        if c.op_type == "Conv":
            return 0
        if c.op_type == "ConvTranspose":
            return 1
        if c.op_type == "MatMul":
            return rank - 1
        if c.op_type == "Gemm":
            return 0 if node_attr(c, "transB", 0) else 1
    return None


def _is_weight(ctx: CheckContext, node: onnx.NodeProto) -> bool:
    """A Q/DQ on a constant: Q(weight), DQ(int8 weight), or DQ(Q(weight))."""
    x = node_input(node, 0)
    if x in ctx.constants:
        return True
    q = ctx.producers.get(x)
    return node.op_type == "DequantizeLinear" and q is not None and q.op_type == "QuantizeLinear" and \
        node_input(q, 0) in ctx.constants


def rule_qdq(ctx: CheckContext, node: onnx.NodeProto) -> None:
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
    zp = ctx.initializers.get(node_input(node, 2))
    if zp is not None and zp.data_type not in _INT4 and onnx.numpy_helper.to_array(zp).any():
        ctx.fail(node, f"non-zero zero point: {ctx.trt}'s parser needs zero point 0 (symmetric quantization)",
                 _QDQ_FIX)
    if node_attr(node, "block_size", 0) and eight:
        ctx.fail(node, f"block quantization (block_size): {ctx.trt} has per-tensor and per-channel scales only",
                 _QDQ_FIX)
    scale = ctx.initializers.get(node_input(node, 1))
    if scale is None:
        if node_input(node, 1):
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
    weight = ctx.initializers.get(node_input(node, 0))
    if weight is None:  # DQ(Q(weight)): the weight is the Q's input
        q = ctx.producers.get(node_input(node, 0))
        weight = ctx.initializers.get(node_input(q, 0)) if q is not None else None
    rank = len(weight.dims) if weight is not None else 0
    axis = int(node_attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    want = _weight_axis(ctx, _dq_of(ctx, node), rank) if rank else None
    if eight and want is not None and axis != want:
        ctx.fail(node, f"per-channel weight scale on axis {axis}: {ctx.trt}'s parser takes the output-channel axis "
                 f"({want}) only", _QDQ_FIX)


def _dq_of(ctx: CheckContext, node: onnx.NodeProto) -> onnx.NodeProto:
    """The DequantizeLinear a weight's Q/DQ pair ends in (the node itself when it is one)."""
    if node.op_type == "DequantizeLinear":
        return node
    return next((c for c in ctx.consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"), node)
