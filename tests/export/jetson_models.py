"""Deformable convolutions written the way blog posts paste DCNv2, for the plugin precision tests. Importable as
``jetson_models`` (the tests put this folder on ``sys.path``), so pickled instances unpickle in-process.

``BlogDCNv2``: one convolution predicts ``3 * K`` channels; offset and mask are cut from its output by a Slice
(``out[:, :2K]``) or a Split (``torch.split``), the mask goes through a sigmoid, and the module owns the
deformable weights (the rewriter recognises it). ``InlineDCNNet`` does the same inside a network's own
``forward`` with a stem and a head, which no rewriter recognises: the exported graph keeps the user's
Slice/Split feeding the deformable convolution directly.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from blocks_export.blocks import randomize_

K = 9  # 3x3 taps


def _cut(out: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    if how == "slice":
        return out[:, :2 * K], out[:, 2 * K:]
    offset, mask = torch.split(out, [2 * K, K], dim=1)
    return offset, mask


class BlogDCNv2(nn.Module):
    """[N, c1, H, W] -> [N, c2, H, W], 3x3, padding 1."""

    def __init__(self, c1: int, c2: int, how: str = "slice") -> None:
        super().__init__()
        self.how = how
        self.weight = nn.Parameter(torch.randn(c2, c1, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(c2) * 0.1)
        self.conv_offset_mask = nn.Conv2d(c1, 3 * K, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = _cut(self.conv_offset_mask(x), self.how)
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, padding=(1, 1),
                                             mask=torch.sigmoid(mask))


class BlogDCNNet(nn.Module):
    """Conv -> BlogDCNv2 -> ReLU -> 1x1 head: [N, 3, H, W] -> [N, 4, H, W]."""

    def __init__(self, how: str = "slice") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.dcn = BlogDCNv2(8, 8, how)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.dcn(self.stem(x))))


class InlineDCNNet(nn.Module):
    """The DCNv2 written inside the network's forward: [N, 3, H, W] -> [N, 4, H, W]."""

    def __init__(self, how: str = "slice") -> None:
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.conv_offset_mask = nn.Conv2d(8, 3 * K, 3, 1, 1)
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(8) * 0.1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        offset, mask = _cut(self.conv_offset_mask(x), self.how)
        y = torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, padding=(1, 1), mask=torch.sigmoid(mask))
        return self.head(torch.relu(y))


def build(cls: type[nn.Module], how: str, seed: int = 0) -> nn.Module:
    """An eval-mode instance with seeded random weights (offsets of a few pixels, masks away from 0 and 1)."""
    torch.manual_seed(seed)
    model = randomize_(cls(how).eval(), seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels == 3 * K:
            with torch.no_grad():
                m.weight.normal_(0.0, 0.3)
                m.bias.uniform_(-1.0, 1.0)
    return model
