"""Coordinate Attention.

Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021.
https://arxiv.org/abs/2103.02907

``CA`` is the reference module, faithful to the widely pasted implementation (same constructor
arguments, attribute names, ``state_dict`` keys and numerics). ``CoordAtt`` is an alias.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ._fold import fold_batchnorm, fold_batchnorm_weights  # noqa: F401 (re-exported)
from ._match import (
    CONTAINERS,
    NotConvertible,
    behaves_like,
    children,
    finish,
    is_pointwise,
    name_hint,
    own_params,
    plain_bn,
    plain_conv,
    size2,
)
from ._spec import BlockSpec, Example


def check_ca_channels(inp: int, oup: int) -> None:
    # The output is x [N, inp, H, W] times attention maps with oup channels: they broadcast only when
    # oup == inp, oup == 1 or inp == 1; otherwise the original fails in its forward pass.
    if oup != inp and oup != 1 and inp != 1:
        raise ValueError(
            f"CA: oup={oup} must equal inp={inp} (or one of them be 1): the attention maps multiply x")


class h_sigmoid(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class h_swish(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.sigmoid = h_sigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.sigmoid(x)


class CA(nn.Module):
    """Coordinate attention [N, inp, H, W] -> [N, oup, H, W]; ``oup`` must equal ``inp`` (identity product)."""

    def __init__(self, inp, oup, reduction=32):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"CA: reduction={reduction} must be >= 1")
        check_ca_channels(inp, oup)

        mip = max(8, inp // reduction)

        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = h_swish()

        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        identity = x

        n, c, h, w = x.size()
        pool_h = nn.AdaptiveAvgPool2d((h, 1))
        pool_w = nn.AdaptiveAvgPool2d((1, w))
        x_h = pool_h(x)
        x_w = pool_w(x).permute(0, 1, 3, 2)

        y = torch.cat([x_h, x_w], dim=2)
        y = self.conv1(y)
        y = self.bn1(y)
        y = self.act(y)

        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)

        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w).sigmoid()

        out = identity * a_w * a_h

        return out


CoordAtt = CA


class CoordAttExport(nn.Module):
    """Export twin of ``CA``: [N, inp, H, W] -> [N, C_out, H, W], the same function in eval mode at any shape.

    Why each rewrite is exact:

    - ``AdaptiveAvgPool2d((h, 1))`` on an ``h``-row input averages each row over W: it is ``x.mean(3)``;
      ``AdaptiveAvgPool2d((1, w))`` is ``x.mean(2)``. The means need no size, so ONNX gets ``ReduceMean``
      over one axis instead of an ``AveragePool`` whose kernel is baked in at the export shape.
    - The reference concatenates the two pooled maps along H, applies conv1 + BN + h_swish and splits them
      again. A 1x1 convolution, eval BatchNorm and h_swish act on each spatial position separately, so
      applying them to each branch on its own gives the same values: no concat, split or permute.
    - BatchNorm is folded into conv1 (``fold_batchnorm``: eval BN is a per-channel affine map).
    - ``h_swish(x) = x * relu6(x + 3) / 6`` is ``nn.Hardswish``; they differ only in rounding (the tests
      compare them in float64). It exports as one ONNX ``HardSwish`` node (opset 14), which TensorRT 8.5's
      parser supports (onnx-tensorrt ``docs/operators.md``, 8.5 branch: HardSwish FP32/FP16/INT8).

    The product ``x * a_w * a_h`` broadcasts exactly as the reference's does (``C_out`` is ``inp`` when
    ``oup == inp`` or ``oup == 1``, and ``oup`` when ``inp == 1``).
    """

    def __init__(self, conv1: nn.Conv2d, conv_h: nn.Conv2d, conv_w: nn.Conv2d):
        super().__init__()
        check_ca_channels(conv1.in_channels, conv_h.out_channels)
        self.conv1 = conv1  # BatchNorm already folded in
        self.act = nn.Hardswish()
        self.conv_h = conv_h
        self.conv_w = conv_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_h = x.mean(3, keepdim=True)  # (N, inp, H, 1)
        x_w = x.mean(2, keepdim=True)  # (N, inp, 1, W)
        a_h = self.conv_h(self.act(self.conv1(x_h))).sigmoid()  # (N, oup, H, 1)
        a_w = self.conv_w(self.act(self.conv1(x_w))).sigmoid()  # (N, oup, 1, W)
        return x * a_w * a_h


def to_export(module: CA) -> CoordAttExport:
    """The eval-mode twin of ``module`` (copies of its weights; ``module`` is left unchanged)."""
    if not isinstance(module, CA):
        raise TypeError(f"coord_attn.to_export: expected CA, got {type(module).__name__}")
    twin = CoordAttExport(fold_batchnorm(module.conv1, module.bn1), copy.deepcopy(module.conv_h),
                          copy.deepcopy(module.conv_w))
    return twin.eval()


# --- recognising the block in foreign modules (helpers: _match.py) ---------------------------------


def recognize(module: nn.Module) -> tuple[nn.Module, ...]:
    """CA layouts: a squeeze 1x1 conv (C -> mip), BatchNorm(mip), a hard-swish, two 1x1 convs (mip -> C).

    Covers the seed (conv1/bn1/act/conv_h/conv_w), the paper's MobileNetV2 form (pool_h/pool_w modules with
    ``(None, 1)``/``(1, None)`` sizes, conv2 -> a_h, conv3 -> a_w, the activation called ``relu``), and any
    renaming; the activation is identified by what it computes (``h_swish``, ``nn.Hardswish``, ...).
    Candidates: the name-hinted (or registration-order) H/W assignment first, then the swapped one.
    """
    if isinstance(module, CONTAINERS) or own_params(module):
        return ()
    kids = children(module)
    pools = {n: m for n, m in kids.items() if isinstance(m, nn.AdaptiveAvgPool2d)}
    convs = {n: m for n, m in kids.items() if isinstance(m, nn.Conv2d)}
    bns = {n: m for n, m in kids.items() if isinstance(m, nn.BatchNorm2d)}
    rest = {n: m for n, m in kids.items() if n not in pools and n not in convs and n not in bns}
    if len(convs) != 3 or len(bns) != 1 or len(pools) not in (0, 2) or len(rest) > 3:
        return ()
    # Some pastes hold the gate as a module (``self.sigmoid = nn.Sigmoid()``): part of the block, not its act.
    rest = {n: m for n, m in rest.items() if not behaves_like(m, torch.sigmoid)}
    if len(rest) > 1:
        return ()
    if pools and {size2(p.output_size) for p in pools.values()} != {(None, 1), (1, None)}:
        return ()
    if not all(is_pointwise(c) for c in convs.values()):
        return ()
    bn = next(iter(bns.values()))
    mip = bn.num_features
    names = list(convs)
    squeeze_name = next((n for n in names if convs[n].out_channels == mip), None)
    if squeeze_name is None:
        return ()
    inp = convs[squeeze_name].in_channels
    excite = [n for n in names if n != squeeze_name]
    if any(convs[n].in_channels != mip or convs[n].out_channels != inp for n in excite):
        return ()
    if rest:
        act_name, act = next(iter(rest.items()))
        if not behaves_like(act, F.hardswish):
            raise NotConvertible(
                f"activation {act_name} ({type(act).__name__}) is not hard-swish; the CA reference uses h_swish")
    first, second = excite
    if name_hint(second, "h") and name_hint(first, "w"):
        first, second = second, first
    reduction = next((r for r in range(1, inp + 1) if max(8, inp // r) == mip), 32)
    candidates = []
    for h_name, w_name in ((first, second), (second, first)):
        ref = CA(inp, inp, reduction)
        # The reference forward does not depend on mip, so the copied layers also cover mip != max(8, inp // r).
        ref.conv1 = plain_conv(convs[squeeze_name])
        ref.bn1 = plain_bn(bn)
        ref.conv_h = plain_conv(convs[h_name])
        ref.conv_w = plain_conv(convs[w_name])
        candidates.append(finish(ref, module))
    return tuple(candidates)


def _example() -> Example:
    return Example(CA(16, 16), ((1, 16, 12, 10), (2, 16, 9, 14), (1, 16, 7, 5), (3, 16, 16, 24)))


SPEC = BlockSpec("CA", CA, CoordAttExport, to_export, recognize, _example, int8_float_ops=frozenset({"Sigmoid"}))
