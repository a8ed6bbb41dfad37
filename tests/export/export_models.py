"""Small models for the export pipeline's end-to-end tests, built from the package's reference blocks, the
seed's verbatim classes and a pasted-style variant. Importable as ``export_models`` (the tests put this folder
on ``sys.path``), so pickled instances and ``--arch export_models:...`` resolve in-process and in
subprocesses (``PYTHONPATH``).
"""

from __future__ import annotations

import os

import torch
from fixtures import seed_blocks
from torch import nn

from blocks_export.blocks import CA, CB2d, randomize_, space_to_depth
from blocks_export.blocks.spd import Conv


class RefNet(nn.Module):
    """Conv(s2) -> SPD -> Conv -> CA -> GCNet block -> 1x1 head: [N, 3, H, W] -> [N, 5, H/4, W/4]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv(3, 8, 3, 2)
        self.spd = space_to_depth()
        self.conv = Conv(32, 16, 3, 1)
        self.ca = CA(16, 16, reduction=4)
        self.cb = CB2d(16)
        self.head = nn.Conv2d(16, 5, 1)
        self.export_metadata = {"task": "features", "labels": ["a", "b", "c", "d", "e"],
                                "preprocess": {"size": [32, 32], "resize": "stretch", "color": "RGB",
                                               "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cb(self.ca(self.conv(self.spd(self.stem(x))))))


class SeedNet(nn.Module):
    """The seed's verbatim CA and space_to_depth inside a small network."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.spd = seed_blocks.space_to_depth()
        self.ca = seed_blocks.CA(32, 32, reduction=4)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ca(self.spd(self.stem(x))))


class HSwishCoordAtt(nn.Module):
    """Coordinate Attention as pasted from the paper's MobileNetV2 file: pooling modules with ``None`` sizes,
    ``conv2``/``conv3``/``relu`` attribute names, ``nn.Hardswish``."""

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
        x_h = self.conv2(x_h).sigmoid()
        x_w = self.conv3(x_w).sigmoid()
        return identity * x_w * x_h


class PastedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU())
        self.att = HSwishCoordAtt(16, 16, groups=4)
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.att(self.stem(x)))


class CANet(nn.Module):
    """Only a reference Coordinate Attention between two convolutions (the silent-error case)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.ca = CA(16, 16, reduction=4)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ca(self.stem(x)))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + y


class FixedReshape(nn.Module):
    """Flattens with a size fixed in Python: H and W cannot be dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).reshape(x.shape[0], 4 * 8 * 8))


class Stride16(nn.Module):
    """Four stride-2 stages, then an upsampled skip: valid H and W are multiples of 16 (from 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, 2, 1) for i in range(3)])
        self.last = nn.Conv2d(4, 4, 3, 2, 1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        return y + self.up(self.last(y))


class Marker:
    """Unpickling this object runs ``os.system`` (writes a marker file): the hostile-checkpoint payload."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def build(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    return randomize_(cls().eval(), seed)


def build_refnet() -> nn.Module:
    """``--arch export_models:build_refnet`` (untrained: weights come from the state_dict)."""
    return RefNet()


def raises() -> nn.Module:
    raise RuntimeError("cannot build this architecture")


NOT_CALLABLE = 42


class SlowNet(nn.Module):
    """Each forward takes a while: a window to interrupt the export in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.4)
        return self.conv(x)


class DcnGcNet(nn.Module):
    """Deformable convolution and a GCNet block (LayerNorm inside): what the TensorRT 8.x targets must lower."""

    def __init__(self) -> None:
        from blocks_export.blocks import DCN

        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.dcn = DCN(8, 8, 3)
        self.cb = CB2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cb(self.dcn(self.stem(x))))
