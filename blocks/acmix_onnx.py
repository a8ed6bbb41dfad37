"""ONNX translation of ``blocks_export::acmix_window_attention`` (the ``ACmixExport`` attention) for the dynamo
exporter.

``torch.export`` sees the attention as one opaque op whose output has the conv path's size, so batch, H and W
stay plain symbols in the traced program; the blocking arithmetic (whole blocks, halo rows and columns) is
written here with ONNX ``Shape`` arithmetic, where it costs nothing at export time. The graph is the one
``window_attention`` traces to (channels-last Gathers of whole halo rows/columns, two MatMuls, a mask Add and a
Softmax), so the two exporters give the same run-time graph.

    torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...,
                      custom_translation_table=acmix_onnx.translation_table())

``acmix.SPEC.onnx_translations`` is this function; ``blocks.onnx_translations()`` holds its entry with the other
twins' ones. Without it the exporter decomposes the op (``blocks/_ops.py``), into a bigger graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

INT64_MAX = np.iinfo(np.int64).max


def translation_table(opset: int = 18) -> dict[Callable[..., Any], Callable[..., Any]]:
    """``custom_translation_table`` entry for ``torch.onnx.export(..., dynamo=True)`` at ``opset`` (>= 18)."""
    import onnxscript
    import torch
    from onnxscript import ir

    from . import acmix  # noqa: F401  (registers torch.ops.blocks_export)

    op = getattr(onnxscript.onnx_opset, f"opset{opset}")

    def i64(*values: int) -> Any:
        return op.Constant(value=ir.tensor(np.array(values, dtype=np.int64)))

    def i64s(value: int) -> Any:
        """A 0-D int64: the axis of CumSum and the bounds of Range must be scalars (a 1-D one fails checks and
        constant folding)."""
        return op.Constant(value=ir.tensor(np.array(value, dtype=np.int64)))

    def acmix_window_attention(qu: Any, k: Any, v: Any, mask: Any, head: int, kernel_att: int, stride: int,
                               block: int) -> Any:
        dtype = np.dtype(k.dtype.numpy())

        def fconst(value: float) -> Any:
            return op.Constant(value=ir.tensor(np.array(value, dtype=dtype)))

        s, B, hd = stride, block, head
        d = _channels(k) // hd
        p = (kernel_att - 1) // 2
        S, L = s * B, s * B + 2 * p
        shape_k = op.Shape(k)
        n_, hw = op.Slice(shape_k, i64(0), i64(1), i64(0)), op.Slice(shape_k, i64(2), i64(4), i64(0))
        h_, w_ = op.Slice(hw, i64(0), i64(1), i64(0)), op.Slice(hw, i64(1), i64(2), i64(0))
        hwo = op.Add(op.Div(op.Sub(hw, i64(1)), i64(s)), i64(1))  # [Ho, Wo] = ceil([H, W] / s)
        nb = op.Div(op.Add(hwo, i64(B - 1)), i64(B))  # [nh, nw]: whole blocks
        nh, nw = op.Slice(nb, i64(0), i64(1), i64(0)), op.Slice(nb, i64(1), i64(2), i64(0))

        def rows(blocks: Any, size: Any, offsets: range) -> Any:
            """[n, len(offsets)] input rows (or columns): block * S + offset, reflected at the edges as the
            reference's ``pad_att``; beyond the reflection (seen only through the -inf mask, or by queries that
            are dropped) any row inside the input will do: reflected once more and clamped at 0."""
            start = op.Mul(op.Range(i64s(0), op.Squeeze(blocks), i64s(1)), i64s(S))  # (n,)
            u = op.Add(op.Unsqueeze(start, i64(1)), i64(*offsets))  # (n, len(offsets))
            a, last2 = op.Max(u, op.Sub(i64(0), u)), op.Mul(op.Sub(size, i64(1)), i64(2))  # |u|, 2 (size - 1)
            return op.Max(op.Min(a, op.Sub(last2, a)), i64(0))

        def blocked(t: Any, c: int, taps_h: Any, taps_w: Any) -> Any:
            """[N, hd*c, H, W] -> [N, hd, nw, nh, th*tw, c]: the rows ``taps_h`` x columns ``taps_w`` of each
            block, channels last; every copy moves whole c-vectors (or whole rows of them)."""
            t = op.Reshape(t, op.Concat(n_, i64(hd, c), hw, axis=0))  # (N, hd, c, H, W)
            t = op.Transpose(t, perm=[0, 1, 3, 4, 2])  # (N, hd, H, W, c)
            t = op.Gather(t, taps_w, axis=3)  # (N, hd, H, nw, tw, c)
            t = op.Transpose(t, perm=[0, 1, 3, 2, 4, 5])  # (N, hd, nw, H, tw, c)
            t = op.Gather(t, taps_h, axis=3)  # (N, hd, nw, nh, th, tw, c)
            return op.Reshape(t, i64(0, 0, 0, 0, -1, c))

        # Queries: the strided pixels of each B x B output block; halos: L x L input pixels from block * S - p.
        q_offsets, halo_offsets = range(0, S, s), range(-p, L - p)
        q = blocked(qu, d + 2, rows(nh, h_, q_offsets), rows(nw, w_, q_offsets))  # (N, hd, nw, nh, B*B, d+2)

        # The reference's position(H, W) as two extra key channels: linspace(-1, 1) from a ramp, no Cast.
        ones = op.Expand(fconst(1.0), op.Concat(i64(1, 1), hw, axis=0))  # (1, 1, H, W)
        ramp_w = op.Sub(op.CumSum(ones, i64s(3)), fconst(1.0))
        ramp_h = op.Sub(op.CumSum(ones, i64s(2)), fconst(1.0))
        last_w = op.Slice(ramp_w, i64(-1), i64(INT64_MAX), i64(3))
        last_h = op.Slice(ramp_h, i64(-1), i64(INT64_MAX), i64(2))
        loc_w = op.Sub(op.Mul(ramp_w, op.Div(fconst(2.0), last_w)), fconst(1.0))
        loc_h = op.Sub(op.Mul(ramp_h, op.Div(fconst(2.0), last_h)), fconst(1.0))
        loc = op.Unsqueeze(op.Concat(loc_w, loc_h, axis=1), i64(1))  # (1, 1, 2, H, W)
        loc = op.Expand(loc, op.Concat(n_, i64(hd, 2), hw, axis=0))  # (N, hd, 2, H, W)
        kk = op.Reshape(k, op.Concat(n_, i64(hd, d), hw, axis=0))  # (N, hd, d, H, W)
        kk = op.Reshape(op.Concat(kk, loc, axis=2), op.Concat(n_, i64(hd * (d + 2)), hw, axis=0))

        taps_h, taps_w = rows(nh, h_, halo_offsets), rows(nw, w_, halo_offsets)
        kt = blocked(kk, d + 2, taps_h, taps_w)  # (N, hd, nw, nh, L*L, d+2)
        vt = blocked(v, d, taps_h, taps_w)  # (N, hd, nw, nh, L*L, d)
        logits = op.Add(op.MatMul(q, op.Transpose(kt, perm=[0, 1, 2, 3, 5, 4])), mask)  # (N, hd, nw, nh, B*B, L*L)
        att = op.Softmax(logits, axis=-1)
        o = op.MatMul(att, vt)  # (N, hd, nw, nh, B*B, d)
        o = op.Reshape(o, i64(0, 0, 0, 0, B, B, d))
        o = op.Transpose(o, perm=[0, 1, 3, 4, 2, 5, 6])  # (N, hd, nh, B, nw, B, d)
        o = op.Reshape(o, op.Concat(n_, i64(hd), op.Mul(nb, i64(B)), i64(d), axis=0))  # (N, hd, nh*B, nw*B, d)
        o = op.Transpose(o, perm=[0, 1, 4, 2, 3])  # (N, hd, d, nh*B, nw*B)
        o = op.Reshape(o, op.Concat(n_, i64(hd * d), op.Mul(nb, i64(B)), axis=0))  # (N, out, nh*B, nw*B)
        return op.Slice(o, i64(0, 0), hwo, i64(2, 3))  # (N, out, Ho, Wo)

    return {torch.ops.blocks_export.acmix_window_attention.default: acmix_window_attention}


def _channels(value: Any) -> int:
    dim = None if value.shape is None else value.shape[1]
    if not isinstance(dim, int):
        raise ValueError(f"acmix_window_attention export needs a static channel count, got shape {value.shape}")
    return dim
