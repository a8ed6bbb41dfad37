"""ACmix's window attention in the blocked form of its export twin (``ACmixExport`` in ``acmix.py``).

``window_attention`` is the eager function (what the TorchScript exporter traces), ``window_attention_taps`` the
same function one window tap at a time, and ``blocks_export::acmix_window_attention`` the op ``torch.export``
traces instead (fake size, decomposition for exporters given no translation; the translation is in
``acmix_onnx.py``). ``attention_block``, ``window_mask`` and ``EXTRA_PLANES`` fix the layout the twin's weights and
buffer are built for. Reads and writes nothing but tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from ._ops import decompose_when_untranslated

# The constant planes appended to the input before the attention projections: 1 (biases), loc_w, loc_h.
EXTRA_PLANES = 3


def window_attention(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, mask: torch.Tensor,
                     head: int, kernel_att: int, stride: int, block: int) -> torch.Tensor:
    """ACmix's window attention in the blocked form of ``ACmixExport`` [N, out, H / stride, W / stride].

    x [N, in, H, W]; wq, wk, wv [head, in + 3, d] act on ``[x, 1, loc_w, loc_h]`` (``ACmixExport``); mask
    [block^2, L^2] from ``window_mask``.
    """
    s, B = stride, block
    p = (kernel_att - 1) // 2
    h, w = x.shape[2], x.shape[3]
    ext = _extended(x)  # (N, in + 3, H, W)
    pixels = pixel_rows(ext)  # (N, 1, H*W, in + 3)
    k, v = torch.matmul(pixels, wk), torch.matmul(pixels, wv)  # (N, hd, H*W, d)
    xq = ext[:, :, ::s, ::s] if s > 1 else ext
    q = torch.matmul(pixel_rows(xq), wq) if s > 1 else torch.matmul(pixels, wq)  # (N, hd, Ho*Wo, d)
    ho, wo = xq.shape[2], xq.shape[3]
    # Block starts (input rows/columns 0, S, 2S, ...: ceil(H / S) = ceil(Ho / B) blocks; query rows 0, B, 2B, ...)
    # and the offsets of the queries and halo pixels in a block, as ramps over existing tensors: no tensor is
    # built from a Python size.
    start_h, start_w = _ramp(x[0, 0, :, 0])[::s * B], _ramp(x[0, 0, 0, :])[::s * B]
    qstart_h, qstart_w = _ramp(xq[0, 0, :, 0])[::B], _ramp(xq[0, 0, 0, :])[::B]
    q_offsets, halo_offsets = _ramp(mask[:B, 0]), _ramp(mask[0, :s * B + 2 * p]) - p
    q_index = _flat(_rows(qstart_h, ho, q_offsets), _rows(qstart_w, wo, q_offsets), wo)  # (nh*nw*B*B,)
    halo = _flat(_rows(start_h, h, halo_offsets), _rows(start_w, w, halo_offsets), w)  # (nh*nw*L*L,)
    qb = _split(q.index_select(2, q_index), 2, B * B)  # (N, hd, nh*nw, B*B, d)
    kb = _split(k.index_select(2, halo), 2, mask.shape[1])  # (N, hd, nh*nw, L*L, d)
    vb = _split(v.index_select(2, halo), 2, mask.shape[1])  # (N, hd, nh*nw, L*L, d)
    att = torch.softmax(torch.matmul(qb, kb.transpose(-1, -2)) + mask, dim=-1)  # (N, hd, nh*nw, B*B, L*L)
    o = torch.matmul(att, vb)  # (N, hd, nh*nw, B*B, d)
    nw = (wo + B - 1) // B  # blocks per row (OpenVINO 2026.4 misreads the length of a strided Slice)
    o = _split(_split(o.flatten(3), 2, nw), 4, B * o.shape[-1])  # (N, hd, nh, nw, B, B*d)
    o = _split(o.transpose(3, 4).flatten(2, 3).flatten(3), 3, o.shape[-1] // B)  # (N, hd, nh*B, nw*B, d)
    o = o.permute(0, 1, 4, 2, 3).flatten(1, 2)  # (N, out, nh*B, nw*B)
    return o[:, :, :ho, :wo]


def window_attention_taps(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, head: int,
                          kernel_att: int, stride: int) -> torch.Tensor:
    """``window_attention``'s function without blocks: one strided slice of the reflect-padded keys and values
    per window tap, as the reference's unfold visits them.

    For a trace with symbolic sizes that must not meet the blocking arithmetic (a plain ``torch.export`` of the
    twin, given no translation of its op): every size here is H, W or ceil(H / stride), so no guard on a block
    count is ever asked. About twice the time of the blocked form in onnxruntime (``kernel_att^2`` products and
    sums instead of two MatMuls); the same numbers to rounding.
    """
    s, p = stride, (kernel_att - 1) // 2
    d, channels = wv.shape[2], wv.shape[1]

    def conv_weight(w: torch.Tensor) -> torch.Tensor:  # (head, in + 3, d) -> (head * d, in + 3, 1, 1)
        return w.permute(0, 2, 1).reshape(head * d, channels, 1, 1)

    ext = _extended(x)
    xq = ext[:, :, ::s, ::s] if s > 1 else ext
    q = nn.functional.conv2d(xq, conv_weight(wq))  # (N, head*d, Ho, Wo)
    pad = (p, p, p, p)
    k = nn.functional.pad(nn.functional.conv2d(ext, conv_weight(wk)), pad, mode="reflect")
    v = nn.functional.pad(nn.functional.conv2d(ext, conv_weight(wv)), pad, mode="reflect")
    ho, wo = q.shape[2], q.shape[3]

    def tap(t: torch.Tensor, a: int, c: int) -> torch.Tensor:  # (N, head, d, Ho, Wo) at window offset (a, c)
        window = t[:, :, a:a + s * (ho - 1) + 1:s, c:c + s * (wo - 1) + 1:s]
        return window.unflatten(1, (head, d))

    qh = q.unflatten(1, (head, d))
    taps = [(a, c) for a in range(kernel_att) for c in range(kernel_att)]
    att = torch.softmax(torch.stack([(qh * tap(k, a, c)).sum(2) for a, c in taps], dim=2), dim=2)
    out = sum(att[:, :, i:i + 1] * tap(v, a, c) for i, (a, c) in enumerate(taps))
    return out.flatten(1, 2)  # type: ignore[union-attr]


def _extended(x: torch.Tensor) -> torch.Tensor:
    """[x, 1, loc_w, loc_h] (N, in + 3, H, W): the input of the attention projections."""
    return torch.cat([x, torch.ones_like(x[:, :1]), _coordinates(x)], dim=1)


def pixel_rows(t: torch.Tensor) -> torch.Tensor:
    """(N, c, H, W) -> (N, 1, H*W, c): one row per pixel, for a MatMul with per-head weights [head, c, c']."""
    return t.permute(0, 2, 3, 1).flatten(1, 2).unsqueeze(1)


def channels_first(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, head, H*W, d) -> (N, head*d, H, W), H and W read from ``like``."""
    return t.transpose(-1, -2).flatten(1, 2).reshape(like.shape[0], -1, like.shape[2], like.shape[3])


def _flat(rows: torch.Tensor, cols: torch.Tensor, width: int | torch.Tensor) -> torch.Tensor:
    """Flat pixel indices ``row * width + col`` of every block's rows x columns, blocks row-major:
    rows [nh, th], cols [nw, tw] -> (nh * nw * th * tw,)."""
    return (rows[:, None, :, None] * width + cols[None, :, None, :]).flatten()


def _ramp(t: torch.Tensor) -> torch.Tensor:
    """0, 1, ..., len(t) - 1 (int64) for a 1-D ``t``: a cumulative sum of ones, sized by ``t`` in the graph."""
    return torch.ones_like(t, dtype=torch.long).cumsum(0) - 1


def _rows(start: torch.Tensor, size: int, offsets: torch.Tensor) -> torch.Tensor:
    """[blocks, len(offsets)] input rows (or columns) ``start + offset``, reflected at the edges as the
    reference's ``pad_att``. Beyond the reflection (rows seen only through the -inf mask, or by queries that are
    dropped) any row inside the input will do: reflected once more and clamped at 0."""
    u = start[:, None] + offsets[None, :]
    a = torch.maximum(u, -u)  # |u|
    return torch.clamp(torch.minimum(a, 2 * (size - 1) - a), min=0)


@torch.library.custom_op("blocks_export::acmix_window_attention", mutates_args=())
def _window_attention_op(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, mask: torch.Tensor,
                         head: int, kernel_att: int, stride: int, block: int) -> torch.Tensor:
    return window_attention(x, wq, wk, wv, mask, head, kernel_att, stride, block)


@_window_attention_op.register_fake
def _window_attention_fake(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, mask: torch.Tensor,
                           head: int, kernel_att: int, stride: int, block: int) -> torch.Tensor:
    # The size of dep_conv's output (kernel 3, padding 1): the same expression, so adding the two paths needs no
    # guard. For H divisible by the stride (the reference's own condition) it is the strided query's size too.
    h, w = x.shape[2], x.shape[3]
    return x.new_empty((x.shape[0], head * wv.shape[2], (h - 1) // stride + 1, (w - 1) // stride + 1))


def _window_attention_decomposition(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                                    mask: torch.Tensor, head: int, kernel_att: int, stride: int,
                                    block: int) -> torch.Tensor:
    """The op's decomposition for exporters given no translation of it (a plain ``torch.onnx.export`` of the
    twin; the pipeline translates it with ``acmix_onnx``, into a smaller graph): ``window_attention_taps``, whose
    sizes are all H, W or ceil(H / stride), so a re-trace on symbolic sizes asks no guard on a block count."""
    return window_attention_taps(x, wq, wk, wv, head, kernel_att, stride)


decompose_when_untranslated(torch.ops.blocks_export.acmix_window_attention.default, _window_attention_decomposition,
                            _window_attention_fake)


def _split(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Split axis ``dim`` into (-1, size) with a Reshape whose other sizes are read from ``t``.

    Unlike ``unflatten``, the sizes stay in-graph for both ONNX exporters (the TorchScript tracer records
    ``t.shape`` reads; ``unflatten`` would bake the export-time sizes in).
    """
    shape = list(t.shape)
    return t.reshape(shape[:dim] + [-1, size] + shape[dim + 1:])


