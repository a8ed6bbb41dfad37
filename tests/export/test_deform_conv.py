"""``torchvision::deform_conv2d`` exported through our symbolic, in all three lowerings and both exporters,
matches torchvision in onnxruntime CPU; errors are clear; the std and portable graphs agree with ONNX's own
reference evaluator.

One export covers many configurations: the parity module holds a covering design of DCN branches (every value
of every factor, most pairs) side by side, so each (lowering, exporter) pair costs one export.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn
from torchvision.ops import deform_conv2d

from blocks_export.blocks import DCN, randomize_
from blocks_export.export.deform_conv import (
    LOWERINGS,
    check_lowering,
    dynamo_translation_table,
    torchscript_symbolic,
)
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2

OPSET = {"std": 19, "portable": 18, "plugin": 18}
TS_OPSET = {"std": 19, "portable": 17, "plugin": 17}  # TorchScript also reaches JetPack 5's opset 17

# (groups, offset_groups, stride, padding, dilation, kernel, modulated, bias): every value of every factor.
COVERING = [
    (1, 1, 1, 0, 1, (1, 1), True, True),
    (2, 2, 1, 1, 1, (3, 3), True, False),
    (1, 4, 2, 2, 1, (3, 5), False, True),
    (2, 1, 2, 0, 2, (3, 3), False, False),
    (1, 2, 1, 2, 2, (1, 1), False, True),
    (2, 4, 1, 1, 2, (3, 5), True, True),
    (1, 1, 2, 1, 1, (3, 5), True, False),
    (2, 2, 2, 2, 2, (1, 1), True, True),
    (1, 4, 1, 0, 1, (3, 3), False, False),
    (2, 1, 1, 2, 1, (3, 5), False, True),
    (1, 2, 2, 1, 2, (3, 3), True, True),
    (2, 4, 2, 0, 1, (1, 1), False, False),
    (1, 2, (1, 2), (2, 1), (2, 1), (3, 5), True, True),  # H and W told apart
]
C_IN = 8
EXPORT_SHAPE = (2, C_IN, 12, 14)
CHECK_SHAPES = [(1, C_IN, 10, 17), (3, C_IN, 15, 11), (2, C_IN, 12, 14)]


class Branches(nn.Module):
    """DCN branches side by side; returns one output per branch."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            DCN(C_IN, 6, k=k, s=s, p=p, d=d, g=g, deformable_groups=og, bias=b, modulated=mod)
            for g, og, s, p, d, k, mod, b in COVERING)
        randomize_(self, seed=3)
        with torch.no_grad():  # offsets of a few pixels: points cross borders and leave the image
            for branch in self.branches:
                branch.offset.weight.mul_(6.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(b(x) for b in self.branches)


class Single(nn.Module):
    """One deform_conv2d with offset and mask as inputs, for crafted offsets."""

    def __init__(self, use_mask: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.weight = nn.Parameter(torch.randn(6, 4, 3, 3, generator=g) / 6.0)
        self.bias = nn.Parameter(torch.randn(6, generator=g))
        self.use_mask = use_mask

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, padding=(1, 1),
                             mask=mask if self.use_mask else None)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], lowering: str, dynamo: bool,
            opset: int) -> onnx.ModelProto:
    names = ["x", "offset", "mask"][:len(args)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            b, h, w = (torch.export.Dim(n, min=1, max=4096) for n in ("b", "h", "w"))
            shapes = {n: {0: b, 2: h, 3: w} for n in names}
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=names,
                                     dynamic_shapes=shapes, verbose=False,
                                     custom_translation_table=dynamo_translation_table(lowering, opset))
            return prog.model_proto
        buf = io.BytesIO()
        with torchscript_symbolic(lowering, opset):
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=names,
                              dynamic_axes={n: {0: "b", 2: "h", 3: "w"} for n in names})
        return onnx.load_from_string(buf.getvalue())


