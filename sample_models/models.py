"""Sample architectures that use every block: a digits classifier and a YOLO-style backbone + neck.

Both are built only from ``torch.nn`` and ``blocks_export.blocks`` classes, so a full pickle of either
(``torch.save(model)``) names no class from this file and unpickles wherever ``blocks_export`` is installed:

* ``classifier()`` is an ``nn.Sequential`` [N, 1, 32, 32] -> logits [N, 10].
* ``detector()`` is a ``torch.fx.GraphModule`` traced from ``_YoloFeatures`` with every ``torch.nn`` and
  ``blocks_export`` module kept as a leaf. A GraphModule pickles its generated ``forward`` source, not its
  class, so the multi-branch neck needs no class of its own at load time.
  [N, 3, 640, 640] -> (P3 [N, 64, 80, 80], P4 [N, 128, 40, 40], P5 [N, 256, 20, 20]).

Both carry ``export_metadata`` (task, labels, preprocess), read by the export pipeline.
Used as ``--arch sample_models.models:classifier`` / ``--arch sample_models.models:detector`` with the
``*_state_dict.pt`` files; importable when the repository root is on ``sys.path``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from blocks_export.blocks import CA, DCN, ACmix, CB2d, Conv, SPDConv

DIGIT_LABELS: list[str] = [str(i) for i in range(10)]

# Pixel statistics of the classifier's training split after scaling to [0, 1] (see build.py, which
# recomputes them and refuses to build if they drift). The 8x8 digits (0..16) are stretched to 0..255,
# upsampled to 32x32 with Pillow's bilinear filter, then scaled by 1/255: what the demo PNGs hold.
CLASSIFIER_PREPROCESS: dict[str, Any] = {
    "size": [32, 32],
    "resize": "stretch",
    "color": "GRAY",
    "scale": 1.0 / 255.0,
    "mean": [0.3057],
    "std": [0.3235],
}

DETECTOR_PREPROCESS: dict[str, Any] = {
    "size": [640, 640],
    "resize": "letterbox",
    "color": "RGB",
    "scale": 1.0 / 255.0,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
}

DETECTOR_SIZE = 640


def classifier() -> nn.Sequential:
    """Digits classifier [N, 1, 32, 32] -> logits [N, 10] with ACmix, CB2d, CA, SPD-Conv and DCN v2."""
    model = nn.Sequential(
        Conv(1, 16, 3, 1),            # (N, 16, 32, 32)
        SPDConv(16, 32, 3),           # (N, 32, 16, 16)
        CA(32, 32, reduction=32),     # (N, 32, 16, 16)
        SPDConv(32, 32, 3),           # (N, 32, 8, 8)
        # DCN and ACmix at 8x8: their CPU training cost grows fast with the feature size.
        DCN(32, 32, 3, modulated=True, bias=False),  # (N, 32, 8, 8)
        nn.BatchNorm2d(32),
        nn.SiLU(),
        ACmix(32, 64, kernel_att=5, head=4),  # (N, 64, 8, 8)
        nn.BatchNorm2d(64),
        nn.SiLU(),
        CB2d(64),                     # (N, 64, 8, 8)
        nn.AdaptiveAvgPool2d(1),      # (N, 64, 1, 1)
        nn.Flatten(1),                # (N, 64)
        nn.Linear(64, 10),            # (N, 10)
    )
    model.export_metadata = {
        "task": "classify",
        "labels": list(DIGIT_LABELS),
        "preprocess": copy.deepcopy(CLASSIFIER_PREPROCESS),
    }
    return model


class _YoloFeatures(nn.Module):
    """Backbone + FPN/PAN neck; only traced (see ``detector``), never pickled.

    Backbone: stem (stride 2) -> SPD-Conv (4) -> Conv (8) + CA = P3 -> Conv (16) + DCN v2 = P4 ->
    SPD-Conv (32) + ACmix + CB2d = P5. Neck: top-down (upsample + concat) then bottom-up, as YOLOv5's PANet.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            Conv(3, 16, 3, 2),                 # 0: (N, 16, 320, 320)
            SPDConv(16, 64, 3),                # 1: (N, 64, 160, 160)
            Conv(64, 64, 3, 2),                # 2: (N, 64, 80, 80)
            CA(64, 64, reduction=32),          # 3: (N, 64, 80, 80)     P3
            Conv(64, 128, 3, 2),               # 4: (N, 128, 40, 40)
            DCN(128, 128, 3, modulated=True, bias=False),  # 5: (N, 128, 40, 40)
            nn.BatchNorm2d(128),               # 6
            nn.SiLU(),                         # 7:                     P4
            SPDConv(128, 256, 1),              # 8: (N, 256, 20, 20)
            ACmix(256, 256, kernel_att=7, head=4),  # 9: (N, 256, 20, 20)
            nn.BatchNorm2d(256),               # 10
            nn.SiLU(),                         # 11
            CB2d(256),                         # 12: (N, 256, 20, 20)   P5
        )
        self.lateral5 = Conv(256, 128, 1)      # (N, 128, 20, 20)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.fuse4 = Conv(256, 128, 1)         # cat(up(lateral5), P4): (N, 256, 40, 40) -> (N, 128, 40, 40)
        self.lateral4 = Conv(128, 64, 1)       # (N, 64, 40, 40)
        self.fuse3 = Conv(128, 64, 3)          # cat(up(lateral4), P3): (N, 128, 80, 80) -> (N, 64, 80, 80)
        self.down3 = Conv(64, 64, 3, 2)        # (N, 64, 40, 40)
        self.out4 = Conv(128, 128, 1)          # cat(down3, lateral4): (N, 128, 40, 40)
        self.down4 = Conv(128, 64, 3, 2)       # (N, 64, 20, 20)
        self.out5 = Conv(192, 256, 1)          # cat(down4, lateral5): (N, 256, 20, 20)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = self.backbone
        x = b[2](b[1](b[0](x)))
        p3 = b[3](x)
        p4 = b[7](b[6](b[5](b[4](p3))))
        p5 = b[12](b[11](b[10](b[9](b[8](p4)))))
        l5 = self.lateral5(p5)
        n4 = self.fuse4(torch.cat([self.up(l5), p4], 1))
        l4 = self.lateral4(n4)
        o3 = self.fuse3(torch.cat([self.up(l4), p3], 1))
        o4 = self.out4(torch.cat([self.down3(o3), l4], 1))
        o5 = self.out5(torch.cat([self.down4(o4), l5], 1))
        return o3, o4, o5


class _LeafTracer(fx.Tracer):
    """Keeps every ``torch.nn`` and ``blocks_export`` module whole: the blocks branch on input shapes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m).__module__.startswith(("torch.nn", "blocks_export."))


def detector() -> fx.GraphModule:
    """YOLO-style backbone + neck [N, 3, 640, 640] -> (P3, P4, P5) with every block, as a GraphModule."""
    root = _YoloFeatures()
    graph = _LeafTracer().trace(root)
    # The tracer class would be pickled with the module; the default (re-trace with all modules as leaves)
    # needs no class from this file.
    graph._tracer_cls = None
    gm = fx.GraphModule(root, graph, class_name="YoloFeatures")
    gm.export_metadata = {"task": "features", "preprocess": copy.deepcopy(DETECTOR_PREPROCESS)}
    return gm
