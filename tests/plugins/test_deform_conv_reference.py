"""The numpy reference of the ``ModulatedDeformConv2d`` plugin op computes torchvision's deform_conv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import deform_conv2d

from blocks_export.plugins.deform_conv_contract import PLUGIN_INPUT_ORDER, DeformConvParams
from blocks_export.plugins.deform_conv_reference import modulated_deform_conv2d
from blocks_export.runtime.parity import rel_l2

# (groups, offset_groups, stride, padding, dilation, kernel, batch)
CONFIGS = [
    (1, 1, (1, 1), (0, 0), (1, 1), (1, 1), 1),
    (2, 2, (1, 1), (1, 1), (1, 1), (3, 3), 2),
    (1, 4, (2, 2), (2, 2), (1, 1), (3, 5), 3),
    (2, 1, (2, 1), (0, 2), (2, 1), (3, 3), 1),
    (2, 4, (1, 2), (1, 0), (2, 2), (3, 5), 2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_plugin_reference_matches_torchvision(cfg: tuple) -> None:
    groups, og, stride, padding, dilation, (kh, kw), n = cfg
    g = torch.Generator().manual_seed(1)
    params = DeformConvParams(stride, padding, dilation, groups, og, True)
    x = torch.randn(n, 8, 11, 13, generator=g)
    ho, wo = params.output_size(11, 13, (kh, kw))
    offset = torch.randn(n, 2 * og * kh * kw, ho, wo, generator=g) * 4.0
    mask = torch.rand(n, og * kh * kw, ho, wo, generator=g)
    weight = torch.randn(6, 8 // groups, kh, kw, generator=g)
    bias = torch.randn(6, generator=g)
    ref = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    got = modulated_deform_conv2d(x.numpy(), offset.numpy(), mask.numpy(), weight.numpy(), bias.numpy(), params)
    assert got.shape == tuple(ref.shape)
    assert rel_l2(ref, got) <= 1e-5


def test_plugin_reference_accepts_float16_and_returns_float16() -> None:
    g = torch.Generator().manual_seed(2)
    params = DeformConvParams((1, 1), (1, 1), (1, 1), 1, 1, True)
    x, offset = torch.randn(1, 4, 6, 7, generator=g), torch.randn(1, 18, 6, 7, generator=g)
    mask, weight, bias = torch.rand(1, 9, 6, 7, generator=g), torch.randn(5, 4, 3, 3, generator=g), torch.randn(5)
    ref = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    got = modulated_deform_conv2d(*(t.half().numpy() for t in (x, offset, mask, weight, bias)), params)
    assert got.dtype == np.float16
    assert rel_l2(ref, got) <= 1e-2


def test_plugin_reference_rejects_inconsistent_shapes() -> None:
    params = DeformConvParams(offset_groups=2)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        modulated_deform_conv2d(np.zeros((1, 4, 5, 5), np.float32), np.zeros((1, 18, 5, 5), np.float32),
                                np.zeros((1, 9, 5, 5), np.float32), np.zeros((2, 4, 3, 3), np.float32), None, params)


@pytest.mark.parametrize("kwargs", [{"stride": (0, 1)}, {"padding": (-1, 0)}, {"dilation": (1,)}, {"groups": 0},
                                    {"offset_groups": 0}])
def test_params_reject_invalid_values(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="DeformConvParams"):
        DeformConvParams(**kwargs)


def test_plugin_attributes_round_trip_and_name_the_plugin_fields() -> None:
    params = DeformConvParams((2, 1), (0, 3), (1, 2), 2, 4, True)
    attrs = params.plugin_attributes()
    # The plugin's fields (TensorRT plugin config) plus the parser's version keys; inputs in plugin order.
    assert set(attrs) == {"stride", "padding", "dilation", "group", "deformable_group", "plugin_version",
                          "plugin_namespace"}
    assert PLUGIN_INPUT_ORDER == ("x", "offset", "mask", "weight", "bias")
    assert DeformConvParams.from_plugin_attributes(attrs) == params
    onnx_attrs = params.onnx_attributes()
    assert onnx_attrs["pads"] == [0, 3, 0, 3] and onnx_attrs["offset_group"] == 4
