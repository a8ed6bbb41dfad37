"""Recognisers: each finds its block in the pasted variants (and nothing else), proposes reference blocks that
compute the foreign module's function, refuses what it cannot map exactly, and never modifies the module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from fixtures import seed_blocks
from torch import nn

from blocks_export.blocks import (
    CA,
    DCN,
    RECOGNIZERS,
    ACmix,
    CB2d,
    NotConvertible,
    SPDConv,
    randomize_,
    space_to_depth,
)
from blocks_export.blocks.acmix import recognize as recognize_acmix
from blocks_export.blocks.context_block import recognize as recognize_context_block
from blocks_export.blocks.coord_attn import recognize as recognize_coord_attention
from blocks_export.blocks.dcn import _offset_permutation
from blocks_export.blocks.dcn import recognize as recognize_deform_conv
from blocks_export.blocks.spd import recognize_spd_conv
from blocks_export.runtime.parity import rel_l2

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pasted_variants.py sits beside this file
import pasted_variants as pv  # noqa: E402

# (factory, input shape, recogniser label, reference class)
VARIANTS = {
    "CoordAtt-Hardswish": (lambda: pv.CoordAtt(16, 16), (2, 16, 6, 5), "CA", CA),
    "CoordAttMBv2": (lambda: pv.CoordAttMBv2(16, 16), (2, 16, 5, 7), "CA", CA),
    "CoordinateAttention": (lambda: pv.CoordinateAttention(16), (1, 16, 6, 4), "CA", CA),
    "seed-CA": (lambda: seed_blocks.CA(16, 16), (1, 16, 4, 6), "CA", CA),
    "CoordAtt-gate-module": (lambda: pv.CoordAttGateModule(16), (1, 16, 5, 3), "CA", CA),
    "mmcv-ContextBlock": (lambda: pv.ContextBlock(16, 1 / 8, "att", ("channel_add", "channel_mul")), (2, 16, 5, 4),
                          "CB2d", CB2d),
    "GlobalContext": (lambda: pv.GlobalContext(16), (1, 16, 3, 5), "CB2d", CB2d),
    "seed-CB2d-avg": (lambda: seed_blocks.CB2d(16, "avg", ["channel_mul"]), (1, 16, 4, 4), "CB2d", CB2d),
    "seed-ACmix": (lambda: seed_blocks.ACmix(8, 8, kernel_att=3, head=2), (1, 8, 6, 6), "ACmix", ACmix),
    "mmcv-DCNv2": (lambda: pv.ModulatedDeformConv2dPack(8, 8, 3, padding=1, deform_groups=2), (1, 8, 5, 6), "DCN",
                   DCN),
    "DCNv1-functional": (lambda: pv.DeformConvV1(8, 4), (1, 8, 6, 6), "DCN", DCN),
    "DCN-split-offsets": (lambda: pv.DCNSplitOffsets(8, 8), (1, 8, 5, 5), "DCN", DCN),
    "seed-DCN": (lambda: pv.SeedDCN(8), (1, 8, 5, 4), "DCN", DCN),
    "DCNv2-yolo-bn-act": (lambda: pv.DCNv2Yolo(8, 8), (1, 8, 5, 6), "DCN", nn.Sequential),
    "SPD": (lambda: pv.SPD(), (1, 3, 4, 6), "space_to_depth", space_to_depth),
    "seed-space_to_depth": (lambda: seed_blocks.space_to_depth(), (1, 3, 4, 6), "space_to_depth", space_to_depth),
    "SPDConvYolo": (lambda: pv.SPDConvYolo(4, 8), (2, 4, 6, 8), "SPDConv", SPDConv),
    "Focus": (lambda: pv.Focus(3, 8, 3), (1, 3, 8, 6), "SPDConv", SPDConv),
}

UNRELATED = {
    "conv": lambda: nn.Conv2d(16, 16, 3),
    "yolo-conv": lambda: pv.ConvBNAct(16, 16, 3),
    "head": lambda: pv.Head(16, 5),
    "sequential": lambda: nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU()),
    "hswish": lambda: pv.HSwish(),
    "grid": lambda: pv.GridBias(16),
    "device-branch": lambda: pv.DeviceBranch(16),
}


def _eval(factory, seed: int = 0) -> nn.Module:
    return randomize_(factory(), seed).eval()


def _out(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x.clone())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_only_the_matching_recogniser_claims_a_variant(variant: str):
    factory, _, label, ref_cls = VARIANTS[variant]
    module = _eval(factory)
    claims = {name: rec(module) for name, rec in RECOGNIZERS.items()}
    assert {name for name, c in claims.items() if c} == {label}
    assert all(type(c) is ref_cls for c in claims[label])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_candidate_computes_the_foreign_function_and_the_module_is_untouched(variant: str):
    factory, shape, label, _ = VARIANTS[variant]
    module = _eval(factory)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    candidates = RECOGNIZERS[label](module)
    assert {k: v for k, v in module.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    want = _out(module, x)
    errors = [rel_l2(want, _out(c.eval(), x)) for c in candidates]
    assert min(errors) <= 1e-5, errors


@pytest.mark.parametrize("name", list(UNRELATED))
def test_unrelated_modules_are_not_claimed(name: str):
    module = _eval(UNRELATED[name])
    assert all(rec(module) == () for rec in RECOGNIZERS.values())


def test_coord_attention_branches_follow_the_names_then_the_swap():
    x = torch.randn(1, 16, 6, 5)
    renamed = _eval(lambda: pv.CoordinateAttention(16))  # attn_w registered before attn_h
    hinted, swapped = recognize_coord_attention(renamed)
    assert rel_l2(_out(renamed, x), _out(hinted, x)) <= 1e-5
    assert rel_l2(_out(renamed, x), _out(swapped, x)) > 1e-3
    paper = _eval(lambda: pv.CoordAttMBv2(16, 16))  # conv2 -> a_h, conv3 -> a_w: registration order
    first, _ = recognize_coord_attention(paper)
    assert rel_l2(_out(paper, x), _out(first, x)) <= 1e-5


def test_coord_attention_with_another_activation_is_refused():
    with pytest.raises(NotConvertible, match="hard-swish"):
        recognize_coord_attention(pv.CoordAttSiLU(16, 16))


def test_context_block_keeps_the_mmcv_bottleneck_width_and_fusion_names():
    (ref,) = recognize_context_block(_eval(lambda: pv.ContextBlock(32, 1 / 16, "att", ("channel_mul",))))
    assert ref.pool == "att" and ref.channel_add_conv is None
    assert ref.channel_mul_conv[0].out_channels == 2


def test_unnamed_context_branch_is_tried_as_add_then_mul():
    module = _eval(lambda: pv.GlobalContext(16))
    add, mul = recognize_context_block(module)
    assert add.channel_mul_conv is None and mul.channel_add_conv is None
    x = torch.randn(1, 16, 4, 4)
    assert rel_l2(_out(module, x), _out(mul, x)) <= 1e-5
    assert rel_l2(_out(module, x), _out(add, x)) > 1e-3


def test_acmix_configuration_is_read_from_the_layers():
    (ref,) = recognize_acmix(seed_blocks.ACmix(8, 16, kernel_att=5, head=2, stride=2))
    assert (ref.in_planes, ref.out_planes, ref.kernel_att, ref.head, ref.stride) == (8, 16, 5, 2, 2)


def test_acmix_the_reference_cannot_run_is_refused():
    with pytest.raises(NotConvertible, match="kernel_conv=5"):
        recognize_acmix(seed_blocks.ACmix(8, 8, kernel_att=3, head=2, kernel_conv=5))


def test_acmix_with_a_dep_conv_bias_is_refused():
    module = seed_blocks.ACmix(8, 8, kernel_att=3, head=2)
    module.dep_conv.bias = nn.Parameter(torch.ones(8))
    with pytest.raises(NotConvertible, match="bias"):
        recognize_acmix(module)


def test_mmcv_offset_layout_maps_without_permutation():
    module = _eval(lambda: pv.ModulatedDeformConv2dPack(8, 8, 3, padding=1, deform_groups=2))
    candidates = recognize_deform_conv(module)
    assert candidates[0].modulated and candidates[0].deformable_groups == 2
    x = torch.randn(1, 8, 6, 5)
    assert rel_l2(_out(module, x), _out(candidates[0], x)) <= 1e-5


def test_split_offset_layout_maps_by_permuting_the_offset_conv():
    module = _eval(lambda: pv.DCNSplitOffsets(8, 8, deformable_groups=2))
    plain, permuted = recognize_deform_conv(module)[:2]
    x = torch.randn(1, 8, 6, 5)
    assert rel_l2(_out(module, x), _out(plain, x)) > 1e-3
    assert rel_l2(_out(module, x), _out(permuted, x)) <= 1e-5


def test_offset_permutation_interleaves_dy_and_dx_per_tap():
    # dg=1, 2 taps: old channels [dy0, dy1, dx0, dx1] -> new [dy0, dx0, dy1, dx1]
    assert _offset_permutation(1, 2).tolist() == [0, 2, 1, 3]
    # dg=2, 1 tap: old [dy_g0, dy_g1, dx_g0, dx_g1] -> new [dy_g0, dx_g0, dy_g1, dx_g1]
    assert _offset_permutation(2, 1).tolist() == [0, 2, 1, 3]


def test_offset_conv_with_the_wrong_channel_count_is_refused():
    module = pv.DeformConvV1(8, 8)
    module.p_conv = nn.Conv2d(8, 10, 3, 2, 1)
    with pytest.raises(NotConvertible, match="10 channels"):
        recognize_deform_conv(module)


def test_probing_a_module_in_training_mode_leaves_its_batchnorm_statistics():
    module = randomize_(pv.SPDConvYolo(4, 8)).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    assert recognize_spd_conv(module)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert module.training
