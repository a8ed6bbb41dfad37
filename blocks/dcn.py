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

from ..plugins.deform_conv_contract import (
    ONNX_DEFORM_CONV,
    ONNX_INPUT_ORDER,
    PLUGIN_INPUT_ORDER,
    PLUGIN_OP_TYPE,
)
from ._match import (
    NotConvertible,
    children,
    finish,
    own_params,
    pair,
    plain_bn,
    plain_conv,
)
from ._spec import BlockSpec, Example


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
        nn.init.zeros_(self.offset.bias)  # type: ignore[arg-type]  # bias=True above

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


# --- recognising the block in foreign modules (helpers: _match.py) ---------------------------------

_DG_ATTRS = ("deform_groups", "deformable_groups", "deform_group", "offset_groups", "dg")


def _offset_permutation(dg: int, taps: int) -> torch.Tensor:
    """Output-channel order turning an offset conv laid out [all dy | all dx] (per group) into torchvision's
    interleaved (dy, dx) per tap: new channel 2*(g*taps + t) + a reads old channel a*dg*taps + g*taps + t."""
    n = dg * taps
    idx = torch.arange(n)  # g * taps + t
    return torch.stack([idx, idx + n], dim=1).reshape(-1)  # (2 * n,)


def recognize(module: nn.Module) -> tuple[nn.Module, ...]:
    """Deformable convolutions built from an offset conv and a deformable convolution.

    Two layouts: (a) the module owns ``weight`` [c2, c1/g, kh, kw] (and ``bias``) and calls
    ``torchvision.ops.deform_conv2d`` itself (mmcv ``ModulatedDeformConv2dPack``/``DeformConv2dPack`` style,
    ``conv_offset``); stride/padding/dilation are read from its attributes, else from the offset conv;
    (b) a ``torchvision.ops.DeformConv2d`` child next to the offset conv (the seed's section 5).
    Either may end with a BatchNorm and an activation (the DCNv2 pasted into YOLO forks); the candidate is
    then ``nn.Sequential(DCN, BatchNorm2d, activation)``.

    The offset conv outputs ``2*dg*kh*kw`` (v1) or ``3*dg*kh*kw`` (v2: offsets then mask) channels. mmcv's
    ``o1, o2, mask = chunk(3); offset = cat(o1, o2)`` is exactly the first two thirds, and its kernel reads
    that tensor as torchvision does: per deformable group, channel ``2*(i*kw + j)`` is dy and the next dx,
    then one mask channel per tap (open-mmlab/mmcv ``mmcv/ops/csrc/common/cuda/
    modulated_deform_conv_cuda_kernel.cuh``, ``data_offset_h_ptr``/``data_offset_w_ptr``/``data_mask_hw_ptr``).
    So the mmcv names ``o1``/``o2`` do not mean "all dy, all dx", and the weights map unpermuted. A module
    that really lays out all dy before all dx (and interleaves them itself) is mapped by permuting the offset
    conv's output channels; which layout a module uses is decided by the rewriter's behaviour check.
    """
    kids = children(module)
    params = own_params(module)
    deforms = [m for m in kids.values() if isinstance(m, DeformConv2d)]
    convs = [m for m in kids.values() if type(m) is nn.Conv2d]
    rest = [m for m in kids.values() if not (type(m) is nn.Conv2d or isinstance(m, DeformConv2d))]
    norms = [m for m in rest if type(m) is nn.BatchNorm2d]
    acts = [m for m in rest if type(m) is not nn.BatchNorm2d]
    # YOLO-fork DCNv2 pastes put BatchNorm and an activation after the deformable conv in the same module.
    if len(convs) != 1 or (rest and (len(norms) != 1 or len(acts) > 1 or any(own_params(a) for a in acts))):
        return ()
    offset_conv = convs[0]
    if deforms:
        if len(deforms) != 1 or params:
            return ()
        dc = deforms[0]
        weight, bias = dc.weight, dc.bias
        s, p, d, g = dc.stride, dc.padding, dc.dilation, dc.groups
    else:
        if set(params) - {"weight", "bias"} or "weight" not in params or params["weight"].dim() != 4:
            return ()
        weight, bias = params["weight"], params.get("bias")
        s = pair(getattr(module, "stride", offset_conv.stride))
        p = pair(getattr(module, "padding", offset_conv.padding))  # type: ignore[arg-type]
        d = pair(getattr(module, "dilation", offset_conv.dilation))
        # deform_conv2d takes no groups argument: it infers them from the weight, and so do we.
        g = offset_conv.in_channels // params["weight"].shape[1] if params["weight"].shape[1] else 0
    c1 = offset_conv.in_channels
    c2, cin_g, kh, kw = weight.shape
    if g < 1 or cin_g * g != c1 or c2 % g:
        return ()
    taps = kh * kw
    hint = next((int(getattr(module, a)) for a in _DG_ATTRS if isinstance(getattr(module, a, None), int)), None)
    configs = [(per_tap, offset_conv.out_channels // (per_tap * taps)) for per_tap in (3, 2)
               if offset_conv.out_channels % (per_tap * taps) == 0]
    configs = [(pt, dg) for pt, dg in configs if dg >= 1 and c1 % dg == 0 and (hint is None or hint == dg)]
    if not configs:
        raise NotConvertible(
            f"offset conv has {offset_conv.out_channels} channels, not 2 or 3 x deformable_groups x {kh}x{kw}")
    if norms and norms[0].num_features != c2:
        return ()
    candidates = []
    for per_tap, dg in configs:
        for permuted in (False, True) if dg * taps > 1 else (False,):
            dcn = DCN(c1, int(c2), (kh, kw), s, p, d, g, dg, bias=bias is not None, modulated=per_tap == 3)
            off = plain_conv(offset_conv)
            if permuted:
                n_off = 2 * dg * taps
                order = torch.cat([_offset_permutation(dg, taps), torch.arange(n_off, offset_conv.out_channels)])
                with torch.no_grad():
                    off.weight.copy_(off.weight[order])
                    off.bias.copy_(off.bias[order])  # type: ignore[index, union-attr]  # _plain_conv sets a bias
            dcn.offset = off
            with torch.no_grad():
                dcn.dcn.weight.copy_(weight)
                if bias is not None:
                    dcn.dcn.bias.copy_(bias)
            # With the module's BatchNorm and activation after it, the rewriter converts it part by part.
            ref = nn.Sequential(dcn, plain_bn(norms[0]), *(copy.deepcopy(a) for a in acts)) if norms else dcn
            candidates.append(finish(ref, module))
    return tuple(candidates)


def _example() -> Example:
    return Example(DCN(8, 8, 3, modulated=True), ((1, 8, 12, 14), (2, 8, 9, 17), (1, 8, 15, 10), (3, 8, 20, 20)))


# The graph's deformable convolution in each lowering (``export/deform_conv.py``): ONNX DeformConv, TensorRT's
# plugin node, or the GridSample that samples for the portable lowering; their sampling coordinates need fp32, and
# in INT8 so do the offsets and the mask that feed them.
_SAMPLED = ((ONNX_DEFORM_CONV, ONNX_INPUT_ORDER), (PLUGIN_OP_TYPE, PLUGIN_INPUT_ORDER))
SPEC = BlockSpec("DCN", DCN, DCNExport, to_export, recognize, _example,
                 fp32_ops=frozenset({ONNX_DEFORM_CONV, PLUGIN_OP_TYPE, "GridSample"}),
                 int8_float_inputs=frozenset((op, order.index(name)) for op, order in _SAMPLED
                                             for name in ("offset", "mask")))