def _run(model: onnx.ModelProto, *inputs: torch.Tensor) -> list[np.ndarray]:
    """Run with inputs in (x, offset, mask) order; an input the graph dropped (an unused mask) is skipped."""
    sess = cpu_session(model)
    given = dict(zip(["x", "offset", "mask"], inputs, strict=False))
    return sess.run(None, {i.name: given[i.name].numpy() for i in sess.get_inputs()})


@pytest.fixture(scope="module")
def branches() -> Branches:
    return Branches().eval()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_deform_conv_lowering_matches_torchvision_over_covering_design(branches: Branches, lowering: str,
                                                                       dynamo: bool) -> None:
    opset = OPSET[lowering] if dynamo else TS_OPSET[lowering]
    g = torch.Generator().manual_seed(11)
    model = _export(branches, (torch.randn(EXPORT_SHAPE, generator=g),), lowering, dynamo, opset)
    for shape in CHECK_SHAPES:
        x = torch.randn(shape, generator=g)
        with torch.no_grad():
            expected = branches(x)
        got = _run(model, x)
        for cfg, ref, out in zip(COVERING, expected, got, strict=True):
            assert out.shape == tuple(ref.shape), (cfg, shape)
            err = rel_l2(ref, out)
            assert err <= 1e-5, f"{lowering} dynamo={dynamo} {cfg} at {shape}: rel_l2={err:.2e}"


def _graph_ops(model: onnx.ModelProto) -> set[tuple[str, str]]:
    return {(n.domain, n.op_type) for n in model.graph.node}


@pytest.fixture(scope="module")
def single_graphs() -> dict[str, onnx.ModelProto]:
    g = torch.Generator().manual_seed(2)
    args = (torch.randn(1, 4, 9, 10, generator=g), torch.randn(1, 18, 9, 10, generator=g),
            torch.rand(1, 9, 9, 10, generator=g))
    return {low: _export(Single(), args, low, True, OPSET[low]) for low in LOWERINGS}


def test_each_lowering_emits_its_contract(single_graphs: dict[str, onnx.ModelProto]) -> None:
    assert ("", "DeformConv") in _graph_ops(single_graphs["std"])
    portable = _graph_ops(single_graphs["portable"])
    assert all(d == "" for d, _ in portable)
    assert not {op for _, op in portable} & {"DeformConv", "ModulatedDeformConv2d"}
    (node,) = [n for n in single_graphs["plugin"].graph.node if n.op_type == "ModulatedDeformConv2d"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == ""
    assert attrs["stride"] == [1, 1] and attrs["padding"] == [1, 1] and attrs["dilation"] == [1, 1]
    assert attrs["group"] == 1 and attrs["deformable_group"] == 1
    assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
    # Plugin order (x, offset, mask, weight, bias): the weight input is the [6, 4, 3, 3] initializer.
    inits = {i.name: tuple(i.dims) for i in single_graphs["plugin"].graph.initializer}
    assert node.input[0] == "x" and node.input[1] == "offset" and node.input[2] == "mask"
    assert inits.get(node.input[3]) == (6, 4, 3, 3) and inits.get(node.input[4]) == (6,)


def _edge_inputs(kind: str, shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, ...]:
    n, c, h, w = shape
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g)
    mask = torch.rand(n, 9, h, w, generator=g)
    if kind == "zero":
        offset = torch.zeros(n, 18, h, w)
    elif kind == "far":
        offset = torch.sign(torch.randn(n, 18, h, w, generator=g)) * 1e4
    elif kind == "fractional":
        offset = torch.randn(n, 18, h, w, generator=g) * 40.0 + 0.37
    else:
        offset = torch.randn(n, 18, h, w, generator=g) * 2.0
    return x, offset, mask


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_deform_conv_edge_cases_match_torchvision(single_graphs: dict[str, onnx.ModelProto], lowering: str) -> None:
    module = Single().eval()
    model = single_graphs[lowering]
    for kind, shape in [("zero", (2, 4, 7, 8)), ("far", (1, 4, 6, 5)), ("fractional", (2, 4, 11, 9)),
                        ("random", (1, 4, 1, 9)), ("random", (2, 4, 8, 1)), ("random", (1, 4, 1, 1))]:
        x, offset, mask = _edge_inputs(kind, shape)
        with torch.no_grad():
            ref = module(x, offset, mask).numpy()
        (got,) = _run(model, x, offset, mask)
        assert np.isfinite(got).all(), (kind, shape)
        assert rel_l2(ref, got) <= 1e-5, (kind, shape)
        if kind == "far":  # every sample outside the image: only the bias is left
            bias = module.bias.detach().numpy()[None, :, None, None]
            np.testing.assert_allclose(got, np.broadcast_to(bias, got.shape), rtol=0, atol=1e-6)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_zero_offsets_without_mask_equal_plain_convolution(lowering: str) -> None:
    module = Single(use_mask=False).eval()
    x, offset, mask = _edge_inputs("zero", (2, 4, 7, 8))
    model = _export(module, (x, offset, mask), lowering, False, TS_OPSET[lowering])
    (got,) = _run(model, *_edge_inputs("zero", (1, 4, 9, 6)))
    x2 = _edge_inputs("zero", (1, 4, 9, 6))[0]
    plain = torch.nn.functional.conv2d(x2, module.weight, module.bias, padding=1).detach().numpy()
    assert rel_l2(plain, got) <= 1e-5


