"""The dynamo exporter's opset-18 graph taken down to the TensorRT 8.x targets' opsets, end to end through the CLI.

A model written here the way users paste the blocks (their own class names, ACmix with an odd channel count, two
of them, a CSP-style ``chunk``): exported with ``--exporter dynamo`` for ``jetpack5`` (opset 16) and with
``--dynamic --fp16`` for ``jetpack6.0`` (opset 17), every default step on. The written file is read back here:
its opset, the target's parser check (``blocks-export check``), and this test's own onnxruntime run against the
original model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import ACmix, randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2


class CSPMix(nn.Module):
    """Half the channels through ACmix, half straight on (``chunk`` of an odd count: 5 and 4)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.attn = ACmix(5, 6, kernel_att=3, head=3)
        self.fuse = nn.Conv2d(6 + c - 5, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, 1)
        return self.fuse(torch.cat([self.attn(a), b], 1))


class LittleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 9, 3, 2, 1, bias=False), nn.BatchNorm2d(9), nn.SiLU())
        self.mix1 = CSPMix(9)
        self.mix2 = ACmix(9, 9, kernel_att=5, head=3, stride=2)
        self.head = nn.Conv2d(9, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix2(self.mix1(self.stem(x))))


def _shapes(report: dict) -> list[tuple[int, ...]]:
    """The export shape; for a dynamic graph also the recorded minimum, a non-square size and batch 3."""
    shape = tuple(report["export_shape"])
    if not report.get("dynamic"):
        return [shape]
    ranges = report["dynamic"]["images"]
    (h0, hs), (w0, ws) = [(int(ranges[a]["min"]), int(ranges[a]["multiple_of"])) for a in ("2", "3")]
    return [shape, (1, shape[1], h0, w0), (2, shape[1], h0 + 3 * hs, w0 + ws), (3, shape[1], h0 + hs, w0 + 5 * ws)]


@pytest.mark.parametrize(("args", "opset", "tol"), [
    (("--target", "jetpack5"), 16, 1e-5),
    (("--dynamic", "--fp16", "--target", "jetpack6.0"), 17, 2e-2),
], ids=["jetpack5", "dynamic-fp16-jetpack6.0"])
def test_dynamo_graph_reaches_the_tensorrt8_opset_and_matches_the_original(
        tmp_path: Path, args: tuple[str, ...], opset: int, tol: float) -> None:
    model = randomize_(LittleNet().eval(), seed=21)
    src, out = tmp_path / "little.pt", tmp_path / "little.onnx"
    torch.save(model, src)
    runner = CliRunner()
    argv = [str(src), "--to", "onnx", "--trust-pickle", "--imgsz", "36", "--exporter", "dynamo", "-o", str(out),
            "--json", "--quiet", *args]
    result = runner.invoke(app, with_default_command(argv))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert "Split" in {n.op_type for n in proto.graph.node}  # the chunk: the operator with no converter adapter
    target = args[-1]
    checked = runner.invoke(app, ["check", str(out), "--target", target, "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["passed"]

    session = cpu_session(out.read_bytes())
    for i, shape in enumerate(_shapes(report)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(300 + i))
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == expected.shape, shape
        assert rel_l2(expected, np.asarray(got, dtype=np.float32)) <= tol, shape
