"""The input shape is found by running the model, or said with ``--channels``: a ResNet-style model whose stem
starts with space_to_depth (the SPD-Conv paper's slices + cat, no module announcing it) exports through the CLI
with every default on, and this test's own onnxruntime run matches the original model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class SpdResNet(nn.Module):
    """Stem: x[..., ::2, ::2] and its three neighbours concatenated (12 channels from RGB), then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(12, 10, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(10)
        self.layer1 = nn.Sequential(Block(10), Block(10))
        self.fc = nn.Linear(10, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        x = self.layer1(torch.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _invoke(tmp_path: Path, model: nn.Module, *args: str):
    src = tmp_path / "model.pt"
    torch.save(model, src)
    out = tmp_path / "model.onnx"
    argv = [str(src), "--to", "onnx", "--trust-pickle", "-o", str(out), "--json", "--quiet", "--imgsz", "38,46",
            *args]
    return CliRunner().invoke(app, with_default_command(argv)), out


def test_spd_stem_channels_found_by_running_the_model(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = randomize_(SpdResNet()).eval()
    result, out = _invoke(tmp_path, model)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["export_shape"] == [1, 3, 38, 46]
    x = torch.randn(1, 3, 38, 46, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x).numpy()
    sess = cpu_session(str(out))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert rel_l2(want, np.asarray(got)) < 1e-4


class ChannelsLast(nn.Module):
    """No convolution to read the channels from: a 2-channel input mixed by a Linear over the channel dim."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_unfound_channels_said_with_channels_advice_only(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = ChannelsLast().eval()
    result, out = _invoke(tmp_path, model)
    assert result.exit_code != 0 and not out.exists()
    assert "--channels N" in result.output and "--imgsz" not in result.output
    result, out = _invoke(tmp_path, model, "--channels", "2")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["export_shape"] == [1, 2, 38, 46]
    x = torch.randn(1, 2, 38, 46, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = model(x).numpy()
    sess = cpu_session(str(out))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert rel_l2(want, np.asarray(got)) < 1e-5
    result, out = _invoke(tmp_path, model, "--channels", "5", "--force")
    assert result.exit_code != 0 and "--channels" in result.output


class PastedSpd(nn.Module):
    """The seed's space_to_depth, pasted under a name that says nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class Downsample(nn.Module):
    """Named like nothing in particular: a pasted space-to-depth feeding a 12-channel convolution (5 input channels
    in, so neither 12 nor the 3 of 12 // 4 is a guess that happens to be the default)."""

    def __init__(self) -> None:
        super().__init__()
        self.rearrange = PastedSpd()
        self.conv = nn.Conv2d(20, 8, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.rearrange(x))


class SpdLookalike(nn.Module):
    """Named like an SPD block, but a plain convolution: its name must not change the guess."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_channel_guess_divides_by_space_to_depth_blocks_found_by_what_they_compute() -> None:
    from blocks_export.blocks import SPDConv, channel_factor, space_to_depth, to_export
    from blocks_export.export.steps.prepare import channel_candidates

    assert channel_candidates(nn.Sequential(Downsample(), nn.ReLU()))[0] == 5
    assert channel_candidates(nn.Sequential(SPDConv(6, 8), nn.ReLU()))[0] == 6
    assert channel_candidates(nn.Sequential(to_export(SPDConv(6, 8).eval()), nn.ReLU()))[0] == 6
    lookalike = type("SPDConvLike", (SpdLookalike,), {})()
    assert channel_factor(lookalike) == 1 and channel_candidates(nn.Sequential(lookalike))[0] == 8
    assert channel_factor(PastedSpd()) == channel_factor(space_to_depth()) == 4
    assert channel_factor(nn.Conv2d(3, 3, 1)) == channel_factor(nn.ReLU()) == 1
