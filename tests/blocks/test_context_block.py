"""GCNet context block: the export twin computes the reference's function at every shape and configuration."""

from __future__ import annotations

import onnx
import pytest
import torch
from helpers import assert_twin_matches, export_dynamic, run_ort
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from blocks_export.blocks import CB2d, CB2dExport, randomize_, to_export
from blocks_export.blocks.context_block import ChannelTransform
from blocks_export.runtime.parity import rel_l2

FUSIONS = [["channel_add"], ["channel_mul"], ["channel_add", "channel_mul"], ["channel_mul", "channel_add"]]
SHAPES = [(1, 1, 1), (2, 1, 6), (3, 5, 1), (1, 7, 9), (4, 12, 5), (2, 97, 3), (1, 4, 101), (1, 99, 98)]


def make_cb(inplanes: int, pool: str, fusions: list[str], seed: int = 0) -> CB2d:
    # randomize_ replaces the zero-initialised last convolutions, which would make the fusions no-ops.
    return randomize_(CB2d(inplanes, pool, fusions), seed).eval()


def test_channel_transform_equals_reference_sequential_on_a_1x1_map():
    ref = make_cb(12, "att", ["channel_add"], seed=5).double().channel_add_conv
    context = torch.randn(3, 12, dtype=torch.float64)
    with torch.no_grad():
        expected = ref(context[:, :, None, None])[:, :, 0, 0]
        got = ChannelTransform.from_reference(ref)(context)
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_attention_pooling_is_a_softmax_weighted_mean_over_all_positions():
    """Independent oracle: context[n, c] = sum_p softmax(mask[n, :])[p] * x[n, c, p] over the H*W positions."""
    ref = make_cb(8, "att", ["channel_mul"], seed=6).double()
    twin = to_export(ref)
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    with torch.no_grad():
        logits = torch.einsum("nchw,c->nhw", x, ref.conv_mask.weight[0, :, 0, 0]) + ref.conv_mask.bias[0]
        weights = torch.exp(logits) / torch.exp(logits).sum((1, 2), keepdim=True)
        expected = torch.einsum("nchw,nhw->nc", x, weights)
        got = twin.spatial_pool(x)
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


@pytest.mark.parametrize("pool", ["att", "avg"])
@pytest.mark.parametrize("fusions", FUSIONS, ids="+".join)
@pytest.mark.parametrize("n,h,w", SHAPES)
def test_context_block_twin_matches_reference_at_any_shape(pool, fusions, n, h, w):
    assert_twin_matches(make_cb(16, pool, fusions), (n, 16, h, w))


@settings(max_examples=12, deadline=None)
@given(inplanes=st.integers(4, 48), pool=st.sampled_from(["att", "avg"]), fusions=st.sampled_from(FUSIONS),
       n=st.integers(1, 4), h=st.integers(1, 100), w=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_context_block_twin_matches_reference_property(inplanes, pool, fusions, n, h, w, seed):
    assert_twin_matches(make_cb(inplanes, pool, fusions, seed), (n, inplanes, h, w), seed)


def test_context_block_twin_has_no_shape_dependent_modules():
    twin = to_export(make_cb(16, "avg", ["channel_add"]))
    assert isinstance(twin, CB2dExport)
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Unfold)) for m in twin.modules())


@pytest.mark.parametrize("inplanes", [1, 2, 3])
def test_context_block_with_fewer_than_4_planes_raises_value_error(inplanes):
    # The original builds a 0-channel bottleneck and fails inside the first convolution.
    with pytest.raises(ValueError, match=f"inplanes={inplanes} must be >= 4"):
        CB2d(inplanes)
    with pytest.raises(ValueError, match=f"inplanes={inplanes} must be >= 4"):
        ChannelTransform(nn.Linear(inplanes, 0), nn.LayerNorm(0), nn.Linear(0, inplanes))


@pytest.mark.parametrize("dynamo", [True, False])
@pytest.mark.parametrize("pool", ["att", "avg"])
def test_context_block_twin_onnx_matches_reference_at_other_shapes(dynamo, pool):
    ref = make_cb(16, pool, ["channel_add", "channel_mul"], seed=2)
    model = export_dynamic(to_export(ref), torch.randn(2, 16, 20, 24), dynamo=dynamo)
    # LayerNorm stays one LayerNormalization node; target-specific steps rewrite it later.
    assert "LayerNormalization" in {n.op_type for n in onnx.load_from_string(model).graph.node}
    for shape in [(1, 16, 32, 16), (3, 16, 7, 9), (4, 16, 97, 33)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = ref(x)
        assert rel_l2(expected, run_ort(model, x)) <= 1e-5, shape
