"""Means over a static H/W written as pooling (``simplify.static_pools``), through the CLI on a model with
Coordinate Attention pasted as the paper's MobileNetV2 code writes it; the written graph is run in the test's own
onnxruntime session against the original model. Dynamic H/W keep ``ReduceMean`` (no size baked in)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.export.simplify import static_pools
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2


class HSig(nn.Module):
    def forward(self, x):
        return nn.functional.relu6(x + 3) / 6


class CoordAttention(nn.Module):
    """The paper's form: pool modules with ``(None, 1)``/``(1, None)``, conv2/conv3 for the two gates."""

    def __init__(self, inp, reduction=8):
        super().__init__()
        mip = max(8, inp // reduction)
        self.pool_h, self.pool_w = nn.AdaptiveAvgPool2d((None, 1)), nn.AdaptiveAvgPool2d((1, None))
        self.conv1, self.bn1, self.relu = nn.Conv2d(inp, mip, 1), nn.BatchNorm2d(mip), nn.Hardswish()
        self.conv2, self.conv3 = nn.Conv2d(mip, inp, 1), nn.Conv2d(mip, inp, 1)

    def forward(self, x):
        n, c, h, w = x.size()
        x_h, x_w = self.pool_h(x), self.pool_w(x).permute(0, 1, 3, 2)
        y = self.relu(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        return x * self.conv2(x_h).sigmoid() * self.conv3(x_w.permute(0, 1, 3, 2)).sigmoid()


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6(), CoordAttention(16),
                                      nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU6(), CoordAttention(24))
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = randomize_(TinyNet().eval(), seed=8)
    path = tmp_path_factory.mktemp("pools") / "tiny.pt"
    torch.save(model, path)
    return model, path


def _export(tmp_path: Path, src: Path, *extra: str) -> tuple[Path, dict]:
    out = tmp_path / "tiny.onnx"
    result = CliRunner().invoke(app, with_default_command([str(src), "--trust-pickle", "--imgsz", "44,56",
                                                           "-o", str(out), "--json", "--quiet", *extra]))
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def _check(model: nn.Module, out: Path, shapes: list[tuple[int, ...]], tol: float) -> None:
    session = cpu_session(out.read_bytes())
    for i, shape in enumerate(shapes):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(40 + i))
        with torch.no_grad():
            expected = model(x).numpy()
        got = np.asarray(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], dtype=np.float32)
        assert rel_l2(expected, got) <= tol, shape


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_static_graph_pools_instead_of_reducing_and_matches_the_original(
        tmp_path: Path, source: tuple[nn.Module, Path], fp16: bool) -> None:
    model, src = source
    out, report = _export(tmp_path, src, *(["--fp16"] if fp16 else []))
    assert report["status"] == "PASSED"
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    # Two per block; the head's mean((2, 3)) without keepdim changes the rank and stays a ReduceMean.
    assert ops.count("AveragePool") == 4 and ops.count("ReduceMean") == 1, ops
    _check(model, out, [(1, 3, 44, 56)], 2e-2 if fp16 else 1e-5)


def test_dynamic_graph_keeps_reducemean_and_matches_at_other_sizes(tmp_path: Path,
                                                                  source: tuple[nn.Module, Path]) -> None:
    model, src = source
    out, report = _export(tmp_path, src, "--dynamic")
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "AveragePool" not in ops and "ReduceMean" in ops
    _check(model, out, [(1, 3, 44, 56), (3, 3, 36, 70)], 1e-5)


def _mean_graph(opset: int, shape: list[int], axes: list[int], keepdims: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    out = [1 if i in [a % 4 for a in axes] else d for i, d in enumerate(shape)] if keepdims else None
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out)
    if opset >= 18:
        axes_t = helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes)
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
        graph = helper.make_graph([node], "g", [x], [y], [axes_t])
    else:
        graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=axes, keepdims=keepdims)],
                                  "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("axes, pooled", [([3], True), ([-2], True), ([2, 3], True), ([1], False)])
def test_static_pools_equals_numpy_mean_and_leaves_what_it_cannot_pool(opset: int, axes: list[int],
                                                                      pooled: bool) -> None:
    shape = [2, 5, 9, 13]
    model = _mean_graph(opset, shape, axes, 1)
    assert static_pools(model) == int(pooled)
    onnx.checker.check_model(model)
    assert not model.graph.initializer or not pooled  # the axes constant goes with its node
    x = np.random.default_rng(opset).standard_normal(shape).astype(np.float32)
    got = cpu_session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x.mean(tuple(axes), keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axes, keepdims", [([1, 4, 40, 40], [2, 3], 1),  # 1600 > LARGE_REDUCTION
                                                   ([1, 4, 9, 13], [3], 0),        # keepdims=0: a different shape
                                                   ([1, 4, 1, 9], [3], 1)])
def test_static_pools_leaves_large_keepdims0_and_unknown_sizes(shape: list[int], axes: list[int],
                                                               keepdims: int) -> None:
    model = _mean_graph(18, shape, axes, keepdims)
    if shape[2] == 1:  # a dim the graph does not know
        model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "w"
    assert static_pools(model) == 0
    assert [n.op_type for n in model.graph.node] == ["ReduceMean"]
