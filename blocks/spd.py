"""SPD: space-to-depth downsampling, and SPD-Conv.

Sunkara and Luo, "No More Strided Convolutions or Pooling: A New CNN Building Block for Low-Resolution
Images and Small Objects", ECML PKDD 2022. https://arxiv.org/abs/2208.03641

``space_to_depth`` is the reference module, faithful to the widely pasted implementation: channels are
concatenated in the order (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
``SPDConv`` is ``space_to_depth`` followed by a YOLO-style convolution (conv + BatchNorm + SiLU).
"""

from __future__ import annotations

import torch
from torch import nn


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


class SpaceToDepthExport(nn.Module):
    """Export twin of ``space_to_depth`` (placeholder until the twin lands)."""


def to_export(module: nn.Module) -> nn.Module:
    raise NotImplementedError("space_to_depth twin")
