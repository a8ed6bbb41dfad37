"""Real TensorRT: build engines and compare them with PyTorch. Runs only where TensorRT and a GPU exist.

Elsewhere (this project's CPU-only development and CI machines) every test is skipped with the reason.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from blocks_export.blocks import CA, CB2d, randomize_, to_export
from blocks_export.export.fp16 import to_fp16
from blocks_export.export.runners import EngineRunner
from blocks_export.export.trt.api import TensorRTUnavailable, cuda_device, load_tensorrt
from blocks_export.export.trt.build import build_engine
from blocks_export.runtime.parity import compare


def _tensorrt_and_gpu() -> str | None:
    """None when real TensorRT and a GPU are usable here, else why not."""
    try:
        load_tensorrt()
        cuda_device()
    except TensorRTUnavailable as e:
        return e.reason
    try:
        if not torch.cuda.is_available():
            return "torch has no CUDA here (run_engine uses torch CUDA tensors as buffers)"
    except Exception as e:  # noqa: BLE001 - a broken CUDA setup is a reason to skip, reported as such
        return f"torch CUDA unusable: {e}"
    return None


_REASON = _tensorrt_and_gpu()
pytestmark = [pytest.mark.trt, pytest.mark.skipif(_REASON is not None, reason=f"needs TensorRT and a GPU: {_REASON}")]


def _export(module: torch.nn.Module, x: torch.Tensor, path: Path, opset: int = 17) -> Path:
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"])
    path.write_bytes(buf.getvalue())
    return path


def _target() -> str:
    import tensorrt

    major = int(tensorrt.__version__.split(".")[0])
    return {8: "jetpack6.0", 10: "trt10"}.get(major, "trt11")


@pytest.mark.parametrize("make, shape", [(lambda: CB2d(16), (1, 16, 24, 20)), (lambda: CA(16, 16), (1, 16, 20, 12))],
                         ids=["context_block", "coord_attn"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_pytorch(tmp_path, make, shape, precision):
    ref = make()
    randomize_(ref, 0)
    ref.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    src = _export(to_export(ref), x, tmp_path / "model.onnx")
    target = _target()
    if precision == "fp16" and target != "jetpack6.0":
        onnx.save(to_fp16(onnx.load(src)), src)
    result = build_engine(src, tmp_path / "model.engine", fp16=precision == "fp16", target=target)
    with torch.no_grad():
        want = ref(x).numpy()
    (got,) = EngineRunner(result.engine_path, ["x"], ["y"]).run({"x": x.numpy()})
    comparison = compare({"y": want}, {"y": got}, precision)
    assert comparison, comparison.lines()
    side = json.loads(result.sidecar_path.read_text())
    assert side["precision"] == precision
    assert result.ctx_path.is_file() and result.timing_cache_path.is_file()
    assert np.isfinite(want).all()


def test_export_to_trt_runs_the_engine_parity_step_against_pytorch(tmp_path):
    from blocks_export.export.options import ExportOptions
    from blocks_export.export.pipeline import run_export

    model = CB2d(16)
    randomize_(model, 0)
    src = tmp_path / "cb.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 1, 1), model).eval(), src)
    result = run_export(src, ExportOptions(to="trt", imgsz=(24, 20), trust_pickle=True, target=_target()))
    parity = result.report.engine_parity
    assert result.exit_code == 0 and parity, result.report.as_dict()
    assert parity.reference == "pytorch" and [r.shape for r in parity.runs] == [(1, 3, 24, 20)]
