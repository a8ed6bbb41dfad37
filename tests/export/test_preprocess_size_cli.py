"""A checkpoint trained at 32 px, exported with ``--imgsz 48``: the graph's preprocess metadata says 48, and
``runtime/infer.py`` (run as a script, as on a device) resizes a PNG to 48 and gives the ORIGINAL model's output
on the same image, preprocessed here with torch."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import CA, CB2d, randomize_
from blocks_export.export.cli import app, with_default_command

ROOT = Path(__file__).resolve().parents[2]
INFER = ROOT / "runtime" / "infer.py"
TRAINED = {"size": [32, 32], "resize": "stretch", "color": "RGB", "scale": 1 / 255,
           "mean": [0.45, 0.5, 0.55], "std": [0.2, 0.25, 0.3]}


class TinyClassifier(nn.Module):
    """Stride-2 stem, Coordinate Attention, a context block, pooled linear head: [N, 3, H, W] -> [N, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.att = CA(8, 8, reduction=4)
        self.ctx = CB2d(8)
        self.fc = nn.Linear(8, 4)
        self.export_metadata = {"task": "classify", "labels": ["w", "x", "y", "z"],
                                "preprocess": copy.deepcopy(TRAINED)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ctx(self.att(self.stem(x))).mean((2, 3)))


def _checkpoint(path: Path) -> nn.Module:
    """An Ultralytics-style fp16 checkpoint dict, as sample_models/build.py writes; returns the model it holds."""
    torch.manual_seed(7)
    model = randomize_(TinyClassifier()).eval()
    half = copy.deepcopy(model).half()
    torch.save({"epoch": -1, "model": half, "ema": None, "optimizer": None, "train_args": {}}, path)
    return copy.deepcopy(half).float().eval()


@pytest.mark.parametrize("args", [(), ("--dynamic",)], ids=["static", "dynamic"])
def test_export_at_another_imgsz_preprocesses_at_the_exported_size(tmp_path: Path, args: tuple[str, ...]) -> None:
    src, out = tmp_path / "tiny_ckpt.pt", tmp_path / "tiny.onnx"
    original = _checkpoint(src)
    result = CliRunner().invoke(app, with_default_command(
        [str(src), "--to", "onnx", "--trust-pickle", "--imgsz", "48", "-o", str(out), "--quiet", *args]))
    assert result.exit_code == 0, result.output

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["blocks_export.preprocess"]) == {**TRAINED, "size": [48, 48]}

    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)  # H 30, W 40: upsampled on both sides
    Image.fromarray(pixels, mode="RGB").save(tmp_path / "photo.png")
    proc = subprocess.run([sys.executable, str(INFER), str(out), str(tmp_path / "photo.png"), "--json",
                           "--save-outputs", str(tmp_path / "outs")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["preprocess"]["size"] == [48, 48]
    (saved,) = (tmp_path / "outs").glob("*.npy")
    got = np.load(saved)

    # The test's own preprocessing: bilinear, half-pixel centres, no antialias (upsampling), then scale/mean/std.
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False) * TRAINED["scale"]
    x = (x - torch.tensor(TRAINED["mean"])[:, None, None]) / torch.tensor(TRAINED["std"])[:, None, None]
    with torch.no_grad():
        want = original(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
