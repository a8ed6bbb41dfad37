"""Coordinate Attention: the export twin computes the reference's function at every shape and configuration."""

from __future__ import annotations

import onnx
import pytest
import torch
from fixtures import seed_blocks
from helpers import assert_twin_matches, export_dynamic, run_ort
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from blocks_export.blocks import CA, CoordAttExport, h_swish, randomize_, to_export
from blocks_export.blocks.coord_attn import fold_batchnorm
from blocks_export.runtime.parity import rel_l2

SHAPES = [(1, 1, 1), (2, 1, 5), (3, 7, 1), (1, 13, 6), (4, 9, 11), (2, 97, 3), (1, 5, 101), (1, 98, 99)]


def make_ca(inp: int, oup: int, reduction: int, seed: int = 0) -> CA:
    return randomize_(CA(inp, oup, reduction), seed).eval()


def test_h_swish_equals_hardswish_in_fp64():
    x = torch.cat([torch.linspace(-8, 8, 100_001, dtype=torch.float64), torch.tensor([-3.0, 3.0, 0.0]).double()])
    ref, got = h_swish()(x.clone()), nn.Hardswish()(x)
    # Only the rounding of x * (r / 6) against x * r / 6 may differ: a few ulps.
    assert torch.allclose(got, ref, rtol=4 * torch.finfo(torch.float64).eps, atol=0)
    assert (got != ref).float().mean() < 0.5  # mostly bit-identical


def test_means_over_one_axis_equal_the_adaptive_pools():
    x = torch.randn(2, 3, 13, 7, dtype=torch.float64)
    for got, ref in [(x.mean(3, keepdim=True), nn.AdaptiveAvgPool2d((13, 1))(x)),
                     (x.mean(2, keepdim=True), nn.AdaptiveAvgPool2d((1, 7))(x))]:
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1e-14 * ref.abs().max()  # summation order only


def test_fold_batchnorm_equals_conv_then_eval_batchnorm():
    conv, bn = nn.Conv2d(6, 5, 3, padding=1).double(), nn.BatchNorm2d(5).double()
    randomize_(nn.Sequential(conv, bn), seed=3).eval()
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        ref, got = bn(conv(x)), fold_batchnorm(conv, bn)(x)
    assert (got - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_per_branch_transform_equals_concat_split():
    """conv1 + BN + h_swish on the concatenated [x_h; x_w] equals the same applied to each branch."""
    ca = make_ca(16, 16, 4, seed=1).double()
    x_h, x_w = torch.randn(2, 16, 7, 1, dtype=torch.float64), torch.randn(2, 16, 5, 1, dtype=torch.float64)
    with torch.no_grad():
        joint = ca.act(ca.bn1(ca.conv1(torch.cat([x_h, x_w], 2))))
        per_branch = torch.cat([ca.act(ca.bn1(ca.conv1(x_h))), ca.act(ca.bn1(ca.conv1(x_w)))], 2)
    assert (per_branch - joint).abs().max() <= 1e-14 * joint.abs().max()


@pytest.mark.parametrize("inp,oup,reduction", [(16, 16, 4), (64, 64, 32), (3, 3, 1), (1, 5, 32), (6, 1, 2)])
@pytest.mark.parametrize("n,h,w", SHAPES)
def test_coord_attn_twin_matches_reference_at_any_shape(inp, oup, reduction, n, h, w):
    ref = make_ca(inp, oup, reduction)
    assert_twin_matches(ref, (n, inp, h, w))


@settings(max_examples=12, deadline=None)
@given(inp=st.integers(1, 40), oup_mode=st.sampled_from(["same", "one"]), reduction=st.integers(1, 40),
       n=st.integers(1, 4), h=st.integers(1, 100), w=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_coord_attn_twin_matches_reference_property(inp, oup_mode, reduction, n, h, w, seed):
    ref = make_ca(inp, inp if oup_mode == "same" else 1, reduction, seed)
    assert_twin_matches(ref, (n, inp, h, w), seed)


def test_coord_attn_twin_has_no_shape_dependent_modules():
    twin = to_export(make_ca(16, 16, 4))
    assert isinstance(twin, CoordAttExport)
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Unfold, nn.BatchNorm2d)) for m in twin.modules())


@pytest.mark.parametrize("inp,oup", [(4, 8), (8, 4), (3, 2)])
def test_coord_attn_with_unbroadcastable_channels_raises_value_error(inp, oup):
    # The original builds such a module and fails in forward: [N, inp, H, W] * [N, oup, 1, W].
    x = torch.randn(1, inp, 4, 5)
    with pytest.raises(RuntimeError):
        seed_blocks.CA(inp, oup)(x)
    with pytest.raises(ValueError, match=f"oup={oup} must equal inp={inp}"):
        CA(inp, oup)
    mip = max(8, inp // 32)
    with pytest.raises(ValueError, match=f"oup={oup} must equal inp={inp}"):
        CoordAttExport(nn.Conv2d(inp, mip, 1), nn.Conv2d(mip, oup, 1), nn.Conv2d(mip, oup, 1))


def test_reference_rejects_reduction_below_one():
    with pytest.raises(ValueError, match="reduction=0"):
        CA(8, 8, reduction=0)


@pytest.mark.parametrize("dynamo", [True, False])
def test_coord_attn_twin_onnx_matches_reference_at_other_shapes(dynamo):
    ref = make_ca(16, 16, 4, seed=2)
    model = export_dynamic(to_export(ref), torch.randn(2, 16, 20, 24), dynamo=dynamo)
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert not ops & {"AveragePool", "GlobalAveragePool", "Concat", "Split", "Transpose"}, ops
    for shape in [(1, 16, 32, 16), (3, 16, 7, 9), (1, 16, 97, 33)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = ref(x)
        assert rel_l2(expected, run_ort(model, x)) <= 1e-5, shape


def test_stock_export_of_reference_is_silently_wrong_at_other_shapes_and_twin_is_right():
    """The reference's AdaptiveAvgPool2d((h, 1)) is baked in as an AveragePool at the export size (20x24)."""
    ref = make_ca(16, 16, 4, seed=4)
    example, other = torch.randn(1, 16, 20, 24), torch.randn(1, 16, 32, 16)
    stock = export_dynamic(ref, example, dynamo=True)
    twin = export_dynamic(to_export(ref), example, dynamo=True)
    with torch.no_grad():
        expected = ref(other)
    stock_out = run_ort(stock, other)  # runs without any error ...
    assert stock_out.shape == tuple(expected.shape)
    assert rel_l2(expected, stock_out) > 1e-3  # ... and is wrong
    assert rel_l2(expected, run_ort(twin, other)) <= 1e-5
