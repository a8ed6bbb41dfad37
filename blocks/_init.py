"""Randomisation of a module's parameters and buffers, so that parity comparisons prove something.

Freshly built blocks are full of degenerate values: zero-initialised last layers (GCNet), identity
BatchNorm statistics, zero offset convolutions (DCN), the constant 0.5 rates of ACmix. A comparison on such
a module cannot tell a correct rewrite from one that drops the block. ``randomize_`` replaces all of them.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Fill every parameter with N(0, scale^2 / fan_in)-ish values and every BatchNorm with random statistics.

    Deterministic for a given ``seed``. Returns ``module`` (modified in place).
    """
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        for p in m.parameters(recurse=False):
            fan_in = p[0].numel() if p.dim() > 1 else 1
            std = scale / max(fan_in, 1) ** 0.5 if p.dim() > 1 else scale
            p.copy_((torch.randn(p.shape, generator=g, dtype=torch.float64) * std).to(p.dtype))
        if (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
                and m.running_var is not None):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=torch.float64) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=torch.float64) * 1.5 + 0.25)
            if m.weight is not None:
                m.weight.copy_(1.0 + 0.5 * torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
        if isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.weight.add_(1.0)
    return module
