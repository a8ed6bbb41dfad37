"""ACmix: convolution and self-attention sharing one set of 1x1 projections.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022.
https://arxiv.org/abs/2111.14556

``ACmix`` is the reference module, faithful to the widely pasted implementation: same constructor
arguments, attribute names, ``state_dict`` keys and numerics. Two quirks of that code are kept on purpose:

* ``reset_parameters`` assigns ``init_rate_0(self.dep_conv.bias)`` back to ``dep_conv.bias``; the helper
  returns ``None``, so ``dep_conv`` ends up with **no bias** and its ``state_dict`` has no ``dep_conv.bias``.
* ``dep_conv`` always uses ``padding=1``, whatever ``kernel_conv`` is.

Where the original code crashes (its shapes stop lining up), this module raises ``ValueError`` instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import acmix_onnx
from ._match import (
    NotConvertible,
    children,
    finish,
    own_params,
)
from ._spec import BlockSpec, Example
from .acmix_attention import (
    EXTRA_PLANES,
    attention_block,
    channels_first,
    pixel_rows,
    window_attention,
    window_mask,
)


def init_rate_half(tensor: torch.Tensor | None) -> None:
    if tensor is not None:
        tensor.data.fill_(0.5)


def init_rate_0(tensor: torch.Tensor | None) -> None:
    # Returns None, like the original helper; see the module docstring.
    if tensor is not None:
        tensor.data.fill_(0.0)


def position(h: int, w: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Normalised (x, y) coordinates of an h x w grid [1, 2, h, w], as the original ``position``.

    The original takes ``is_cuda`` and calls ``.cuda()``; here the device and dtype follow the input.
    """
    loc_w = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype).unsqueeze(0).repeat(h, 1)
    loc_h = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype).unsqueeze(1).repeat(1, w)
    return torch.cat([loc_w.unsqueeze(0), loc_h.unsqueeze(0)], 0).unsqueeze(0)


def stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    return x[:, :, ::stride, ::stride]


def check_acmix_config(out_planes: int, kernel_att: int, head: int, kernel_conv: int, stride: int,
                       dilation: int) -> None:
    """Raise ``ValueError`` for configurations the original implementation cannot run."""
    if head < 1 or out_planes % head != 0:
        raise ValueError(f"ACmix: out_planes={out_planes} must be a positive multiple of head={head}")
    if kernel_att < 1 or kernel_att % 2 == 0:
        raise ValueError(f"ACmix: kernel_att={kernel_att} must be odd (the window unfold pads symmetrically)")
    if kernel_conv != 3:
        raise ValueError(
            f"ACmix: kernel_conv={kernel_conv} is not supported: the original dep_conv uses padding=1, "
            "which only keeps the feature size for kernel_conv=3")
    if dilation != 1:
        raise ValueError(
            f"ACmix: dilation={dilation} is not supported: the original pads for a dilated window but "
            "unfolds without dilation, so its shapes do not line up")
    if stride < 1:
        raise ValueError(f"ACmix: stride={stride} must be >= 1")


def check_acmix_input(h: int, w: int, kernel_att: int, dilation: int, stride: int) -> None:
    pad = (dilation * (kernel_att - 1) + 1) // 2
    if h <= pad or w <= pad:
        raise ValueError(
            f"ACmix: input {h}x{w} is too small for kernel_att={kernel_att}: reflection padding of {pad} "
            f"needs H and W > {pad}")
    if stride > 1 and (h % stride or w % stride):
        raise ValueError(
            f"ACmix: input {h}x{w} is not divisible by stride={stride}; the original implementation "
            "cannot run it (its attention and convolution paths produce different sizes)")