def attention_block(kernel_att: int, stride: int) -> int:
    """Output block edge ``B`` of the blocked window attention: the one that minimises ``L^2 (1 + 9 / B^2)``,
    ``L = stride * B + kernel_att - 1``.

    Per output pixel, ``L^2`` is the logits row (MatMuls, mask Add, Softmax: the reference's window is
    ``kernel_att^2`` of it) and ``L^2 / B^2`` the copies of its keys and values in the halos; the weight 9
    is their measured cost ratio in onnxruntime (2 threads, ACmix(64, 64) at 80x80: B = 4 ran 1.3x faster than
    B = 8). kernel_att 7: B = 4 (stride 1), 3 (stride 2); kernel_att 3: B = 3.
    """
    if kernel_att == 1:
        return 1
    e = kernel_att - 1
    return min(range(1, kernel_att + 2), key=lambda b: (stride * b + e) ** 2 * (b * b + 9) / (b * b))


def window_mask(block: int, stride: int, kernel: int) -> torch.Tensor:
    """Additive mask [block^2, L^2]: 0 where a halo pixel lies in the query's kernel x kernel window, else -inf.

    Query ``(i, j)`` of a block sees halo pixels ``(stride*i + a, stride*j + c)``, ``0 <= a, c < kernel``:
    the pixels the reference's strided unfold visits. Depends on the configuration only, never on H or W.
    """
    L = stride * block + kernel - 1
    rel = torch.arange(L)[None, :] - stride * torch.arange(block)[:, None]  # (block, L)
    inside = (rel >= 0) & (rel < kernel)
    inside = inside[:, None, :, None] & inside[None, :, None, :]  # (block, block, L, L)
    mask = torch.zeros(inside.shape).masked_fill(~inside, float("-inf"))
    return mask.reshape(block * block, L * L)


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``position(H, W)`` for every batch element [N, 2, H, W], from the input's own (symbolic)
    size.

    ``loc = ramp * (2 / (n - 1)) - 1`` with ``ramp`` = 0 .. n-1 from a cumulative sum of ones: the values of
    ``linspace(-1, 1, n)`` (to rounding). Used only for kernel_att > 1, where n > 1. The ones keep the batch
    axis: OpenVINO 2026.4 reads a TorchScript graph's ``x[:1]`` of a dynamic batch as the whole batch.
    """
    one = torch.ones_like(x[:, :1])  # (N, 1, H, W)
    ramp_w = torch.cumsum(one, dim=3) - 1.0
    ramp_h = torch.cumsum(one, dim=2) - 1.0
    loc_w = ramp_w * (2.0 / ramp_w[:, :, :, -1:]) - 1.0
    loc_h = ramp_h * (2.0 / ramp_h[:, :, -1:, :]) - 1.0
    return torch.cat([loc_w, loc_h], dim=1)
