"""Hypothesis fuzz of the block conversions: random valid configurations, input shapes and weights, extreme
weight and input scales and BatchNorm statistics near zero variance. Each twin must equal its reference within
a scale-aware tolerance, or the conversion must refuse with a one-line error; never a silent mismatch.

Scale-aware: the truth is the reference block in float64; the twin (float32) may be at most a few times further
from it than the float32 reference itself is (plus the fp32 parity floor), so amplification by a near-zero
BatchNorm variance or huge weights is allowed only as far as float32 arithmetic forces it on the reference too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from blocks_export.blocks import BLOCKS, CA, DCN, ACmix, CB2d, SPDConv, randomize_, space_to_depth, to_export
from blocks_export.runtime.parity import RULES, rel_l2

NOISE_FACTOR = 8.0  # the twin may be this many times further from float64 truth than the float32 reference
FLOOR = RULES["fp32"].rel_l2

BUILDERS: dict[str, Callable[[st.DataObject], tuple[nn.Module, int]]] = {}


def block(name: str) -> Callable[[Callable[[st.DataObject], tuple[nn.Module, int]]], Callable]:
    def register(fn: Callable[[st.DataObject], tuple[nn.Module, int]]) -> Callable:
        BUILDERS[name] = fn
        return fn
    return register


@block("CA")
def _ca(data: st.DataObject) -> tuple[nn.Module, int]:
    c = data.draw(st.sampled_from([4, 8, 16]))
    return CA(c, c, reduction=data.draw(st.sampled_from([1, 2, 4, 32]))), c


@block("CB2d")
def _cb(data: st.DataObject) -> tuple[nn.Module, int]:
    c = data.draw(st.sampled_from([4, 8, 16]))
    fusions = data.draw(st.sampled_from([["channel_add"], ["channel_mul"], ["channel_add", "channel_mul"]]))
    return CB2d(c, pool=data.draw(st.sampled_from(["att", "avg"])), fusions=fusions), c


@block("SPDConv")
def _spdconv(data: st.DataObject) -> tuple[nn.Module, int]:
    c = data.draw(st.sampled_from([1, 3, 4]))
    return SPDConv(c, data.draw(st.sampled_from([2, 8])), k=data.draw(st.sampled_from([1, 3]))), c


@block("space_to_depth")
def _spd(data: st.DataObject) -> tuple[nn.Module, int]:
    return space_to_depth(), data.draw(st.sampled_from([1, 3]))


@block("ACmix")
def _acmix(data: st.DataObject) -> tuple[nn.Module, int]:
    head = data.draw(st.sampled_from([1, 2, 4]))
    c = head * data.draw(st.sampled_from([2, 4]))
    return ACmix(c, c, kernel_att=data.draw(st.sampled_from([3, 7])), head=head,
                 stride=data.draw(st.sampled_from([1, 2]))), c


@block("DCN")
def _dcn(data: st.DataObject) -> tuple[nn.Module, int]:
    c = data.draw(st.sampled_from([2, 4]))
    return DCN(c, data.draw(st.sampled_from([2, 4])), k=3, s=data.draw(st.sampled_from([1, 2]))), c


def _near_zero_variance_(module: nn.Module, var: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            m.running_var.fill_(var)


def _build(name: str, data: st.DataObject) -> tuple[nn.Module, int]:
    """The block's fuzzed configurations, or its spec's example for a block without a builder here."""
    if name in BUILDERS:
        return BUILDERS[name](data)
    example = next(s for s in BLOCKS if s.name == name).example()
    return example.module, example.shapes[0][1]


@pytest.mark.parametrize("name", sorted(s.name for s in BLOCKS))
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_twin_matches_reference_or_conversion_refuses(name: str, data: st.DataObject) -> None:
    torch.manual_seed(0)
    module, channels = _build(name, data)
    module.eval()
    weight_scale = data.draw(st.sampled_from([0.5, 1e-3, 30.0]), label="weight_scale")
    randomize_(module, data.draw(st.integers(0, 2**16), label="seed"), scale=weight_scale)
    var = data.draw(st.sampled_from([None, 1e-3, 1e-6, 0.0]), label="running_var")
    if var is not None:
        _near_zero_variance_(module, var)
    h = 2 * data.draw(st.integers(2, 6), label="h/2")
    w = 2 * data.draw(st.integers(2, 6), label="w/2")
    x_scale = data.draw(st.sampled_from([1.0, 1e-3, 1e3]), label="input_scale")
    x = torch.randn(data.draw(st.sampled_from([1, 2])), channels, h, w,
                    generator=torch.Generator().manual_seed(1)) * x_scale

    with torch.no_grad():
        truth = copy.deepcopy(module).double()(x.double())
        reference = module(x)
        try:
            twin = to_export(module)
        except (ValueError, TypeError) as e:  # a refusal: must say why, in one line
            assert str(e).strip() and len(str(e).strip().splitlines()) == 1, repr(e)
            return
        got = twin.eval()(x)
    if not torch.isfinite(truth).all():
        return  # the float64 reference itself overflows: nothing to compare against
    assert got.shape == truth.shape
    assert torch.isfinite(got).all() or not torch.isfinite(reference).all(), "twin non-finite, reference finite"
    if not torch.isfinite(reference).all():
        return
    noise = rel_l2(truth, reference)
    err = rel_l2(truth, got)
    assert err <= max(FLOOR, NOISE_FACTOR * noise), (f"{name}: twin rel_l2 {err:.3e} vs float32 reference "
                                                     f"{noise:.3e} (weights x{weight_scale}, var {var}, x{x_scale})")