class ACmix(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
        super().__init__()
        check_acmix_config(out_planes, kernel_att, head, kernel_conv, stride, dilation)
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.rate1 = torch.nn.Parameter(torch.Tensor(1))
        self.rate2 = torch.nn.Parameter(torch.Tensor(1))
        self.head_dim = self.out_planes // self.head

        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv_p = nn.Conv2d(2, self.head_dim, kernel_size=1)

        self.padding_att = (self.dilation * (self.kernel_att - 1) + 1) // 2
        self.pad_att = torch.nn.ReflectionPad2d(self.padding_att)
        self.unfold = nn.Unfold(kernel_size=self.kernel_att, padding=0, stride=self.stride)
        self.softmax = torch.nn.Softmax(dim=1)

        self.fc = nn.Conv2d(3 * self.head, self.kernel_conv * self.kernel_conv, kernel_size=1, bias=False)
        self.dep_conv = nn.Conv2d(self.kernel_conv * self.kernel_conv * self.head_dim, out_planes,
                                  kernel_size=self.kernel_conv, bias=True, groups=self.head_dim, padding=1,
                                  stride=stride)

        self.reset_parameters()

    def reset_parameters(self):
        init_rate_half(self.rate1)
        init_rate_half(self.rate2)
        kernel = torch.zeros(self.kernel_conv * self.kernel_conv, self.kernel_conv, self.kernel_conv)
        for i in range(self.kernel_conv * self.kernel_conv):
            kernel[i, i // self.kernel_conv, i % self.kernel_conv] = 1.
        kernel = kernel.squeeze(0).repeat(self.out_planes, 1, 1, 1)
        self.dep_conv.weight = nn.Parameter(data=kernel, requires_grad=True)
        self.dep_conv.bias = init_rate_0(self.dep_conv.bias)

    def forward(self, x):
        check_acmix_input(x.shape[-2], x.shape[-1], self.kernel_att, self.dilation, self.stride)
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        scaling = float(self.head_dim) ** -0.5
        b, c, h, w = q.shape
        h_out, w_out = h // self.stride, w // self.stride

        # positional encoding
        pe = self.conv_p(position(h, w, x.device, x.dtype))

        q_att = q.view(b * self.head, self.head_dim, h, w) * scaling
        k_att = k.view(b * self.head, self.head_dim, h, w)
        v_att = v.view(b * self.head, self.head_dim, h, w)

        if self.stride > 1:
            q_att = stride(q_att, self.stride)
            q_pe = stride(pe, self.stride)
        else:
            q_pe = pe

        unfold_k = self.unfold(self.pad_att(k_att)).view(b * self.head, self.head_dim,
                                                         self.kernel_att * self.kernel_att, h_out,
                                                         w_out)  # (b*head, head_dim, k_att^2, h_out, w_out)
        unfold_rpe = self.unfold(self.pad_att(pe)).view(1, self.head_dim, self.kernel_att * self.kernel_att, h_out,
                                                        w_out)  # (1, head_dim, k_att^2, h_out, w_out)

        att = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_rpe)).sum(
            1)  # (b*head, k_att^2, h_out, w_out)
        att = self.softmax(att)

        out_att = self.unfold(self.pad_att(v_att)).view(b * self.head, self.head_dim, self.kernel_att * self.kernel_att,
                                                        h_out, w_out)
        out_att = (att.unsqueeze(1) * out_att).sum(2).view(b, self.out_planes, h_out, w_out)

        # convolution path, sharing q, k, v
        f_all = self.fc(torch.cat(
            [q.view(b, self.head, self.head_dim, h * w), k.view(b, self.head, self.head_dim, h * w),
             v.view(b, self.head, self.head_dim, h * w)], 1))
        f_conv = f_all.permute(0, 2, 1, 3).reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])

        out_conv = self.dep_conv(f_conv)
        return self.rate1 * out_att + self.rate2 * out_conv


