"""The YOLO-style backbone + neck: every block at realistic widths, three scales at 640x640."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from blocks_export.blocks import CA, DCN, ACmix, CB2d, space_to_depth


@pytest.fixture(scope="module")
def model(samples: Path) -> nn.Module:
    return torch.load(samples / "detector.pt", weights_only=False).eval()


def test_detector_gives_p3_p4_p5_feature_maps_at_640(model: nn.Module) -> None:
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(1, 64, 80, 80), (1, 128, 40, 40), (1, 256, 20, 20)]
    for o in outs:
        assert torch.isfinite(o).all()
        assert o.std() > 1e-2  # not collapsed to a constant by the random weights


def test_detector_uses_every_block_at_64_to_256_channels(model: nn.Module) -> None:
    widths = {  # output channels of each block instance
        "ACmix": [m.out_planes for m in model.modules() if type(m) is ACmix],
        "CB2d": [m.inplanes for m in model.modules() if type(m) is CB2d],
        "CA": [m.conv_h.out_channels for m in model.modules() if type(m) is CA],
        "DCN": [m.dcn.out_channels for m in model.modules() if type(m) is DCN],
        "space_to_depth": [p.conv.conv.out_channels for p in model.modules()
                           if any(type(c) is space_to_depth for c in p.children())],
    }
    for name, found in widths.items():
        assert found, f"no {name} in the detector"
        assert min(found) >= 64, (name, found)
    assert max(w for found in widths.values() for w in found) >= 256
    assert max(widths["ACmix"]) >= 256, "ACmix at the low-resolution, wide stage"
    assert all(m.modulated for m in model.modules() if isinstance(m, DCN))


def test_detector_batchnorm_statistics_are_not_the_defaults(model: nn.Module) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) >= 10
    for bn in bns:
        assert bn.running_mean.abs().max() > 1e-3
        assert (bn.running_var - 1).abs().max() > 1e-2
        assert bn.running_var.std() > 0.05 * bn.running_var.mean()  # per-channel, not one constant


def test_detector_blocks_are_not_at_their_degenerate_initial_values(model: nn.Module) -> None:
    dcn = next(m for m in model.modules() if isinstance(m, DCN))
    assert dcn.offset.weight.abs().max() > 1e-3
    cb = next(m for m in model.modules() if isinstance(m, CB2d))
    assert cb.channel_add_conv[-1].weight.abs().max() > 1e-3
    acmix = next(m for m in model.modules() if isinstance(m, ACmix))
    assert float(acmix.rate1.detach()) != 0.5
