"""SPD: space-to-depth downsampling, and SPD-Conv.

Sunkara and Luo, "No More Strided Convolutions or Pooling: A New CNN Building Block for Low-Resolution
Images and Small Objects", ECML PKDD 2022. https://arxiv.org/abs/2208.03641

``space_to_depth`` is the reference module, faithful to the widely pasted implementation: channels are
concatenated in the order (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
``SPDConv`` is ``space_to_depth`` followed by a YOLO-style convolution (conv + BatchNorm + SiLU).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .coord_attn import fold_batchnorm_weights


def check_spd_input(h: int, w: int) -> None:
    if h % 2 or w % 2:
        raise ValueError(
            f"space_to_depth: input {h}x{w} must have even H and W (the original concatenation of the four "
            "phases fails on odd sizes); pad or resize the input")


class space_to_depth(nn.Module):  # noqa: N801 (seed name)
    """[N, C, H, W] -> [N, 4C, H/2, W/2]."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        check_spd_input(x.shape[-2], x.shape[-1])
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


SpaceToDepth = space_to_depth


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'Same' padding for an odd kernel, as YOLOv5's ``autopad``."""
    if d > 1:
        k = d * (k - 1) + 1
    return k // 2 if p is None else p


class Conv(nn.Module):
    """YOLO-style convolution: Conv2d (no bias) + BatchNorm2d + SiLU, attributes ``conv``, ``bn``, ``act``."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SPDConv(nn.Module):
    """space_to_depth then ``Conv(4 * c1, c2, k, s)``: [N, c1, H, W] -> [N, c2, H/2/s, W/2/s]."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, dimension: int = 1):
        super().__init__()
        self.spd = space_to_depth(dimension)
        self.conv = Conv(4 * c1, c2, k, s)

    def forward(self, x):
        return self.conv(self.spd(x))


def check_spd_rank(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"space_to_depth export twin: input of shape {tuple(x.shape)} must be 4-D [N, C, H, W]")


