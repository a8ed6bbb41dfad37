"""The script's predictions on grayscale PNGs equal PyTorch's on the same pixels (a digits-like classifier)."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

PREPROCESS = {"size": [32, 32], "resize": "stretch", "color": "GRAY", "scale": 1 / 255, "mean": [0.13], "std": [0.31]}
LABELS = [str(d) for d in range(10)]


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 10))
    bn = model[1]
    with torch.no_grad():  # non-trivial BatchNorm statistics, or the comparison proves less
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _export(model: nn.Module, path) -> None:
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 1, 32, 32),), buf, dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in {"blocks_export.task": "classify", "blocks_export.labels": json.dumps(LABELS),
                       "blocks_export.preprocess": json.dumps(PREPROCESS),
                       "blocks_export.export_shape": json.dumps({"images": [1, 1, 32, 32]})}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def test_predictions_on_gray_pngs_equal_pytorch(cli, tmp_path):
    model = _classifier()
    _export(model, tmp_path / "digits.onnx")
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(4, 32, 32), dtype=np.uint8)
    paths = []
    for i, img in enumerate(pixels):
        paths.append(tmp_path / f"digit_{i}.png")
        Image.fromarray(img, mode="L").save(paths[-1])

    code, out, err = cli(tmp_path / "digits.onnx", *paths, "--topk", "10", "--json")
    assert code == 0, err
    report = json.loads(out)

    x = torch.from_numpy(pixels.astype(np.float32)).unsqueeze(1) * PREPROCESS["scale"]  # (N, 1, H, W)
    x = (x - PREPROCESS["mean"][0]) / PREPROCESS["std"][0]
    with torch.no_grad():
        logits = model(x).numpy()
    assert report["runs"] == 1  # dynamic batch: one run for all four images
    for row, prediction in zip(logits, report["predictions"], strict=True):
        topk = prediction["topk"]
        assert [t["index"] for t in topk] == list(np.argsort(-row, kind="stable"))
        assert [t["label"] for t in topk][0] == LABELS[int(row.argmax())]
        np.testing.assert_allclose([t["raw"] for t in topk], np.sort(row)[::-1], rtol=1e-4, atol=1e-5)