class ACmixExport(nn.Module):
    """Export twin of ``ACmix``: the same function in eval mode, for any batch/H/W, in export-friendly ops.

    input [N, in_planes, H, W] -> output [N, out_planes, H / stride, W / stride]. Build it with ``to_export``.

    Rewrites of the reference (each exact; tests compare both in float64):

    * **Conv path: one 1x1 conv.** ``f = fc(cat(q, k, v))`` permuted to channel ``e * 9 + m`` is affine in ``x``:
      the 1x1 conv ``f`` of ``x`` with weights ``sum_{s,g} fc[m, s*head+g] W_s[g*d+e]`` (and the same sum of
      biases). ``dep_conv`` zero-pads ``f`` *after* the bias is added in both graphs, so borders stay exact;
      ``rate2`` folds into its weights.
    * **Position term, folded into the key.** The reference's logit for query ``i`` and window tap ``n`` is
      ``q_i . (k_n + pe_i - pe_n)`` with ``pe = W_p loc + b_p``. ``q_i . (pe_i - b_p)`` is the same for all
      taps, and softmax is shift-invariant, so what is left is ``q_i . k'_n`` with ``k' = k - W_p loc``: the key
      projection reads ``loc`` too. ``loc`` is ``linspace(-1, 1)`` along W and H, built in-graph from a ramp
      (cumsum of ones, scaled by 2 / (n - 1)); ``k'`` is computed per pixel and gathered with the halo indices,
      so reflected neighbours at the borders get the reflected coordinate, as in the reference (reflect padding
      acts per pixel, so it commutes with the per-pixel ``W_p``).
    * **Attention projections: three batched MatMuls, channels last.** The input gets three constant planes,
      ``[x, 1, loc_w, loc_h]`` (N, in + 3, H, W), and per head ``wq``, ``wk``, ``wv`` (in + 3, d) give the
      scaled query, ``k'`` and ``rate1 * v`` with their biases (the ``1`` plane):
      ``[N, 1, H*W, in + 3] @ [head, in + 3, d]`` lands directly in the attention's layout [N, head, H*W, d],
      without a channel Split, bias Add, position Concat or channels-last Transpose per tensor. At stride > 1
      only the strided pixels are projected to queries.
    * **Window attention as blocked dense attention.** Output pixels are tiled in ``B x B`` blocks
      (``attention_block``); each block attends to its ``L x L`` halo (``L = stride * B + kernel_att - 1``)
      of the reflect-padded keys, and an additive constant mask (0 inside each query's ``kernel_att^2``
      window, ``-inf`` outside) makes the softmax over the halo equal to the softmax over the window. Each
      block's queries and each block's halo of keys and values are cut by one Gather of whole channel vectors
      with flat pixel indices (row * W + column) computed from H and W in the graph; the halo indices carry the
      reference's reflection padding, and where H or W is not a whole number of blocks, the indices past the
      reflection are clamped into the input (those halo pixels are masked, those queries dropped at the end).
      The halos hold only finite numbers, so ``exp(-inf) = 0`` removes masked ones exactly.

    Why this form: the window attention becomes two batched MatMuls (``Q K^T`` and ``att V``), one pointwise
    mask Add and one Softmax over the last axis. No ``(N*head, d, kernel_att^2, H, W)`` unfold is
    materialised: the largest tensor is the logits, ``L^2 / kernel_att^2`` times the reference's attention
    map (2x at kernel_att 7, B = 4), and the halos are ``L^2 / B^2`` (6x) the size of ``k`` and ``v``. Every
    copy moves contiguous runs of at least one channel vector; the unfold-style lowering (a Gather of single
    elements along W) is what makes the stock export slow. onnxruntime folds the transposed operands into
    ``FusedMatMul`` (``MatmulTransposeFusion``, onnxruntime/core/optimizer/matmul_transpose_fusion.cc);
    TensorRT takes them as MatMul operand flags (``IMatrixMultiplyLayer`` with ``MatrixOperation::kTRANSPOSE``)
    and the rest are Gather, pointwise ops, Softmax and Conv; the masked form is the blocked local attention
    of HaloNet (Vaswani et al. 2021, https://arxiv.org/abs/2103.12731). Measured slower in onnxruntime
    (``benchmarks/README.md`` has the figures): ``kernel_att^2`` shifted slices with Mul/ReduceSum per tap;
    halos cut channels-first with Pad + Slice/Concat + 7-D Transposes; one 1x1 conv for all projections
    followed by a channel Split and per-tensor Transposes (the previous form); 8 x 8 or non-square blocks.

    Export: under ``torch.export`` the attention is one op, ``blocks_export::acmix_window_attention``, whose
    output has the conv path's size, so batch, H and W stay plain symbols (no blocking arithmetic reaches
    torch's symbolic shapes: a dynamic export takes seconds). Its ONNX graph comes from
    ``acmix_onnx.translation_table()`` (``SPEC.onnx_translations``)::

        torch.onnx.export(twin, (x,), dynamo=True, dynamic_shapes=({0: Dim("batch"), 2: Dim("height"),
                          3: Dim("width")},), custom_translation_table=acmix_onnx.translation_table())

    (a batch-1 16x16 example keeps all three dynamic). Without the table the exporter decomposes the op into
    ``window_attention_taps`` (``acmix_attention``), the same attention without window blocking, so a trace on
    symbolic sizes asks no guard on a block count (a bigger graph). The TorchScript exporter traces
    ``window_attention`` itself. Input checks run in eager mode only.
    """

    window_mask: torch.Tensor

    def __init__(self, in_planes: int, out_planes: int, kernel_att: int = 7, head: int = 4, stride: int = 1) -> None:
        super().__init__()
        check_acmix_config(out_planes, kernel_att, head, 3, stride, 1)
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.head_dim = out_planes // head
        self.kernel_att = kernel_att
        self.stride = stride
        self.padding_att = (kernel_att - 1) // 2
        self.block = attention_block(kernel_att, stride)
        d, e = self.head_dim, in_planes + EXTRA_PLANES
        self.wq = nn.Parameter(torch.zeros(head, e, d))  # per head, from [x, 1, loc_w, loc_h]: scaling * q
        self.wk = nn.Parameter(torch.zeros(head, e, d))  # k - W_p loc
        self.wv = nn.Parameter(torch.zeros(head, e, d))  # rate1 * v
        self.f = nn.Conv2d(in_planes, 9 * d, kernel_size=1)
        self.dep_conv = nn.Conv2d(9 * d, out_planes, kernel_size=3, padding=1, stride=stride, groups=d, bias=False)
        self.register_buffer("window_mask", window_mask(self.block, stride, kernel_att), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            check_acmix_input(x.shape[-2], x.shape[-1], self.kernel_att, 1, self.stride)
        s = self.stride
        out_conv = self.dep_conv(self.f(x))  # (N, out, Ho, Wo)
        if self.kernel_att == 1:  # one-tap window: softmax is 1, attention returns rate1 * v
            xs = x[:, :, ::s, ::s] if s > 1 else x
            v = torch.matmul(pixel_rows(torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)),
                             self.wv[:, :self.in_planes + 1])  # (N, head, Ho*Wo, d)
            return channels_first(v, xs) + out_conv
        if torch.compiler.is_compiling():
            # torch.export: one opaque op whose output size is the conv path's, so the traced sizes stay plain
            # symbols; its ONNX graph comes from ``acmix_onnx`` (``SPEC.onnx_translations``), or from its
            # decomposition where no translation is given; the TorchScript exporter traces the else.
            att = torch.ops.blocks_export.acmix_window_attention(x, self.wq, self.wk, self.wv, self.window_mask,
                                                                 self.head, self.kernel_att, s, self.block)
        else:
            att = window_attention(x, self.wq, self.wk, self.wv, self.window_mask, self.head, self.kernel_att, s,
                                   self.block)
        return att + out_conv


