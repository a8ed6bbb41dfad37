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

from ._fold import fold_batchnorm


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


class SPDConvExport(nn.Module):
    """Export twin of ``SPDConv``: [N, c1, H, W] -> [N, c2, H/2/s, W/2/s].

    The seed's four-phase slicing (``SpaceToDepthExport``) followed by one convolution with the BatchNorm
    folded in (``fold_batchnorm``, exact in eval mode) and the activation. The rearrangement stays as
    strided slices + Concat on purpose: onnxruntime's optimiser fuses that pattern into its ``SpaceToDepth``
    kernel, and TensorRT runs strided slices as copies. The alternative without any rearrangement, one
    ``2k x 2k`` convolution with stride ``2s`` (YOLOv5's Focus -> ``Conv(k=6, s=2, p=2)``,
    https://github.com/ultralytics/yolov5/issues/4825), is also exact but measured 1.7x slower in onnxruntime
    1.32 CPU at 1x64x80x80 (``benchmarks/run.py``), so it is not used. Odd H or W raise the reference's
    ``ValueError`` in PyTorch.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.spd = SpaceToDepthExport()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.spd(x)))  # (N, 4 c1, H/2, W/2) -> (N, c2, H/2/s, W/2/s)


def spd_conv_to_export(module: SPDConv) -> SPDConvExport:
    """The eval-mode twin of ``SPDConv`` (copies of its weights; ``module`` is left unchanged)."""
    if not isinstance(module, SPDConv):
        raise TypeError(f"spd.spd_conv_to_export: expected SPDConv, got {type(module).__name__}")
    folded = fold_batchnorm(module.conv.conv, module.conv.bn)
    return SPDConvExport(folded, copy.deepcopy(module.conv.act)).eval()


def to_export(module: nn.Module) -> nn.Module:
    """The eval-mode twin of a ``space_to_depth`` or ``SPDConv`` module."""
    if isinstance(module, SPDConv):
        return spd_conv_to_export(module)
    if isinstance(module, space_to_depth):
        return SpaceToDepthExport().eval()
    raise TypeError(f"spd.to_export: expected space_to_depth or SPDConv, got {type(module).__name__}")
