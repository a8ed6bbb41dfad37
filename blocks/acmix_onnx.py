"""ONNX translation of ``blocks_export::acmix_window_attention`` (the ``ACmixExport`` attention) for the dynamo
exporter.

``torch.export`` sees the attention as one opaque op whose output has the conv path's size, so batch, H and W
stay plain symbols in the traced program; the blocking arithmetic (whole blocks, halo rows and columns) is
written here with ONNX ``Shape`` arithmetic, where it costs nothing at export time. The graph is the one
``window_attention`` traces to (per-head projection MatMuls on ``[x, 1, loc_w, loc_h]``, one Gather of whole
channel vectors per tensor with flat block/halo indices, two MatMuls, a mask Add and a Softmax), so the two
exporters give the same run-time graph.

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

    def acmix_window_attention(x: Any, wq: Any, wk: Any, wv: Any, mask: Any, head: int, kernel_att: int,
                               stride: int, block: int) -> Any:
        dtype = np.dtype(x.dtype.numpy())

        def fconst(value: float) -> Any:
            return op.Constant(value=ir.tensor(np.array(value, dtype=dtype)))

        s, B = stride, block
        d = _dim(wv, 2)  # head_dim
        p = (kernel_att - 1) // 2
        S, L = s * B, s * B + 2 * p
        shape_x = op.Shape(x)
        n_, hw = op.Slice(shape_x, i64(0), i64(1), i64(0)), op.Slice(shape_x, i64(2), i64(4), i64(0))
        h_, w_ = op.Slice(hw, i64(0), i64(1), i64(0)), op.Slice(hw, i64(1), i64(2), i64(0))
        hwo = op.Add(op.Div(op.Sub(hw, i64(1)), i64(s)), i64(1))  # [Ho, Wo] = ceil([H, W] / s)
        ho_, wo_ = op.Slice(hwo, i64(0), i64(1), i64(0)), op.Slice(hwo, i64(1), i64(2), i64(0))
        nb = op.Div(op.Add(hwo, i64(B - 1)), i64(B))  # [nh, nw]: whole blocks
        nh, nw = op.Slice(nb, i64(0), i64(1), i64(0)), op.Slice(nb, i64(1), i64(2), i64(0))

        def rows(blocks: Any, step: int, size: Any, offsets: range) -> Any:
            """[n, len(offsets)] rows (or columns): block * step + offset, reflected at the edges as the
            reference's ``pad_att``; beyond the reflection (seen only through the -inf mask, or by queries that
            are dropped) any row inside the input will do: reflected once more and clamped at 0."""
            start = op.Mul(op.Range(i64s(0), op.Squeeze(blocks), i64s(1)), i64s(step))  # (n,)
            u = op.Add(op.Unsqueeze(start, i64(1)), i64(*offsets))  # (n, len(offsets))
            a, last2 = op.Max(u, op.Sub(i64(0), u)), op.Mul(op.Sub(size, i64(1)), i64(2))  # |u|, 2 (size - 1)
            return op.Max(op.Min(a, op.Sub(last2, a)), i64(0))

        def flat(r: Any, col: Any, width: Any) -> Any:
            """Flat pixel indices row * width + col of every block, blocks row-major: (nh*nw, th*tw)."""
            grid = op.Add(op.Mul(op.Unsqueeze(r, i64(1, 3)), width), op.Unsqueeze(col, i64(0, 2)))  # (nh,nw,th,tw)
            return op.Reshape(grid, op.Concat(op.Mul(nh, nw), i64(-1), axis=0))

        def pixels(t: Any, channels: int) -> Any:
            """(N, c, H, W) -> (N, 1, H*W, c): one Transpose before the Reshape, so that onnxruntime does not fold it
            into the MatMuls (a transposed operand broadcast over heads is transposed once per head there)."""
            return op.Reshape(op.Transpose(t, perm=[0, 2, 3, 1]), op.Concat(n_, i64(1, -1, channels), axis=0))

        # [x, 1, loc_w, loc_h]: loc is the reference's position(H, W), linspace(-1, 1) from a ramp, no Cast.
        ones = op.Expand(fconst(1.0), op.Concat(i64(1, 1), hw, axis=0))  # (1, 1, H, W)
        ramp_w = op.Sub(op.CumSum(ones, i64s(3)), fconst(1.0))
        ramp_h = op.Sub(op.CumSum(ones, i64s(2)), fconst(1.0))
        last_w = op.Slice(ramp_w, i64(-1), i64(INT64_MAX), i64(3))
        last_h = op.Slice(ramp_h, i64(-1), i64(INT64_MAX), i64(2))
        loc_w = op.Sub(op.Mul(ramp_w, op.Div(fconst(2.0), last_w)), fconst(1.0))
        loc_h = op.Sub(op.Mul(ramp_h, op.Div(fconst(2.0), last_h)), fconst(1.0))
        planes = op.Expand(op.Concat(ones, loc_w, loc_h, axis=1), op.Concat(n_, i64(3), hw, axis=0))
        e = _dim(wk, 1)  # in + 3
        ext = op.Concat(x, planes, axis=1)  # (N, in + 3, H, W)
        px = pixels(ext, e)
        k, v = op.MatMul(px, wk), op.MatMul(px, wv)  # (N, hd, H*W, d): k - W_p loc, rate1 * v
        if s > 1:
            q = op.MatMul(pixels(op.Slice(ext, i64(0, 0), i64(INT64_MAX, INT64_MAX), i64(2, 3), i64(s, s)), e), wq)
        else:
            q = op.MatMul(px, wq)  # (N, hd, Ho*Wo, d)

        q_index = flat(rows(nh, B, ho_, range(B)), rows(nw, B, wo_, range(B)), wo_)  # (nh*nw, B*B)
        halo = flat(rows(nh, S, h_, range(-p, L - p)), rows(nw, S, w_, range(-p, L - p)), w_)  # (nh*nw, L*L)
        qb = op.Gather(q, q_index, axis=2)  # (N, hd, nh*nw, B*B, d)
        kb = op.Gather(k, halo, axis=2)  # (N, hd, nh*nw, L*L, d)
        vb = op.Gather(v, halo, axis=2)  # (N, hd, nh*nw, L*L, d)
        logits = op.Add(op.MatMul(qb, op.Transpose(kb, perm=[0, 1, 2, 4, 3])), mask)  # (N, hd, nh*nw, B*B, L*L)
        o = op.MatMul(op.Softmax(logits, axis=-1), vb)  # (N, hd, nh*nw, B*B, d)
        # Back to channels first in two Transposes that move whole runs: rows of B channel vectors, then the
        # channel axis alone (one 7-D Transpose of single elements runs several times slower in onnxruntime).
        o = op.Reshape(o, op.Concat(n_, i64(head), nb, i64(B, B * d), axis=0))  # (N, hd, nh, nw, B, B*d)
        o = op.Transpose(o, perm=[0, 1, 2, 4, 3, 5])  # (N, hd, nh, B, nw, B*d)
        o = op.Reshape(o, op.Concat(n_, i64(head), op.Mul(nb, i64(B)), i64(d), axis=0))  # (N, hd, nh*B, nw*B, d)
        o = op.Transpose(o, perm=[0, 1, 4, 2, 3])  # (N, hd, d, nh*B, nw*B)
        o = op.Reshape(o, op.Concat(n_, i64(head * d), op.Mul(nb, i64(B)), axis=0))  # (N, out, nh*B, nw*B)
        return op.Slice(o, i64(0, 0), hwo, i64(2, 3))  # (N, out, Ho, Wo)

    return {torch.ops.blocks_export.acmix_window_attention.default: acmix_window_attention}


def _dim(value: Any, axis: int) -> int:
    dim = None if value.shape is None else value.shape[axis]
    if not isinstance(dim, int):
        raise ValueError(f"acmix_window_attention export needs static weight shapes, got shape {value.shape}")
    return dim
