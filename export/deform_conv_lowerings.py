"""The three ONNX lowerings of ``torchvision::deform_conv2d``, written once against a tiny node emitter.

Both exporters call these: the dynamo exporter through onnxscript, the TorchScript exporter through
``GraphContext.op`` (adapters in ``deform_conv.py``). An ``Emitter`` has two methods:
``op(op_type, *inputs, domain="", **attributes)`` (one output) and ``const(array)``.

``std``: ONNX ``DeformConv`` (opset >= 19).

``plugin``: TensorRT's ``ModulatedDeformConv2d`` node; without a mask (DCNv1) a ones mask is built in-graph
with the offset's batch and spatial size, so dynamic shapes stay dynamic.

``portable``: standard operators only, GridSample-based. Why GridSample rather than Gather:

- TensorRT 8.5's parser (JetPack 5) takes both: ``GridSample`` (FP32, FP16) and ``Gather``/``GatherElements``
  are all "Y" in ../shared/reference/onnx-tensorrt/operators-8.5-GA.md (and in operators-8.6-GA.md; the 8.4
  table of github.com/onnx/onnx-tensorrt docs/operators.md has no GridSample, so 8.5 is the first with it).
- GridSample fuses the four-corner gather with the bilinear weights. A Gather formulation has to materialise
  the four corners (4x the column tensor) and contract them in a separate op; on onnxruntime 1.32 CPU,
  1x64x80x80 3x3, each Gather-based prototype (one stacked Gather + batched MatMul, four Gathers + Mul + Sum,
  Mul + ReduceSum) profiled slower than the whole GridSample path; the prototypes were not kept.
  ``python benchmarks/run.py --only deform`` measures the lowering that is.
- Every other operator used is in the 8.5 table: Shape, Slice (constant ``axes``), Gather (constant indices),
  Concat, Reshape, Transpose, Expand, Add, Sub, Mul, Div, Min, Max, MatMul. Integers become floats by slicing a
  float arange constant (no Cast into float, see ``emit_portable``), so H, W, Ho, Wo <= ``MAX_SPATIAL``.

The decomposition, with ``G`` offset groups, ``Cg = C / G``, ``K = kh * kw``, ``P = Ho * Wo``:

1. Sample points ``y = (ho * sh - ph + i * dh) + dy``: the integer base first, then one rounding when the
   offset is added, as torchvision computes them; shaped [N, G, K, 2, Ho, Wo] with (x, y) on axis 3, so every
   element-wise op broadcasts over whole Ho x Wo planes (onnxruntime's broadcast loop runs per innermost run:
   with the coordinate pair innermost, as GridSample's grid has it, the same ops profiled about 20x slower at
   1x64x80x80), and one Transpose makes the grid.
2. Clipped to [-1, W] x [-1, H]; with GridSample's zero padding that is torchvision's rule exactly (a point at
   or beyond -1 / H reads only zero corners or corners of weight 0), and far-away points stay finite. Then
   normalised for ``align_corners=0`` (``p * 2 / size + (1 / size - 1)``, valid for a size of 1).
3. ``GridSample(x as [N*G, Cg, H, W], grid [N*G, K*Ho, Wo, 2])`` gives the columns [N*G, Cg, K*Ho, Wo]
   already in the weight's (channel, tap) order; the mask multiplies them.
4. One MatMul per convolution group, [groups, Co/groups, C/groups*K] x [N, groups, C/groups*K, P], then the
   bias. Only the small offset tensor is transposed; the columns and the output never are.

fp16: the normalised grid has float16's 11-bit mantissa, so on large maps sample positions are quantised
(about 0.04 px at W = 80); keep DeformConv's subgraph in float32 in fp16 engines, as for the plugin.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import numpy as np

from ..plugins.deform_conv_contract import (
    ONNX_DEFORM_CONV,
    PLUGIN_DOMAIN_TRT_PARSER,
    PLUGIN_OP_TYPE,
    DeformConvParams,
)

V = TypeVar("V")
# Largest H, W, Ho, Wo the portable lowering handles: the size of its float arange constant (32 KiB in fp32;
# below onnxconverter-common's fp16 clamp of 1e4; in float16 integers are exact up to 2048 only).
MAX_SPATIAL = 8192


class Emitter(Protocol[V]):
    def op(self, op_type: str, *inputs: V, domain: str = "", **attributes: Any) -> V: ...

    def const(self, value: np.ndarray) -> V: ...


def _i64(e: Emitter[V], *values: int) -> V:
    return e.const(np.array(values, dtype=np.int64))


def _shape_dims(e: Emitter[V], value: V, start: int, end: int) -> V:
    """Dimensions ``start:end`` of ``value``'s shape, int64 [end - start]."""
    return e.op("Slice", e.op("Shape", value), _i64(e, start), _i64(e, end), _i64(e, 0))


