"""End to end: `blocks-export` the sample classifier, run the Jetson script on the demo PNGs (CPU provider),
and compare with PyTorch on the same pixels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from infer_fixtures import REPO
from PIL import Image

SAMPLES = REPO / "sample_models"
CHECKPOINT = SAMPLES / "classifier.pt"
IMAGES = sorted((SAMPLES / "images").glob("*.png"))

pytestmark = pytest.mark.skipif(not CHECKPOINT.exists() or not IMAGES,
                                reason="sample_models/classifier.pt and images/ are built by sample_models/build.py")


def test_script_predictions_on_sample_images_equal_pytorch(cli, tmp_path, monkeypatch):
    onnx_path = tmp_path / "classifier.onnx"
    export = subprocess.run([sys.executable, "-c", "from blocks_export.export.cli import main; main()",
                             str(CHECKPOINT), "--to", "onnx", "--trust-pickle", "--quiet", "--output", str(onnx_path)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert export.returncode == 0, export.stderr[-2000:]

    code, out, err = cli(onnx_path, *IMAGES, "--topk", "10", "--provider", "cpu", "--json")
    assert code == 0, err
    report = json.loads(out)

    record = json.loads((SAMPLES / "classifier.json").read_text())
    prep = record["preprocess"]
    pixels = np.stack([np.asarray(Image.open(p).convert("L")) for p in IMAGES])  # (N, 32, 32) uint8
    x = torch.from_numpy(pixels.astype(np.float32)).unsqueeze(1) * prep["scale"]  # (N, 1, H, W)
    x = (x - prep["mean"][0]) / prep["std"][0]
    monkeypatch.syspath_prepend(str(REPO))  # the pickle may reference sample_models.models
    model = torch.load(CHECKPOINT, weights_only=False).eval()
    with torch.no_grad():
        logits = model(x).numpy()

    assert [p["source"] for p in report["predictions"]] == [str(p) for p in IMAGES]
    for row, prediction in zip(logits, report["predictions"], strict=True):
        topk = prediction["topk"]
        assert topk[0]["label"] == record["labels"][int(row.argmax())]
        assert [t["index"] for t in topk] == list(np.argsort(-row, kind="stable"))
        np.testing.assert_allclose([t["raw"] for t in topk], np.sort(row)[::-1], rtol=1e-4, atol=1e-4)
