"""Export hazards are true: a tensor built from the input size is flagged only where the exported graph keeps it as
a constant, and each warning says how it got there. The models are written the way such code is pasted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from blocks_export.blocks.hazards import scan_hazards

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pasted_variants.py sits beside this file
import pasted_variants as pv  # noqa: E402


class ArangeFromShape(nn.Module):
    """Sizes read from the tensor and kept as sizes: arange, zeros and a fill value follow the input in a trace."""

    def forward(self, x):
        h, w = x.shape[-2:]
        return x + torch.arange(w, dtype=x.dtype) + torch.zeros(1, 1, h, 1) + torch.full((1,), h)


class ArangeFromInt(nn.Module):
    """``int()`` of the size: a Python number, so the arange is a constant once traced."""

    def forward(self, x):
        return x + torch.arange(int(x.shape[-1]), dtype=x.dtype)


class SizeTensor(nn.Module):
    """The size put into a tensor with ``torch.tensor``: its values are a constant in any trace."""

    def forward(self, x):
        h, w = x.shape[-2:]
        return x * torch.tensor([h, w], dtype=x.dtype).sum()


class LinspaceGrid(nn.Module):
    """``torch.linspace`` over the size: its step count is a Python int for the dynamo exporter."""

    def forward(self, x):
        h, w = x.shape[-2:]
        return x + torch.linspace(-1, 1, w, dtype=x.dtype)


class Head(nn.Module):
    """A model that holds one of the modules above as ``head``, after a convolution."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = head

    def forward(self, x):
        return self.head(self.conv(x))


def _size_hazards(model: nn.Module, shape=(1, 3, 16, 24)) -> dict[str, str]:
    hazards, _, notes = scan_hazards(model.eval(), torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    assert not notes, notes
    return {h.name: h.detail for h in hazards if h.kind == "shape_built_tensor"}


@pytest.mark.parametrize("make,expected", [
    (ArangeFromInt, "torch.arange with sizes [24] in forward, from the input size as Python numbers: a constant"),
    (SizeTensor, "torch.tensor of [16, 24] in forward, holding values from the input size: a constant"),
    (lambda: pv.GridDetect(dynamic=False), "from the input size, then reused (cached) while the size matches: a const"),
    (LinspaceGrid, "step count the op takes as a Python int: the dynamo exporter fixes the input size there"),
], ids=["int", "tensor", "cached", "linspace"])
def test_a_tensor_kept_as_a_constant_is_flagged_with_how_it_got_there(make, expected) -> None:
    found = _size_hazards(Head(make()))
    assert list(found) == ["head"] and expected in found["head"], found


@pytest.mark.parametrize("make", [ArangeFromShape, lambda: pv.GridDetect(dynamic=True)], ids=["sizes", "rebuilt"])
def test_a_tensor_rebuilt_from_the_input_size_in_the_graph_is_no_hazard(make) -> None:
    """The eager runs see its sizes change with the input, but traced they stay symbols: no warning."""
    assert _size_hazards(Head(make())) == {}


def test_a_module_that_cannot_run_on_symbolic_sizes_is_still_flagged_and_the_scan_says_why() -> None:
    class NumpyThenArange(nn.Module):
        def forward(self, x):
            scale = float(np.asarray(x.detach()).std())  # reads values: cannot run on fake tensors
            return x * scale + torch.arange(int(x.shape[-1]), dtype=x.dtype)

    hazards, _, notes = scan_hazards(Head(NumpyThenArange()).eval(), torch.randn(1, 3, 8, 8))
    assert [h.name for h in hazards if h.kind == "shape_built_tensor"] == ["head"]
    assert any("head does not run with symbolic sizes" in n for n in notes), notes


def test_ultralytics_detect_in_export_mode_is_no_hazard_and_cached_anchors_are() -> None:
    """Ultralytics' Detect rebuilds its anchors from the feature sizes when ``dynamic`` (what ``--dynamic`` exports);
    without it they are reused from the last call of the same size (a static export's constant)."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    from blocks_export.export import ultralytics

    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    for dynamic in (True, False):
        prepared, _ = ultralytics.prepare(model, imgsz=(64, 64), batch=1, dynamic=dynamic, half=False)
        found = _size_hazards(prepared, (1, 3, 64, 64))
        assert found == ({} if dynamic else {"model.22": found.get("model.22", "")}), found
        if not dynamic:
            assert "torch.arange with sizes [8]" in found["model.22"] and "(cached)" in found["model.22"]
    # At 32 the P5 map reaching Detect is 1x1: a size of 1 is still the input's size, not a constant.
    prepared, _ = ultralytics.prepare(model, imgsz=(32, 32), batch=1, dynamic=True, half=False)
    assert _size_hazards(prepared, (1, 3, 32, 32)) == {}
