"""When a graph step after export breaks the graph: the simplifier's graph is replaced by the unsimplified one
when only that one passes, and a graph the runtime cannot run is diagnosed at the node and block it fails in.

Both break the graph on purpose, through the step's own function (a broken simplifier, a broken fp16 pass): the
thing under test is what the pipeline does with a wrong graph, not the simplifier or the converter. Output goes
through the CLI with stdout captured (not a terminal), where tables used to be cut at 80 columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import randomize_
from blocks_export.export import fp16 as fp16_module
from blocks_export.export import simplify as simplify_module
from blocks_export.export.cli import app, with_default_command
from blocks_export.export.diagnose import node_scopes
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2


class CoordAttn(nn.Module):
    """Coordinate Attention as users paste it (own names)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(c, 8, 1), nn.BatchNorm2d(8), nn.Hardswish())
        self.fh, self.fw = nn.Conv2d(8, c, 1), nn.Conv2d(8, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        y = self.reduce(torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).permute(0, 1, 3, 2)], 2))
        yh, yw = torch.split(y, [h, w], dim=2)
        return x * self.fh(yh).sigmoid() * self.fw(yw.permute(0, 1, 3, 2)).sigmoid()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 1, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.attn = CoordAttn(12)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.stem(x)))


@pytest.fixture()
def source(tmp_path: Path) -> tuple[nn.Module, Path]:
    model = randomize_(Net().eval(), seed=7)
    path = tmp_path / "net.pt"
    torch.save(model, path)
    return model, path


def _in_block(model: onnx.ModelProto, block: str, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op and block in node_scopes(n))


def test_a_simplifier_that_breaks_the_graph_costs_only_the_simplification(
        tmp_path: Path, source: tuple[nn.Module, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real = simplify_module.simplify

    def broken(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
        slim, note = real(model)
        conv = _in_block(slim, "head", "Conv")
        init = next(t for t in slim.graph.initializer if t.name == conv.input[1])
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.05), init.name))
        return slim, note

    monkeypatch.setattr(simplify_module, "simplify", broken)
    model, src = source
    out = tmp_path / "net.onnx"
    result = CliRunner().invoke(app, with_default_command(
        [str(src), "--trust-pickle", "--imgsz", "24,40", "-o", str(out), "--json", "--quiet"]))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "PASSED"
    kept = [w for w in report["warnings"] if "kept the unsimplified graph" in w]
    assert len(kept) == 1 and "\n" not in kept[0]
    assert any("kept the unsimplified graph" in n for n in report["verification"]["notes"])
    # The written graph is right: this test's own run against the original model.
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x).numpy()
    session = cpu_session(out.read_bytes())
    assert rel_l2(want, session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]) <= 1e-5

    # Without --json: the warning is one line of the output, and the run still exits 0.
    shown = CliRunner().invoke(app, with_default_command(
        [str(src), "--trust-pickle", "--imgsz", "24,40", "-o", str(out), "--force"]))
    assert shown.exit_code == 0, shown.output
    assert len([ln for ln in shown.stdout.splitlines() if "kept the unsimplified graph" in ln]) == 1


def test_a_graph_the_runtime_cannot_run_is_diagnosed_at_its_node_and_block(
        tmp_path: Path, source: tuple[nn.Module, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real = fp16_module.to_fp16
    broken_node: list[str] = []

    def broken(model: onnx.ModelProto, **kwargs: object) -> onnx.ModelProto:
        half = real(model, **kwargs)
        mul = _in_block(half, "attn", "Mul")
        bad = numpy_helper.from_array(np.ones(5, dtype=np.float16), "not_broadcastable")
        half.graph.initializer.append(bad)
        mul.input[1] = bad.name
        broken_node.append(mul.name)
        return half

    monkeypatch.setattr(fp16_module, "to_fp16", broken)
    _, src = source
    out = tmp_path / "net.onnx"
    args = [str(src), "--trust-pickle", "--imgsz", "130,250", "-o", str(out), "--fp16"]
    result = CliRunner().invoke(app, with_default_command([*args, "--json", "--quiet"]))
    assert result.exit_code == 1, result.output
    div = json.loads(result.stdout)["verification"]["first_diverging_block"]
    assert div["node"] == broken_node[-1] and div["block"] == "attn" and div["class"] == "CoordAttn"

    shown = CliRunner().invoke(app, with_default_command([*args, "--force"]))
    assert shown.exit_code == 1
    lines = shown.stdout.splitlines()
    failing = [ln for ln in lines if ln.startswith("failing node:")]
    assert len(failing) == 1 and broken_node[-1] in failing[0] and "in block attn (CoordAttn)" in failing[0]
    # No cut shapes, no error text wrapped across table rows.
    assert any("1x3x130x250" in ln for ln in lines) and not any("…" in ln for ln in lines)
