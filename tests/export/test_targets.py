"""Target profiles: names, lookups, and the cells that follow from documented runtime facts."""

from __future__ import annotations

import pytest

from blocks_export.export.targets import DEFAULT_TARGET, TARGETS, get_target, ort_deform_conv
from blocks_export.export.trt_ops import SUPPORTED


def test_the_six_targets_exist_and_ort_is_the_default():
    assert set(TARGETS) == {"jetpack5", "jetpack6.0", "jetpack6", "trt10", "trt11", "ort"}
    assert DEFAULT_TARGET == "ort" and get_target(None).name == "ort"


def test_unknown_target_error_lists_the_known_names():
    with pytest.raises(ValueError) as e:
        get_target("jetpack7")
    assert "'jetpack7'" in str(e.value)
    for name in ("jetpack5", "jetpack6.0", "jetpack6", "trt10", "trt11", "ort"):
        assert name in str(e.value)


@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if t.is_tensorrt])
def test_export_opset_fits_the_parser_and_the_deform_conv_lowering(name):
    t = get_target(name)
    assert t.opset <= t.max_opset
    if t.deform_conv == "std":
        assert t.opset >= 19  # ONNX DeformConv is opset 19
        assert "DeformConv" in SUPPORTED[t.parser_table]
    else:
        assert "DeformConv" not in SUPPORTED[t.parser_table]


@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if t.is_tensorrt])
def test_layernorm_is_decomposed_exactly_where_the_parser_lacks_it(name):
    t = get_target(name)
    assert (t.layernorm == "decompose") == ("LayerNormalization" not in SUPPORTED[t.parser_table])


def test_fp16_strategy_follows_the_tensorrt_generation():
    assert get_target("jetpack5").fp16 == get_target("jetpack6.0").fp16 == "builder_flag"
    assert get_target("jetpack6").fp16 == get_target("trt10").fp16 == "strongly_typed"
    assert get_target("trt11").fp16 == "graph"
    assert [get_target(n).trt_major for n in ("jetpack5", "jetpack6.0", "jetpack6", "trt10", "trt11", "ort")] \
        == [8, 8, 10, 10, 11, None]


@pytest.mark.parametrize("version, lowering", [("1.24.1", "portable"), ("1.25.0", "std"), ("1.32.0", "std"),
                                               ("1.9.0", "portable"), ("2.0.0rc1", "std")])
def test_onnxruntime_deform_conv_lowering_follows_the_kernel_release(version, lowering):
    assert ort_deform_conv(version) == lowering


def test_tensorrt_8_targets_use_an_exporter_that_writes_their_opset():
    # torch's dynamo exporter writes opset >= 18; the 8.x parsers read up to 17.
    for name in ("jetpack5", "jetpack6.0"):
        t = get_target(name)
        assert t.opset <= 17 and t.exporter == "torchscript"
    assert get_target("jetpack5").opset < 17  # LayerNormalization (opset 17) is then never written
    assert all(get_target(n).exporter == "dynamo" for n in ("jetpack6", "trt10", "trt11", "ort"))
