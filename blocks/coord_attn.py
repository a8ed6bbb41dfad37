"""Coordinate Attention.

Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021.
https://arxiv.org/abs/2103.02907

``CA`` is the reference module, faithful to the widely pasted implementation (same constructor
arguments, attribute names, ``state_dict`` keys and numerics). ``CoordAtt`` is an alias.
"""

from __future__ import annotations

import torch
from torch import nn


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
    """Export twin of ``CA`` (placeholder until the twin lands)."""


def to_export(module: CA) -> nn.Module:
    raise NotImplementedError("CA twin")
