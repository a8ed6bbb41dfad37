"""Models the benchmark builds the way users write them (not the package's own block classes).

``mobilenet_v2_ca``: torchvision's MobileNetV2 with Coordinate Attention after the depthwise convolution of every
inverted residual block, where the paper puts it (Hou et al., CVPR 2021, Fig. 3), using the paper repository's
pasted module form (pooling modules with ``None`` sizes, ``conv2``/``conv3``, a hard-swish called ``relu``).
"""

from __future__ import annotations

import torch
from torch import nn


class CoordAtt(nn.Module):
    """Coordinate Attention as pasted from the paper's MobileNetV2 code (``nn.Hardswish`` for its h_swish)."""

    def __init__(self, inp: int, oup: int, groups: int = 32) -> None:
        super().__init__()
        mip = max(8, inp // groups)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.relu = nn.Hardswish()
        self.conv2 = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv3 = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.relu(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        return identity * self.conv3(x_w).sigmoid() * self.conv2(x_h).sigmoid()


def mobilenet_v2_ca(seed: int = 0) -> nn.Module:
    """MobileNetV2 (1000 classes, no weights) with ``CoordAtt`` after each depthwise conv; BatchNorm randomised."""
    import torchvision
    from torchvision.ops.misc import Conv2dNormActivation

    from blocks_export.blocks import randomize_

    model = torchvision.models.mobilenet_v2(weights=None)
    for block in model.features:
        if type(block).__name__ != "InvertedResidual":
            continue
        layers = list(block.conv)
        dw = next(i for i, m in enumerate(layers) if isinstance(m, Conv2dNormActivation) and m[0].groups > 1)
        c = layers[dw][0].out_channels
        layers.insert(dw + 1, CoordAtt(c, c))
        block.conv = nn.Sequential(*layers)
    randomize_(model, seed=seed)
    return model.eval()