class SpaceToDepthExport(nn.Module):
    """Export twin of ``space_to_depth``: [N, C, H, W] -> [N, 4C, H/2, W/2], channels in the seed's order.

    Output channel ``(2 * s + r) * C + c`` holds ``x[:, c, 2i + r, 2j + s]`` (phase-major, the column phase
    first). The twin keeps the four strided slices and the concatenation: exported, they are 4 ``Slice`` +
    ``Concat`` with no shape arithmetic, and in onnxruntime 1.32 (CPU, 2 threads, 1x64x80x80) they ran about
    0.2 ms against about 1.2 ms for every Reshape -> 6-D Transpose -> Reshape form (``pixel_unshuffle`` plus
    a channel permutation, or one transpose straight to the seed's order). ONNX ``SpaceToDepth`` (0.1 ms)
    has no PyTorch op that the exporters lower to it. Before a convolution use ``SPDConvExport``, which
    removes the rearrangement entirely.

    Odd H or W raise the same ``ValueError`` as the reference (the seed's concatenation fails there). An
    exported graph checks nothing itself; onnxruntime 1.32 rejects odd sizes at run time (its optimiser turns
    this Slice/Concat pattern into a ``SpaceToDepth`` node, which requires even H and W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spd_rank(x)
        check_spd_input(x.shape[-2], x.shape[-1])
        # (N, C, H/2, W/2) each: phases (0, 0), (1, 0), (0, 1), (1, 1) as (row, col)
        return torch.cat([x[:, :, ::2, ::2], x[:, :, 1::2, ::2], x[:, :, ::2, 1::2], x[:, :, 1::2, 1::2]], 1)


def space_to_depth_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """Weights [C2, 4C, k, k] of a conv after ``space_to_depth`` -> [C2, C, 2k, 2k] of one conv on the input.

    A ``k x k`` conv (stride ``st``, zero padding ``p``) on ``y = space_to_depth(x)`` reads, for tap (u, v),
    channel ``(2 * s + r) * C + c`` of ``y`` at row ``st * i + u - p``, i.e. ``x[c]`` at row
    ``2 * st * i + (2u + r) - 2p`` (and likewise for columns). So it equals a ``2k x 2k`` conv on ``x`` with
    stride ``2 * st``, padding ``2p`` and weight ``W'[o, c, 2u + r, 2v + s] = W[o, (2s + r) * C + c, u, v]``:
    the same products, each tap read once (a permutation of the weights, no arithmetic). Padded cells are
    zero in both. Output size: floor((H + 4p - 2k) / (2 st)) + 1 = floor((H/2 + 2p - k) / st) + 1.
    """
    c2, c4, kh, kw = weight.shape
    if c4 % 4:
        raise ValueError(f"space_to_depth_conv_weight: input channels {c4} must be a multiple of 4")
    w = weight.reshape(c2, 2, 2, c4 // 4, kh, kw)  # (C2, s, r, C, u, v)
    w = w.permute(0, 3, 4, 2, 5, 1)  # (C2, C, u, r, v, s)
    return w.reshape(c2, c4 // 4, 2 * kh, 2 * kw)  # (C2, C, 2u + r, 2v + s)


class SPDConvExport(nn.Module):
    """Export twin of ``SPDConv``: [N, c1, H, W] -> [N, c2, H/2/s, W/2/s], one convolution and its activation.

    ``space_to_depth`` followed by the ``k x k`` conv (stride ``s``) is exactly one ``2k x 2k`` conv with
    stride ``2s`` on the input (``space_to_depth_conv_weight``), and the BatchNorm is folded into it
    (``fold_batchnorm_weights``). No data is rearranged at all, in any runtime. YOLOv5 v6.0 replaced its
    Focus layer (the seed's slicing + conv) by the equivalent ``Conv(k=6, s=2, p=2)`` for exportability
    (https://github.com/ultralytics/yolov5/issues/4825); its maintainers report that which form is faster on
    a GPU depends on the card (https://github.com/ultralytics/yolov5/issues/6257). In onnxruntime 1.32 (CPU)
    the one convolution ran as fast as the stock export. Odd H or W raise the reference's ``ValueError`` in
    PyTorch; an exported graph cannot check them and runs there (the reference has no output to match).
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spd_rank(x)
        check_spd_input(x.shape[-2], x.shape[-1])
        return self.act(self.conv(x))


def spd_conv_to_export(module: SPDConv) -> SPDConvExport:
    """The eval-mode twin of ``SPDConv`` (copies of its weights; ``module`` is left unchanged)."""
    if not isinstance(module, SPDConv):
        raise TypeError(f"spd.spd_conv_to_export: expected SPDConv, got {type(module).__name__}")
    conv = module.conv.conv
    if (conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str)):
        raise ValueError(
            f"spd.spd_conv_to_export: only groups=1, dilation=1 and numeric zero padding are supported; "
            f"got {conv}")
    weight, bias = fold_batchnorm_weights(conv, module.conv.bn)
    ph, pw = conv.padding
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    big = nn.Conv2d(conv.in_channels // 4, conv.out_channels, (2 * kh, 2 * kw), (2 * sh, 2 * sw),
                    (2 * ph, 2 * pw), bias=False)
    big.weight = nn.Parameter(space_to_depth_conv_weight(weight))
    big.bias = nn.Parameter(bias)
    return SPDConvExport(big, copy.deepcopy(module.conv.act)).eval()


def to_export(module: nn.Module) -> nn.Module:
    """The eval-mode twin of a ``space_to_depth`` or ``SPDConv`` module."""
    if isinstance(module, SPDConv):
        return spd_conv_to_export(module)
    if isinstance(module, space_to_depth):
        return SpaceToDepthExport().eval()
    raise TypeError(f"spd.to_export: expected space_to_depth or SPDConv, got {type(module).__name__}")