def emit_std(e: Emitter[V], x: V, weight: V, offset: V, mask: V, bias: V, params: DeformConvParams) -> V:
    """ONNX ``DeformConv`` in ONNX input order (X, W, offset, B, mask); mask omitted for DCNv1."""
    inputs = [x, weight, offset, bias] + ([mask] if params.use_mask else [])
    return e.op(ONNX_DEFORM_CONV, *inputs, **params.onnx_attributes())


def ones_mask(e: Emitter[V], offset: V, taps: int, params: DeformConvParams, dtype: np.dtype) -> V:
    """A ones mask [N, G * K, Ho, Wo] shaped like ``offset`` (batch and spatial size read in-graph)."""
    shape = e.op("Concat", _shape_dims(e, offset, 0, 1), _i64(e, params.offset_groups * taps),
                 _shape_dims(e, offset, 2, 4), axis=0)
    return e.op("Expand", e.const(np.ones((1, 1, 1, 1), dtype=dtype)), shape)


def emit_plugin(e: Emitter[V], x: V, weight: V, offset: V, mask: V, bias: V, params: DeformConvParams,
                kernel: tuple[int, int], dtype: np.dtype, domain: str = PLUGIN_DOMAIN_TRT_PARSER) -> V:
    """TensorRT ``ModulatedDeformConv2d`` in plugin input order (x, offset, mask, weight, bias)."""
    if not params.use_mask:
        mask = ones_mask(e, offset, kernel[0] * kernel[1], params, dtype)
    return e.op(PLUGIN_OP_TYPE, x, offset, mask, weight, bias, domain=domain, **params.plugin_attributes())


