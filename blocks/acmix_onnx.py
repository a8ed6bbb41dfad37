"""ONNX translation of ``blocks_export::acmix_window_attention`` (the ``ACmixExport`` attention) for the dynamo
exporter.

``torch.export`` sees the attention as one opaque op whose output has the conv path's size, so batch, H and W
stay plain symbols in the traced program; the blocking arithmetic (whole blocks, halos) is written here with
ONNX ``Shape`` arithmetic, where it costs nothing at export time. The graph is the one ``window_attention``
traces to (Pad + Reshape + Slice/Concat, two MatMuls, a mask Add and a Softmax), so run-time speed is unchanged.

    torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...,
                      custom_translation_table=acmix_onnx.translation_table())

Without the table the exporter decomposes the op through ``window_attention`` (same numbers, slower export).
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

    def acmix_window_attention(qu: Any, k: Any, v: Any, mask: Any, head: int, kernel_att: int, stride: int,
                               block: int) -> Any:
        dtype = np.dtype(k.dtype.numpy())

        def fconst(value: float) -> Any:
            return op.Constant(value=ir.tensor(np.array(value, dtype=dtype)))

        s, B, hd = stride, block, head
        d = _channels(k) // hd
        p = (kernel_att - 1) // 2
        S, e = s * B, 2 * p
        L = S + e
        shape_k = op.Shape(k)
        n_, hw = op.Slice(shape_k, i64(0), i64(1), i64(0)), op.Slice(shape_k, i64(2), i64(4), i64(0))
        if s > 1:
            qu = op.Slice(qu, i64(0, 0), i64(INT64_MAX, INT64_MAX), i64(2, 3), i64(s, s))
        hwo = op.Slice(op.Shape(qu), i64(2), i64(4), i64(0))  # [Ho, Wo]
        nb = op.Div(op.Add(hwo, i64(B - 1)), i64(B))  # [nh, nw]: whole blocks
        r = op.Sub(op.Mul(nb, i64(B)), hwo)  # [rh, rw]: zero rows/columns up to whole blocks
        nh, nw = op.Slice(nb, i64(0), i64(1), i64(0)), op.Slice(nb, i64(1), i64(2), i64(0))
        rh, rw = op.Slice(r, i64(0), i64(1), i64(0)), op.Slice(r, i64(1), i64(2), i64(0))

        # Queries: (N, hd*(d+2), Ho, Wo) -> (N, hd, nh, nw, d+2, B*B).
        q = op.Pad(qu, op.Concat(i64(0, 0, 0, 0, 0, 0), rh, rw, axis=0))
        q = op.Reshape(q, op.Concat(n_, i64(hd, d + 2), nh, i64(B), nw, i64(B), axis=0))  # (N, hd, d+2, nh, B, nw, B)
        q = op.Transpose(q, perm=[0, 1, 3, 5, 2, 4, 6])  # (N, hd, nh, nw, d+2, B, B)
        q = op.Reshape(q, i64(0, 0, 0, 0, d + 2, B * B))

        # The reference's position(H, W) as two extra key channels: linspace(-1, 1) from a ramp, no Cast.
        ones = op.Expand(fconst(1.0), op.Concat(i64(1, 1), hw, axis=0))  # (1, 1, H, W)
        ramp_w = op.Sub(op.CumSum(ones, i64(3)), fconst(1.0))
        ramp_h = op.Sub(op.CumSum(ones, i64(2)), fconst(1.0))
        last_w = op.Slice(ramp_w, i64(-1), i64(INT64_MAX), i64(3))
        last_h = op.Slice(ramp_h, i64(-1), i64(INT64_MAX), i64(2))
        loc_w = op.Sub(op.Mul(ramp_w, op.Div(fconst(2.0), last_w)), fconst(1.0))
        loc_h = op.Sub(op.Mul(ramp_h, op.Div(fconst(2.0), last_h)), fconst(1.0))
        loc = op.Unsqueeze(op.Concat(loc_w, loc_h, axis=1), i64(1))  # (1, 1, 2, H, W)
        loc = op.Expand(loc, op.Concat(n_, i64(hd, 2), hw, axis=0))  # (N, hd, 2, H, W)
        kk = op.Reshape(k, op.Concat(n_, i64(hd, d), hw, axis=0))  # (N, hd, d, H, W)
        kk = op.Reshape(op.Concat(kk, loc, axis=2), op.Concat(n_, i64(hd * (d + 2)), hw, axis=0))

        def halo(t: Any, c: int) -> Any:
            """[N, hd*c, H, W] -> [N, hd, nh, nw, c, L*L], as ``acmix._halo``."""
            t = op.Pad(t, i64(0, 0, p, p, 0, 0, p, p), mode="reflect")  # (N, hd*c, H+2p, W+2p)
            extra = op.Add(op.Mul(r, i64(s)), i64(S - e))  # zeros up to (nh + 1) * S
            t = op.Pad(t, op.Concat(i64(0, 0, 0, 0, 0, 0), extra, axis=0))
            wp = op.Slice(op.Shape(t), i64(3), i64(4), i64(0))
            t = op.Reshape(t, op.Concat(i64(0, 0, -1, S), wp, axis=0))  # (N, hd*c, nh+1, S, Wp)
            t = op.Concat(op.Slice(t, i64(0), i64(-1), i64(2)),
                          op.Slice(t, i64(1, 0), i64(INT64_MAX, e), i64(2, 3)), axis=3)  # (N, hd*c, nh, L, Wp)
            t = op.Reshape(t, i64(0, 0, 0, 0, -1, S))  # (N, hd*c, nh, L, nw+1, S)
            t = op.Concat(op.Slice(t, i64(0), i64(-1), i64(4)),
                          op.Slice(t, i64(1, 0), i64(INT64_MAX, e), i64(4, 5)), axis=5)  # (N, hd*c, nh, L, nw, L)
            t = op.Reshape(t, op.Concat(n_, i64(hd, c), nh, i64(L), nw, i64(L), axis=0))  # (N, hd, c, nh, L, nw, L)
            t = op.Transpose(t, perm=[0, 1, 3, 5, 2, 4, 6])  # (N, hd, nh, nw, c, L, L)
            return op.Reshape(t, i64(0, 0, 0, 0, c, L * L))

        kt, vt = halo(kk, d + 2), halo(v, d)
        logits = op.Add(op.MatMul(op.Transpose(q, perm=[0, 1, 2, 3, 5, 4]), kt), mask)  # (N, hd, nh, nw, B*B, L*L)
        att = op.Softmax(logits, axis=-1)
        o = op.MatMul(vt, op.Transpose(att, perm=[0, 1, 2, 3, 5, 4]))  # (N, hd, nh, nw, d, B*B)
        o = op.Reshape(o, i64(0, 0, 0, 0, d, B, B))
        o = op.Transpose(o, perm=[0, 1, 4, 2, 5, 3, 6])  # (N, hd, d, nh, B, nw, B)
        o = op.Reshape(o, op.Concat(n_, i64(hd * d), op.Mul(nb, i64(B)), axis=0))  # (N, out, nh*B, nw*B)
        return op.Slice(o, i64(0, 0), hwo, i64(2, 3))  # (N, out, Ho, Wo)

    return {torch.ops.blocks_export.acmix_window_attention.default: acmix_window_attention}


def _channels(value: Any) -> int:
    dim = None if value.shape is None else value.shape[1]
    if not isinstance(dim, int):
        raise ValueError(f"acmix_window_attention export needs a static channel count, got shape {value.shape}")
    return dim
