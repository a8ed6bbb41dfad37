"""``--dynamic`` end to end, on models written here the way users paste the blocks: the CLI exports, then this
test runs the written ONNX in its own onnxruntime session against the ORIGINAL model at the recorded minimum
size, at a size that is not a multiple of 32, at a non-square size and at batch 3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import DeformConv2d
from typer.testing import CliRunner

from blocks_export.blocks import DCN, ACmix, CB2d, SPDConv, randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2


class YoloTrunk(nn.Module):
    """Stride-2 stem, two SPD-Conv stages, DCNv2, a context block and ACmix: 1/8 resolution at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.down1 = SPDConv(8, 16)
        self.down2 = SPDConv(16, 16)
        self.deform = DCN(16, 16, 3, 1)
        self.context = CB2d(16)
        self.mix = ACmix(16, 16, kernel_att=7, head=4)
        self.out = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mix(self.context(self.deform(self.down2(self.down1(self.stem(x)))))))


class TwoDeform(nn.Module):
    """A modulated DCN block and a bare torchvision DeformConv2d (v1, two offset groups)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.dcn2 = DCN(8, 8, 3, 1)
        self.offset = nn.Conv2d(8, 2 * 2 * 9, 3, 1, 1)
        self.dcn1 = DeformConv2d(8, 6, 3, 1, 1)  # two offset groups: read from the offset channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dcn2(torch.relu(self.stem(x)))
        return self.dcn1(y, self.offset(y))


def _export(tmp_path: Path, model: nn.Module, *args: str) -> tuple[Path, dict]:
    src = tmp_path / "model.pt"
    torch.save(model, src)
    out = tmp_path / "model.onnx"
    argv = [str(src), "--to", "onnx", "--trust-pickle", "--dynamic", "-o", str(out), "--json", "--quiet", *args]
    result = CliRunner().invoke(app, with_default_command(argv))
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def _own_shapes(report: dict) -> list[tuple[int, ...]]:
    """Minimum, not a multiple of 32, non-square, batch 3: chosen here from the recorded ranges."""
    ranges = report["dynamic"]["images"]
    c = report["export_shape"][1]
    (h0, hs), (w0, ws) = [(int(ranges[a]["min"]), int(ranges[a]["multiple_of"])) for a in ("2", "3")]
    odd = next(h0 + k * hs for k in range(1, 64) if (h0 + k * hs) % 32)
    return [(1, c, h0, w0), (1, c, odd, w0 + ws), (2, c, h0 + 2 * hs, w0 + 5 * ws), (3, c, h0 + hs, w0 + hs)]


def _check(model: nn.Module, onnx_path: Path, report: dict, tol: float) -> None:
    session = cpu_session(onnx_path.read_bytes())
    for i, shape in enumerate(_own_shapes(report)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(100 + i))
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == expected.shape, shape
        assert rel_l2(expected, np.asarray(got, dtype=np.float32)) <= tol, shape


@pytest.mark.parametrize("args, tol", [((), 1e-5), (("--fp16", "--target", "jetpack6"), 2e-2),
                                       (("--target", "jetpack5"), 1e-5)],
                         ids=["dynamic", "fp16-jetpack6", "jetpack5"])
def test_yolo_trunk_exported_at_64_px_holds_at_every_recorded_size(tmp_path: Path, args: tuple[str, ...],
                                                                  tol: float) -> None:
    model = randomize_(YoloTrunk(), seed=3).eval()
    onnx_path, report = _export(tmp_path, model, "--imgsz", "64", *args)
    ranges = report["dynamic"]["images"]
    # The original runs from 32 px (ACmix needs more than 3 px at 1/8 scale) in steps of 8 (stem + two SPDs).
    assert [ranges["2"]["min"], ranges["2"]["multiple_of"]] == [32, 8]
    _check(model, onnx_path, report, tol)


@pytest.mark.parametrize("lowering", ["std", "portable", "plugin"])
def test_two_deform_convs_hold_at_every_recorded_size_with_each_lowering(tmp_path: Path, lowering: str) -> None:
    model = randomize_(TwoDeform(), seed=4).eval()
    onnx_path, report = _export(tmp_path, model, "--imgsz", "40", "--deform-conv", lowering)
    _check(model, onnx_path, report, 1e-5)
