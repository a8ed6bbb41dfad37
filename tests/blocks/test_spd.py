"""SPD: the space_to_depth and SPDConv twins compute the reference's function at every even shape."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_twin_matches, export_dynamic, run_ort
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from blocks_export.blocks import (
    SpaceToDepthExport,
    SPDConv,
    SPDConvExport,
    randomize_,
    space_to_depth,
    to_export,
)
from blocks_export.runtime.parity import rel_l2

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pasted_variants.py sits beside this file
import pasted_variants as pv  # noqa: E402

SHAPES = [(1, 2, 2), (2, 2, 8), (3, 6, 2), (1, 14, 10), (4, 10, 18), (2, 98, 6), (1, 4, 102), (1, 100, 98)]


def make_spd_conv(c1: int, c2: int, k: int, s: int, seed: int = 0) -> SPDConv:
    return randomize_(SPDConv(c1, c2, k, s), seed).eval()


def test_space_to_depth_twin_uses_the_seed_channel_order():
    """Channel (2 * s + r) * C + c holds x[:, c, 2i + r, 2j + s] (column phase first), checked element by element."""
    n, c, h, w = 2, 3, 4, 6
    x = torch.arange(n * c * h * w, dtype=torch.float64).reshape(n, c, h, w)
    y = to_export(space_to_depth())(x)
    assert y.shape == (n, 4 * c, h // 2, w // 2)
    for ch in range(c):
        for r in range(2):
            for s in range(2):
                for i in range(h // 2):
                    for j in range(w // 2):
                        assert torch.equal(y[:, (2 * s + r) * c + ch, i, j], x[:, ch, 2 * i + r, 2 * j + s])
    # pixel_unshuffle holds the same values channel-major: channel c * 4 + r * 2 + s.
    pu = F.pixel_unshuffle(x, 2).reshape(n, c, 2, 2, h // 2, w // 2)  # (N, C, r, s, H/2, W/2)
    assert torch.equal(y, pu.permute(0, 3, 2, 1, 4, 5).reshape(n, 4 * c, h // 2, w // 2))


@pytest.mark.parametrize("c", [1, 3, 16])
@pytest.mark.parametrize("n,h,w", SHAPES)
def test_space_to_depth_twin_matches_reference_at_any_even_shape(c, n, h, w):
    x = torch.randn(n, c, h, w)
    assert torch.equal(to_export(space_to_depth())(x), space_to_depth()(x))  # pure data movement: bit-exact


@pytest.mark.parametrize("c1,c2,k,s", [(1, 2, 3, 1), (3, 8, 3, 2), (8, 8, 1, 1), (4, 6, 2, 1), (2, 3, 5, 3)])
@pytest.mark.parametrize("n,h,w", SHAPES)
def test_spd_conv_twin_matches_reference_at_any_even_shape(c1, c2, k, s, n, h, w):
    assert_twin_matches(make_spd_conv(c1, c2, k, s), (n, c1, h, w))


@settings(max_examples=12, deadline=None)
@given(c1=st.integers(1, 24), c2=st.integers(1, 24), k=st.integers(1, 5), s=st.integers(1, 3), n=st.integers(1, 4),
       h2=st.integers(1, 50), w2=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_spd_twins_match_reference_property(c1, c2, k, s, n, h2, w2, seed):
    shape = (n, c1, 2 * h2, 2 * w2)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(to_export(space_to_depth())(x), space_to_depth()(x))
    assert_twin_matches(make_spd_conv(c1, c2, k, s, seed), shape, seed)


def test_spd_conv_twin_is_the_seed_rearrangement_then_one_convolution_with_batchnorm_folded():
    twin = to_export(make_spd_conv(4, 8, 3, 2))
    assert isinstance(twin, SPDConvExport) and isinstance(twin.spd, SpaceToDepthExport)
    convs = [m for m in twin.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].stride == (2, 2)
    assert convs[0].in_channels == 16 and convs[0].bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())


@pytest.mark.parametrize("make", [space_to_depth, lambda: make_spd_conv(2, 4, 3, 1)], ids=["spd", "spd_conv"])
@pytest.mark.parametrize("h,w", [(5, 4), (4, 7), (3, 3)])
def test_spd_odd_sizes_raise_the_same_value_error_in_reference_and_twin(make, h, w):
    ref = make()
    twin = to_export(ref)
    x = torch.randn(1, 2, h, w)
    for module in (ref, twin):
        with pytest.raises(ValueError, match=f"input {h}x{w} must have even H and W"):
            module(x)


def test_spd_twin_rejects_inputs_that_are_not_4d():
    with pytest.raises(ValueError, match=r"\(2, 4, 4\) must be 4-D"):
        SpaceToDepthExport()(torch.randn(2, 4, 4))


@pytest.mark.parametrize("dynamo", [True, False])
@pytest.mark.parametrize("block", ["spd", "spd_conv"])
def test_spd_twin_onnx_matches_reference_at_other_shapes(dynamo, block):
    ref = space_to_depth() if block == "spd" else make_spd_conv(8, 16, 3, 1, seed=2)
    model = export_dynamic(to_export(ref), torch.randn(2, 8, 20, 24), dynamo=dynamo)
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    if block == "spd_conv":  # BatchNorm folded; the rearrangement stays the seed's slices (fused by onnxruntime)
        assert "BatchNormalization" not in ops and {"Slice", "Concat", "Conv"} <= ops, ops
    for shape in [(1, 8, 32, 16), (3, 8, 6, 10), (1, 8, 98, 34)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = ref(x)
        assert rel_l2(expected, run_ort(model, x)) <= 1e-5, shape


def test_spd_twin_traces_as_one_op_inside_export_as_one_op_and_its_onnx_is_the_same_slices():
    from blocks_export.blocks import onnx_translations
    from blocks_export.blocks.spd import export_as_one_op

    ref = make_spd_conv(4, 8, 3, 1, seed=5)
    twin = to_export(ref)
    dims = ({0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},)
    x = torch.randn(2, 4, 12, 10, generator=torch.Generator().manual_seed(1))

    def targets(program):
        return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]

    plain = torch.export.export(twin, (x,), dynamic_shapes=dims, strict=False)
    assert "blocks_export.space_to_depth.default" not in targets(plain)  # the library default: the slices
    with export_as_one_op():
        program = torch.export.export(twin, (x,), dynamic_shapes=dims, strict=False)
    assert targets(program).count("blocks_export.space_to_depth.default") == 1
    assert "aten.slice.Tensor" not in targets(program)
    table = onnx_translations(18)
    graphs = [torch.onnx.export(p, (x,), dynamo=True, opset_version=18, custom_translation_table=table).model_proto
              for p in (plain, program)]
    ops = [sorted(n.op_type for n in g.graph.node if n.op_type in ("Slice", "Concat", "Conv")) for g in graphs]
    assert ops[0] == ops[1] and ops[1].count("Slice") == 6, ops
    model = graphs[1].SerializeToString()
    for shape in [(1, 4, 6, 14), (3, 4, 20, 8), (1, 4, 2, 2)]:
        xs = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            want = ref(xs)
        assert rel_l2(want, run_ort(model, xs)) <= 1e-5, shape


def _recognised_twin(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """The twin ``rewrite_model`` swaps in for ``module`` (recognised from its structure)."""
    from blocks_export.blocks import rewrite_model

    new, report = rewrite_model(nn.Sequential(module), x)
    assert [(r.name, r.recognized_as) for r in report.replaced] == [("0", "SPDConv")], report.lines()
    assert isinstance(new[0], SPDConvExport)
    return new[0]


def test_fused_spd_conv_is_converted_with_its_own_weights_and_bias_bit_exactly():
    """Ultralytics' ``fuse()`` (BatchNorm folded into the conv's bias, no ``bn``) runs before the rewrite: the twin
    takes that convolution as it is, so it computes the very same numbers at any even shape."""

    fused = randomize_(pv.SPDConvFused(6, 10), seed=4).eval()
    assert fused.conv.conv.bias is not None and fused.conv.conv.bias.abs().min() > 0
    twin = _recognised_twin(fused, torch.randn(1, 6, 16, 20))
    (conv,) = [m for m in twin.modules() if isinstance(m, nn.Conv2d)]
    assert torch.equal(conv.weight, fused.conv.conv.weight) and torch.equal(conv.bias, fused.conv.conv.bias)
    for shape in [(1, 6, 16, 20), (2, 6, 2, 34), (3, 6, 30, 8)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            assert torch.equal(twin(x), fused(x)), shape


def test_spd_conv_with_a_conv_bias_before_its_batchnorm_folds_exactly():
    """A conv bias in front of the BatchNorm folds with it: s * (b - mean) + beta. In float64 the twin equals the
    original to rounding (so the fold is exact algebra), and in fp32 it passes the fp32 rule; dropping the conv
    bias from the fold would miss by the bias times the BatchNorm scale."""
    from blocks_export.runtime.parity import compare

    block = randomize_(pv.SPDConvBiasBN(4, 8), seed=6).eval()
    bias = block.conv.conv.bias
    assert bias is not None and bias.abs().min() > 0
    x = torch.randn(2, 4, 12, 10, generator=torch.Generator().manual_seed(3))
    twin32 = _recognised_twin(block, x)
    twin64 = _recognised_twin(copy.deepcopy(block).double(), x.double())
    ref64 = copy.deepcopy(block).double()
    for shape in [(2, 4, 12, 10), (1, 4, 6, 26)]:
        xs = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)
        with torch.no_grad():
            fp64 = compare([ref64(xs)], [twin64(xs)], "fp64")
            fp32 = compare([block(xs.float())], [twin32(xs.float())], "fp32")
            unbiased = copy.deepcopy(ref64)
            unbiased.conv.conv.bias.zero_()
            missed = compare([ref64(xs)], [unbiased(xs)], "fp64")
        assert fp64.outputs[0].max_rel <= 1e-12, fp64.lines()
        assert fp32, fp32.lines()
        assert missed.outputs[0].max_rel > 1e-3  # the bias matters: a fold without it could not pass