@pytest.mark.parametrize("lowering", ["std", "portable"])
def test_onnx_reference_evaluator_agrees_with_torchvision(single_graphs: dict[str, onnx.ModelProto],
                                                          lowering: str) -> None:
    module = Single().eval()
    x, offset, mask = _edge_inputs("random", (1, 4, 6, 6))
    offset = offset * 1.5
    with torch.no_grad():
        ref = module(x, offset, mask).numpy()
    model = onnx.ModelProto()
    model.CopyFrom(single_graphs[lowering])
    for node in model.graph.node:  # onnx.reference knows GridSample-20's name of the mode only
        for attr in node.attribute:
            if node.op_type == "GridSample" and attr.name == "mode" and attr.s == b"bilinear":
                attr.s = b"linear"
    evaluator = ReferenceEvaluator(model)
    (got,) = evaluator.run(None, {"x": x.numpy(), "offset": offset.numpy(), "mask": mask.numpy()})
    assert rel_l2(ref, got) <= 1e-5


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_fp16_graph_stays_close_to_fp32_torchvision(single_graphs: dict[str, onnx.ModelProto], lowering: str) -> None:
    from onnxconverter_common import float16

    model16 = float16.convert_float_to_float16(single_graphs[lowering], keep_io_types=True)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model16.graph.initializer)
    x, offset, mask = _edge_inputs("random", (2, 4, 12, 13))
    with torch.no_grad():
        ref = Single().eval()(x, offset, mask).numpy()
    (got,) = _run(model16, x, offset, mask)
    assert np.isfinite(got).all()
    assert rel_l2(ref, got) <= 1e-2


@pytest.mark.parametrize("lowering, opset", [("std", 18), ("std", 13), ("portable", 15), ("plugin", 12),
                                             ("gridsample", 19)])
def test_inexpressible_lowering_raises_one_clear_value_error(lowering: str, opset: int) -> None:
    with pytest.raises(ValueError, match=f"{lowering}.*{'opset' if lowering != 'gridsample' else 'unknown'}"):
        check_lowering(lowering, opset)
    with pytest.raises(ValueError):
        dynamo_translation_table(lowering, opset)
    with pytest.raises(ValueError), torchscript_symbolic(lowering, opset):
        pass


def test_torchscript_symbolic_is_unregistered_on_exit() -> None:
    args = _edge_inputs("random", (1, 4, 5, 5))
    _export(Single(), args, "portable", False, 17)
    with pytest.raises(Exception), warnings.catch_warnings():  # noqa: B017  (torch's error varies by version)
        warnings.simplefilter("ignore")
        torch.onnx.export(Single(), args, io.BytesIO(), dynamo=False, opset_version=17)
