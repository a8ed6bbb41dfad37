"""Accuracy parity on the classifier's held-out split: PyTorch against the exported ONNX in onnxruntime CPU.

The ONNX comes from the real export pipeline (``run_export``, as ``blocks-export classifier.pt --to onnx``),
so the block rewrites, the exporter and the simplifier are all in the path being measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from blocks_export.export.fp16 import to_fp16
from blocks_export.export.options import ExportOptions
from blocks_export.export.pipeline import run_export
from blocks_export.plugins.ort_cpu import cpu_session


@pytest.fixture(scope="module")
def exported(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    out = tmp_path_factory.mktemp("parity") / "classifier.onnx"
    # The README's export (static batch 1); our own check below is stricter than --verify.
    options = ExportOptions(to="onnx", output=out, trust_pickle=True, verify=False, quiet=True)
    result = run_export(samples / "classifier.pt", options)
    assert result.passed, result.report
    return onnx.load(str(out))


@pytest.fixture(scope="module")
def torch_top1(samples: Path, digits_test_split: tuple) -> np.ndarray:
    model = torch.load(samples / "classifier.pt", weights_only=False).eval()
    with torch.no_grad():
        return model(digits_test_split[0]).argmax(1).numpy()


def _ort_top1(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    """Top-1 [N] of ``model`` run image by image (batch 1, as exported) on [N, 1, H, W]."""
    sess = cpu_session(model)
    name = sess.get_inputs()[0].name
    return np.array([int(np.argmax(sess.run(None, {name: x[i:i + 1].numpy()})[0])) for i in range(len(x))])


def test_fp32_onnx_top1_agrees_with_pytorch_on_every_held_out_image(exported: onnx.ModelProto,
                                                                     torch_top1: np.ndarray,
                                                                     digits_test_split: tuple) -> None:
    ort_top1 = _ort_top1(exported, digits_test_split[0])
    disagree = np.flatnonzero(ort_top1 != torch_top1)
    assert disagree.size == 0, f"{disagree.size}/{len(torch_top1)} held-out images differ: {disagree[:10]}"


def test_fp16_onnx_top1_agrees_with_pytorch_on_at_least_99_5_percent(exported: onnx.ModelProto,
                                                                      torch_top1: np.ndarray,
                                                                      digits_test_split: tuple) -> None:
    half = to_fp16(exported, keep_io_types=True)
    ort_top1 = _ort_top1(half, digits_test_split[0])
    agree = float((ort_top1 == torch_top1).mean())
    assert agree >= 0.995, f"fp16 top-1 agreement {agree:.4f}"