@torch.no_grad()
def to_export(module: ACmix) -> ACmixExport:
    """Fold the reference's weights into an ``ACmixExport`` (in float64, then cast to the module's dtype).

    ``wq``/``wk``/``wv`` act on ``[x, 1, loc_w, loc_h]``: per head ``scaling * q_g``, ``k_g - W_p loc`` and
    ``rate1 * v_g``, each with its bias on the ``1`` plane. ``f`` is the conv path's input (channel ``e * 9 + m``, the reference's
    permute + reshape order). ``dep_conv`` keeps the reference's kernel times ``rate2``; it has no bias (see the
    module docstring).
    """
    if not isinstance(module, ACmix):
        raise TypeError(f"to_export: expected ACmix, got {type(module).__name__}")
    m = module
    dtype = m.conv1.weight.dtype
    twin = ACmixExport(m.in_planes, m.out_planes, m.kernel_att, m.head, m.stride).to(dtype)
    head, d, c_in = m.head, m.head_dim, m.in_planes

    def weight_bias(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
        assert conv.bias is not None  # conv1..3 are built with bias=True
        return conv.weight.double().flatten(1), conv.bias.double()  # (out, in), (out,)

    (wq0, bq0), (wk, bk), (wv, bv) = weight_bias(m.conv1), weight_bias(m.conv2), weight_bias(m.conv3)
    scaling = float(d) ** -0.5
    wq, bq = (scaling * wq0).view(head, d, -1), (scaling * bq0).view(head, d)  # (head, d, in), (head, d)
    wp = m.conv_p.weight.double().flatten(1)  # (d, 2): columns act on loc_w, loc_h

    def per_head(weight: torch.Tensor, bias: torch.Tensor, loc: torch.Tensor | None = None) -> torch.Tensor:
        """(out, in) weights, (out,) biases, (out, 2) loc weights -> (head, in + 3, d) on [x, 1, loc_w, loc_h]."""
        loc = torch.zeros(weight.shape[0], 2, dtype=weight.dtype) if loc is None else loc
        return torch.cat([weight, bias[:, None], loc], dim=1).view(head, d, c_in + EXTRA_PLANES).transpose(1, 2)

    rate1, rate2 = m.rate1.double(), m.rate2.double()
    twin.wq.copy_(per_head(wq.flatten(0, 1), bq.flatten()))
    twin.wk.copy_(per_head(wk, bk, -wp.repeat(head, 1)))  # k - W_p loc, W_p shared by the heads
    twin.wv.copy_(per_head(rate1 * wv, rate1 * bv))
    fc = m.fc.weight.double().view(9, 3, head)  # (k_conv^2, [q, k, v], head)
    w_src = torch.stack([wq0, wk, wv]).view(3, head, d, -1)  # (3, head, d, in)
    b_src = torch.stack([bq0, bk, bv]).view(3, head, d)
    twin.f.weight.copy_(torch.einsum("msg,sgei->emi", fc, w_src).flatten(0, 1).view_as(twin.f.weight))
    assert twin.f.bias is not None
    twin.f.bias.copy_(torch.einsum("msg,sge->em", fc, b_src).flatten())
    twin.dep_conv.weight.copy_(rate2 * m.dep_conv.weight.double())
    return twin.train(module.training)


# --- recognising the block in foreign modules (helpers: _match.py) ---------------------------------

_ACMIX_CHILDREN = {"conv1", "conv2", "conv3", "conv_p", "pad_att", "unfold", "softmax", "fc", "dep_conv"}


def recognize(module: nn.Module) -> tuple[nn.Module, ...]:
    """ACmix copies: the seed's attribute layout under any class name; configuration read from the layers."""
    kids = children(module)
    if set(kids) != _ACMIX_CHILDREN or set(own_params(module)) != {"rate1", "rate2"}:
        return ()
    conv1, fc, unfold, dep = kids["conv1"], kids["fc"], kids["unfold"], kids["dep_conv"]
    if not (isinstance(conv1, nn.Conv2d) and isinstance(fc, nn.Conv2d) and isinstance(unfold, nn.Unfold)
            and isinstance(dep, nn.Conv2d)):
        return ()
    if fc.in_channels % 3:
        return ()
    head = fc.in_channels // 3
    kernel_conv = math.isqrt(fc.out_channels)
    if kernel_conv * kernel_conv != fc.out_channels:
        return ()
    kernel_att = unfold.kernel_size if isinstance(unfold.kernel_size, int) else unfold.kernel_size[0]
    stride = unfold.stride if isinstance(unfold.stride, int) else unfold.stride[0]
    dilation = int(getattr(module, "dilation", 1))
    if dep.bias is not None and bool(dep.bias.detach().ne(0).any()):
        raise NotConvertible("dep_conv has a non-zero bias; the ACmix reference has none")
    try:
        ref = ACmix(conv1.in_channels, conv1.out_channels, kernel_att, head, kernel_conv, stride, dilation)
    except ValueError as e:
        raise NotConvertible(str(e)) from e
    state = {k: v for k, v in module.state_dict().items() if k != "dep_conv.bias"}
    try:
        ref.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise NotConvertible(f"weights do not fit ACmix{(conv1.in_channels, conv1.out_channels)}: {e}") from e
    return (finish(ref, module),)


def _example() -> Example:
    return Example(ACmix(16, 16), ((1, 16, 12, 12), (2, 16, 10, 14), (1, 16, 9, 7), (2, 16, 16, 20)))


SPEC = BlockSpec("ACmix", ACmix, ACmixExport, to_export, recognize, _example, fp32_ops=frozenset({"Softmax"}),
                 onnx_translations=acmix_onnx.translation_table)