def emit_portable(e: Emitter[V], x: V, weight: V, offset: V, mask: V, bias: V, params: DeformConvParams,
                  weight_shape: tuple[int, int, int, int], dtype: np.dtype, opset: int) -> V:
    """Standard-op decomposition (see the module docstring); dynamic N, H, W."""
    co, cgw, kh, kw = weight_shape
    gw, g = params.groups, params.offset_groups
    c = cgw * gw
    if c % g:
        raise ValueError(f"deform_conv2d: in_channels={c} is not divisible by offset_groups={g}")
    cg, k = c // g, kh * kw
    (sh, sw), (ph, pw), (dh, dw) = params.stride, params.padding, params.dilation

    def fconst(v: float) -> V:
        return e.const(np.asarray(v, dtype=dtype))

    # Integers as floats without Cast(to=FLOAT): onnxconverter-common's fp16 conversion retypes every float
    # tensor but leaves a Cast's ``to`` alone, so a Cast into float breaks the fp16 graph (and CastLike is not
    # in TensorRT 8.5's table). Slicing a float arange constant gives 0..n-1 and n in the graph's float type.
    table = e.const(np.arange(MAX_SPATIAL + 1, dtype=dtype))
    zero = _i64(e, 0)

    def floats(start: V, end: V) -> V:
        return e.op("Slice", table, start, end, zero)

    h_in = floats(_shape_dims(e, x, 2, 3), e.op("Add", _shape_dims(e, x, 2, 3), _i64(e, 1)))  # [H]
    w_in = floats(_shape_dims(e, x, 3, 4), e.op("Add", _shape_dims(e, x, 3, 4), _i64(e, 1)))  # [W]
    n_ = _shape_dims(e, offset, 0, 1)
    hw_out = _shape_dims(e, offset, 2, 4)

    # 1. Sample points (N, G, K, 2, Ho, Wo) in pixels, (x, y) along axis 3, so that every element-wise op below
    #    broadcasts over whole Ho x Wo planes (a trailing axis of size 1 or 2 makes onnxruntime's broadcast loop
    #    run per element). The integer base (ho * sh - ph + i * dh, exact in floating point) first, then one
    #    rounding when the offset is added, as torchvision does.
    off = e.op("Reshape", offset, e.op("Concat", n_, _i64(e, g, k, 2), hw_out, axis=0))  # (N, G, K, [dy, dx], Ho, Wo)
    off = e.op("Gather", off, _i64(e, 1, 0), axis=3)  # (N, G, K, [dx, dy], Ho, Wo): GridSample's (x, y) order
    taps_x = np.tile(np.arange(kw) * dw, kh).reshape(k, 1, 1, 1).astype(dtype)  # (K, 1, 1, 1)
    taps_y = np.repeat(np.arange(kh) * dh, kw).reshape(k, 1, 1, 1).astype(dtype)  # (K, 1, 1, 1)
    rows = floats(zero, _shape_dims(e, offset, 2, 3))  # [0 .. Ho-1]
    cols_ = floats(zero, _shape_dims(e, offset, 3, 4))  # [0 .. Wo-1]
    plane = e.op("Concat", _i64(e, k, 1), hw_out, axis=0)  # [K, 1, Ho, Wo]
    base_x = e.op("Expand", e.op("Add", e.op("Reshape", e.op("Sub", e.op("Mul", cols_, fconst(sw)), fconst(pw)),
                                             _i64(e, 1, 1, 1, -1)), e.const(taps_x)), plane)  # (K, 1, Ho, Wo)
    base_y = e.op("Expand", e.op("Add", e.op("Reshape", e.op("Sub", e.op("Mul", rows, fconst(sh)), fconst(ph)),
                                             _i64(e, 1, 1, -1, 1)), e.const(taps_y)), plane)  # (K, 1, Ho, Wo)
    point = e.op("Add", off, e.op("Concat", base_x, base_y, axis=1))  # (N, G, K, 2, Ho, Wo)

    # 2. Clip to [-1, W] x [-1, H]: GridSample's zero padding then gives torchvision's rule exactly (a point at
    #    or beyond -1 / H has all four corners outside, or weight 0 on the one inside), and far-away points stay
    #    finite. Normalise for align_corners=0, g = p * 2 / size + (1 / size - 1), valid for a size of 1 too.
    size = e.op("Reshape", e.op("Concat", w_in, h_in, axis=0), _i64(e, 2, 1, 1))  # [W, H] as (2, 1, 1)
    one = fconst(1.0)
    point = e.op("Min", e.op("Max", point, fconst(-1.0)), size)
    grid = e.op("Add", e.op("Mul", point, e.op("Div", fconst(2.0), size)), e.op("Sub", e.op("Div", one, size), one))
    grid = e.op("Transpose", grid, perm=[0, 1, 2, 4, 5, 3])  # (N, G, K, Ho, Wo, 2)
    grid_shape = e.op("Concat", _i64(e, -1), _taps_by_hw(e, offset, k), _i64(e, 2), axis=0)
    grid = e.op("Reshape", grid, grid_shape)  # (N*G, K*Ho, Wo, 2)

    # 3. Bilinear sampling of every offset group's channels: columns (N*G, Cg, K*Ho, Wo), times the mask.
    xg = e.op("Reshape", x, e.op("Concat", _i64(e, -1, cg), _shape_dims(e, x, 2, 4), axis=0))  # (N*G, Cg, H, W)
    mode = "linear" if opset >= 20 else "bilinear"  # GridSample-20 renamed the mode
    cols = e.op("GridSample", xg, grid, mode=mode, padding_mode="zeros", align_corners=0)  # (N*G, Cg, K*Ho, Wo)
    if params.use_mask:
        m = e.op("Reshape", mask, e.op("Concat", _i64(e, -1, 1), _taps_by_hw(e, offset, k), axis=0))
        cols = e.op("Mul", cols, m)  # mask as (N*G, 1, K*Ho, Wo)

    # 4. One MatMul per convolution group: (gw, Co/gw, C/gw*K) x (N, gw, C/gw*K, P); the columns are already in
    #    the weight's (channel, tap) order, no transpose anywhere.
    cols = e.op("Reshape", cols, e.op("Concat", n_, _i64(e, gw, cgw * k, -1), axis=0))  # (N, gw, C/gw*K, P)
    wmat = e.op("Reshape", weight, _i64(e, gw, co // gw, cgw * k))  # (gw, Co/gw, C/gw*K)
    out = e.op("MatMul", wmat, cols)  # (N, gw, Co/gw, P)
    out = e.op("Reshape", out, e.op("Concat", n_, _i64(e, co), hw_out, axis=0))  # (N, Co, Ho, Wo)
    return e.op("Add", out, e.op("Reshape", bias, _i64(e, co, 1, 1)))


def _taps_by_hw(e: Emitter[V], offset: V, taps: int) -> V:
    """[K * Ho, Wo] of ``offset`` [N, ., Ho, Wo], int64."""
    return e.op("Concat", e.op("Mul", _shape_dims(e, offset, 2, 3), _i64(e, taps)), _shape_dims(e, offset, 3, 4),
                axis=0)
