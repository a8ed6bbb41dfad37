"""``--fp16`` on a model whose fp16 error breaks the verdict: the blocks that cause it are kept fp32 automatically
and the export passes; a graph that is wrong (one weight 1 % off) still fails. Checked by this test's own
onnxruntime run of the written graph against the original model."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import RULES, rel_l2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blocks"))
import pasted_variants as pv  # noqa: E402


class ConvBN(nn.Module):
    def __init__(self, c1: int, c2: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 16, 2)
        self.dim = ConvBN(16, 16)
        self.ca = pv.CoordAtt(16, 16)  # Coordinate Attention as its paper's code has it
        self.head = ConvBN(16, 32, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.ca(self.dim(self.stem(x)))).mean((2, 3)))


def fp16_sensitive() -> Net:
    """Random weights and BatchNorm statistics, then one layer as trained models have them: ``stem`` ends in
    small activations (BatchNorm gains ~1e-3) and ``dim``'s BatchNorm amplifies them back (gains ~2e4 over a
    running variance of 1e-6). Every activation is well inside fp16's range, so PyTorch's own half run (the
    BatchNorm applied after the convolution, in float arithmetic) stays within 1e-3 of the truth; but the exported
    graph folds that BatchNorm into ``dim``'s convolution, whose weights then reach ~9e5, past fp16's largest
    value (65504): in an fp16 graph that layer is wrong, and only that layer."""
    model = randomize_(Net(), 0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.stem.bn.weight.mul_(1e-3)
        model.stem.bn.bias.mul_(1e-3)
        model.dim.bn.running_mean.mul_(1e-4)
        model.dim.bn.bias.mul_(1e-2)
        model.dim.bn.running_var.fill_(1e-6)
        model.dim.bn.weight.copy_(2e4 * (1 + 0.1 * torch.randn(16, generator=g)))
    return model.eval()


def _cli(*args: object) -> Any:
    return CliRunner().invoke(app, with_default_command([str(a) for a in args]))


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fp16fb") / "net.pt"
    torch.save(fp16_sensitive(), path)
    return path


def test_fp16_keeps_the_block_that_breaks_it_in_fp32_and_passes(model_pt: Path, tmp_path: Path) -> None:
    model = fp16_sensitive()
    out = tmp_path / "net16.onnx"
    result = _cli(model_pt, "--trust-pickle", "--imgsz", "32", "--fp16", "-o", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "PASSED" and report["verification"]["passed"]
    fb = report["fp16"]
    assert fb["float_passed"] and fb["passed"]
    assert fb["kept"] == ["dim"], fb  # what fp16 does not break stays fp16
    rows = {r["block"]: r for r in fb["fallback"]}
    assert rows["dim"]["kept"] and rows["dim"]["why"] and rows["dim"]["rel_l2"] > RULES["fp16"].rel_l2
    assert {"block", "nodes", "error", "kept", "why", "rel_l2"} <= set(rows["dim"])

    # This test's own run: the written graph is fp16 outside the kept layer and matches the original.
    graph = onnx.load(out)
    assert any(t.data_type == TensorProto.FLOAT16 for t in graph.graph.initializer)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x).numpy()
    session = cpu_session(out.read_bytes())
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert rel_l2(ref, got) < RULES["fp16"].rel_l2

    # Without the fallback the fp16 graph is far off, while PyTorch's own half run is not (this test's numbers).
    from blocks_export.export.fp16 import to_fp16

    fp32 = tmp_path / "net32.onnx"
    assert _cli(model_pt, "--trust-pickle", "--imgsz", "32", "-o", fp32, "--quiet").exit_code == 0
    plain = cpu_session(to_fp16(onnx.load(fp32)))
    assert rel_l2(ref, plain.run(None, {plain.get_inputs()[0].name: x.numpy()})[0]) > 0.5
    with torch.no_grad():
        half = copy.deepcopy(model).half()(x.half()).float().numpy()
    assert rel_l2(ref, half) < 2e-3

    table = _cli(model_pt, "--trust-pickle", "--imgsz", "32", "--fp16", "-o", out, "--force")
    assert table.exit_code == 0, table.output
    kept_lines = [ln for ln in table.stdout.splitlines() if ln.startswith("fp16: kept fp32:")]
    assert len(kept_lines) == len(fb["kept"]) and any("dim" in ln for ln in kept_lines)


def test_fp16_of_a_graph_with_a_wrong_weight_still_fails(model_pt: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from blocks_export.export import onnx_export

    real = onnx_export.to_onnx

    def one_weight_off(*args: Any, **kwargs: Any) -> Any:  # the exported graph: the classifier's weights 1 % off
        exported = real(*args, **kwargs)
        fc = next(n for n in exported.model.graph.node if n.op_type in ("Gemm", "MatMul"))
        init = next(t for t in exported.model.graph.initializer if t.name in fc.input)
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((w * 1.01).astype(w.dtype), init.name))
        return exported

    monkeypatch.setattr(onnx_export, "to_onnx", one_weight_off)
    out = tmp_path / "bad16.onnx"
    result = _cli(model_pt, "--trust-pickle", "--imgsz", "32", "--fp16", "-o", out, "--json", "--quiet")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "FAILED" and not report["verification"]["passed"]
    assert report["fp16"]["float_passed"] is False and report["fp16"]["kept"] == []
    assert np.isfinite(report["verification"]["runs"][0]["outputs"][0]["rel_l2"])
    # Exported at fp32, the same wrong graph fails too: the weight is wrong, not the precision.
    fp32 = _cli(model_pt, "--trust-pickle", "--imgsz", "32", "-o", tmp_path / "bad32.onnx", "--json", "--quiet")
    assert fp32.exit_code == 1, fp32.output
