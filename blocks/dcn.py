"""Deformable convolution module: an offset (and mask) convolution feeding ``torchvision.ops.deform_conv2d``.

Dai et al., "Deformable Convolutional Networks", ICCV 2017. https://arxiv.org/abs/1703.06211
Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019. https://arxiv.org/abs/1811.11168

``DCN`` is what the seed's section 5 sketches (``self.offset = nn.Conv2d(c, 18, 3, padding=1)`` feeding
``torchvision.ops.DeformConv2d``), generalised: v1 (offsets only) and v2 (``modulated=True``: offsets and a
sigmoid mask from the same convolution), groups and offset (deformable) groups, stride, padding, dilation.

Offset channel layout is torchvision's: for deformable group ``g`` and kernel tap ``(i, j)``, channel
``2 * (g * kh * kw + i * kw + j)`` is dy and the next one dx. The mask channels follow the offsets.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class DCN(nn.Module):
    """Deformable convolution [N, c1, H, W] -> [N, c2, H_out, W_out].

    Attributes: ``offset`` (Conv2d producing ``(3 if modulated else 2) * deformable_groups * kh * kw`` channels,
    zero-initialised so training starts from a plain convolution) and ``dcn`` (``torchvision.ops.DeformConv2d``).
    """

    def __init__(self, c1: int, c2: int, k: int | tuple[int, int] = 3, s: int | tuple[int, int] = 1,
                 p: int | tuple[int, int] | None = None, d: int | tuple[int, int] = 1, g: int = 1,
                 deformable_groups: int = 1, bias: bool = True, modulated: bool = True):
        super().__init__()
        kh, kw = _pair(k)
        dh, dw = _pair(d)
        pad = (dh * (kh - 1) // 2, dw * (kw - 1) // 2) if p is None else _pair(p)
        if c1 % g or c2 % g:
            raise ValueError(f"DCN: c1={c1} and c2={c2} must be divisible by groups g={g}")
        if deformable_groups < 1 or c1 % deformable_groups:
            raise ValueError(f"DCN: c1={c1} must be divisible by deformable_groups={deformable_groups}")
        self.kernel_size = (kh, kw)
        self.deformable_groups = deformable_groups
        self.modulated = modulated
        per_tap = 3 if modulated else 2
        self.offset = nn.Conv2d(c1, per_tap * deformable_groups * kh * kw, (kh, kw), s, pad, (dh, dw), bias=True)
        self.dcn = DeformConv2d(c1, c2, (kh, kw), s, pad, (dh, dw), groups=g, bias=bias)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.offset(x)
        n_off = 2 * self.deformable_groups * self.kernel_size[0] * self.kernel_size[1]
        if self.modulated:
            offset, mask = out[:, :n_off], out[:, n_off:].sigmoid()
            return self.dcn(x, offset, mask)
        return self.dcn(x, out)


class DCNExport(nn.Module):
    """Export twin of ``DCN`` [N, c1, H, W] -> [N, c2, H_out, W_out]; the same function in eval mode.

    The offset convolution feeds ``torchvision.ops.deform_conv2d`` called functionally with the deformable
    weights as plain parameters: the graph then holds one ``torchvision::deform_conv2d`` op whose export the
    DeformConv symbolic chooses (``blocks_export.export.deform_conv``: ``std``, ``portable`` or ``plugin``).
    Offsets and mask are channel slices of the one offset convolution, as in ``DCN``; for v1 no mask is
    passed, so the ``plugin`` lowering builds its ones mask in-graph and ``std`` omits the optional input.
    Nothing depends on the input's size in Python, so batch, H and W stay dynamic.
    """

    def __init__(self, offset: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], deformable_groups: int, modulated: bool):
        super().__init__()
        self.offset = offset
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.n_offset = 2 * deformable_groups * weight.shape[2] * weight.shape[3]
        self.modulated = modulated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.offset(x)  # (N, (2 or 3) * G * kh * kw, Ho, Wo)
        offset = out[:, :self.n_offset]
        mask = out[:, self.n_offset:].sigmoid() if self.modulated else None
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)


def to_export(module: DCN) -> DCNExport:
    """``DCNExport`` sharing copies of ``module``'s parameters (``module`` is left untouched)."""
    if not isinstance(module, DCN):
        raise TypeError(f"dcn.to_export expects a DCN, got {type(module).__name__}")
    dcn = module.dcn
    offset = copy.deepcopy(module.offset)
    bias = None if dcn.bias is None else dcn.bias.detach().clone()
    twin = DCNExport(offset, dcn.weight.detach().clone(), bias, _pair(dcn.stride), _pair(dcn.padding),
                     _pair(dcn.dilation), module.deformable_groups, module.modulated)
    return twin.train(module.training)
