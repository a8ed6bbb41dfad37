"""BatchNorm folding: a convolution followed by an eval-mode BatchNorm is one convolution."""

from __future__ import annotations

import copy

import torch
from torch import nn


def fold_batchnorm_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [C_out, C_in/g, kh, kw] and bias [C_out] of ``conv`` followed by the eval-mode ``bn``.

    Exact (up to rounding): in eval mode BatchNorm is a per-channel affine map
    ``y = (z - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``, and ``z = W x + b`` is linear in
    ``x``, so ``y = (s * W) x + (s * (b - mean) + beta)``. The products are formed in float64, then cast to
    ``conv``'s dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"fold_batchnorm: {bn} has no running statistics (track_running_stats=False)")
    w = conv.weight.detach().to(torch.float64)
    mean = bn.running_mean.detach().to(torch.float64)
    b = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    s = gamma / torch.sqrt(var + bn.eps)
    dtype = conv.weight.dtype
    return (w * s.view(-1, 1, 1, 1)).to(dtype), (s * (b - mean) + beta).to(dtype)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Copy of ``conv`` computing ``bn(conv(x))`` in eval mode (``fold_batchnorm_weights``)."""
    weight, bias = fold_batchnorm_weights(conv, bn)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(weight)
    fused.bias = nn.Parameter(bias)
    return fused
