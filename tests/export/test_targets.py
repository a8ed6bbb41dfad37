"""Target profiles: names, lookups, and the cells that follow from documented runtime facts."""

from __future__ import annotations

import pytest

from blocks_export.export.targets import DEFAULT_TARGET, TARGETS, get_target, ort_deform_conv
from blocks_export.export.trt_ops import SUPPORTED


def test_the_seven_targets_exist_and_ort_is_the_default():
    assert set(TARGETS) == {"jetpack5", "jetpack6.0", "jetpack6", "jetpack7", "trt10", "trt11", "ort"}
    assert DEFAULT_TARGET == "ort" and get_target(None).name == "ort"


def test_unknown_target_error_lists_the_known_names():
    with pytest.raises(ValueError) as e:
        get_target("jetpack8")
    assert "'jetpack8'" in str(e.value)
    for name in ("jetpack5", "jetpack6.0", "jetpack6", "jetpack7", "trt10", "trt11", "ort"):
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
    assert get_target("jetpack6").fp16 == get_target("trt10").fp16 == get_target("jetpack7").fp16 == "strongly_typed"
    assert get_target("trt11").fp16 == "graph"
    assert [get_target(n).trt_major for n in ("jetpack5", "jetpack6.0", "jetpack6", "jetpack7", "trt10", "trt11",
                                              "ort")] == [8, 8, 10, 10, 10, 11, None]


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
    assert all(get_target(n).exporter == "dynamo" for n in ("jetpack6", "jetpack7", "trt10", "trt11", "ort"))


# ---- target facts are ordered values; a new target is a row plus its parser table ------------------------------

def test_parser_tables_are_ordered_release_lines_and_every_target_names_one():
    from blocks_export.export.trt_ops import PARSERS, TrtVersion

    versions = sorted(PARSERS)
    assert versions[0] == TrtVersion(8, 5) and TrtVersion(10, 13) > TrtVersion(10, 3) > (10, 1)
    for older, newer in zip(versions, versions[1:], strict=False):
        assert PARSERS[older].ops <= PARSERS[newer].ops, (older, newer)  # parsers only gain importers
        assert PARSERS[older].max_opset <= PARSERS[newer].max_opset
    for t in TARGETS.values():
        assert (t.parser in PARSERS) if t.is_tensorrt else t.parser is None
    assert TrtVersion.parse("10.3.0.26") == (10, 3) and TrtVersion.parse("8.6.2") >= (8, 6)


def test_plugin_rules_follow_each_release_s_supports_format_combination():
    from blocks_export.export.trt_ops import FLOAT, FLOAT16

    rules = {n: TARGETS[n].table.plugin("ModulatedDeformConv2d") for n in TARGETS if TARGETS[n].is_tensorrt}
    assert rules["jetpack5"] is None  # 8.5 ships no ModulatedDeformConv2d
    assert rules["jetpack6.0"].first_input_types == {FLOAT} and "release/8.6" in rules["jetpack6.0"].source
    for name in ("jetpack6", "jetpack7", "trt10", "trt11"):
        assert rules[name].first_input_types == {FLOAT, FLOAT16} and rules[name].same_type


def test_jetpack7_parses_on_tensorrt_10_13_and_builds_on_10_or_11():
    t = get_target("jetpack7")
    assert t.deform_conv == "std" and t.opset == 19 and t.fp16 == "strongly_typed"
    assert t.builds_with(10) and t.builds_with(11) and not t.builds_with(8)
    assert {"DeformConv", "LayerNormalization", "STFT"} <= SUPPORTED[t.parser_table]
    assert "Attention" not in SUPPORTED[t.parser_table]  # 10.14: not on JetPack 7's 10.13
    assert SUPPORTED[t.parser_table] <= SUPPORTED[get_target("trt11").parser_table]  # so 11.4 parses it too


def test_only_the_target_paired_with_onnxruntime_114_keeps_the_crashing_ops_fp32():
    from blocks_export.export.targets import ORT_FP16_CRASH

    assert get_target("jetpack5").fp16_fp32_ops() == ORT_FP16_CRASH.ops
    assert {"Relu", "HardSwish"} <= ORT_FP16_CRASH.ops
    assert all(not TARGETS[n].fp16_fp32_ops() for n in TARGETS if n != "jetpack5")


def _plugin_model(dtype: int):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    np_type = np.float32 if dtype == TensorProto.FLOAT else np.float16
    inits = [numpy_helper.from_array(np.ones((4, 4, 3, 3), np_type), "w"),
             numpy_helper.from_array(np.zeros(4, np_type), "b")]
    node = helper.make_node("ModulatedDeformConv2d", ["x", "offset", "mask", "w", "b"], ["p"], name="the_plugin",
                            stride=[1, 1], padding=[1, 1], dilation=[1, 1], group=1, deformable_group=1,
                            plugin_version="1", plugin_namespace="")
    relu = helper.make_node("Relu", ["p"], ["y"], name="the_relu")
    shapes = {"x": [1, 4, 8, 8], "offset": [1, 18, 8, 8], "mask": [1, 9, 8, 8]}
    graph = helper.make_graph([node, relu], "g", [helper.make_tensor_value_info(n, dtype, s) for n, s in shapes.items()],
                              [helper.make_tensor_value_info("y", dtype, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_new_target_added_through_the_target_table_and_its_parser_table_only(monkeypatch):
    """A TensorRT 12 Jetson that drops HardSwish and whose plugin is float16-only (made up): two rows, nothing else,
    and the static check, the fp16 pass and the lowering choice all follow them."""
    from onnx import TensorProto

    from blocks_export.export import pipeline, targets, trt_ops
    from blocks_export.export.check import check_model
    from blocks_export.export.errors import UsageError
    from blocks_export.export.fp16 import to_fp16
    from blocks_export.export.options import ExportOptions
    from blocks_export.export.trt_ops import ParserTable, PluginRule, TrtVersion

    v12, v12n = TrtVersion(12, 0), TrtVersion(12, 1)
    fp16_only = PluginRule(frozenset({"2"}), frozenset({trt_ops.FLOAT16}), True, "a made-up release")
    monkeypatch.setitem(trt_ops.PARSERS, v12, ParserTable(v12, trt_ops.SUPPORTED_11 - {"HardSwish"}, 22, "made up",
                                                         {"ModulatedDeformConv2d": fp16_only}))
    monkeypatch.setitem(trt_ops.PARSERS, v12n, ParserTable(v12n, trt_ops.SUPPORTED_11, 22, "made up, no plugin"))
    monkeypatch.setitem(targets.TARGETS, "jetpack9", targets.Target(
        "jetpack9", "JetPack 9 (made up)", "12.0", 21, "plugin", "op", "strongly_typed", v12, (12,), "dynamo", (1, 14)))
    monkeypatch.setitem(targets.TARGETS, "jetpack9n", targets.Target(
        "jetpack9n", "JetPack 9 without the plugin (made up)", "12.1", 21, "portable", "op", "strongly_typed", v12n,
        (12,)))

    # check: the table's operators, opset ceiling, plugin versions and plugin precision
    hardswish = _one_node("HardSwish", opset=21)
    assert not check_model(hardswish, "jetpack9") and check_model(hardswish, "jetpack9n")
    assert "deploy with TensorRT 12.1+" in check_model(hardswish, "jetpack9").issues[0].fix
    assert not check_model(_one_node("Relu", opset=23), "jetpack9")  # over the table's opset 22
    report = check_model(_plugin_model(TensorProto.FLOAT), "jetpack9")
    whys = " / ".join(i.why for i in report.issues)
    assert "version 1 is not in TensorRT 12.0 (has 2)" in whys and "input x is float32" in whys
    assert "float16 only" in whys
    assert "ships no ModulatedDeformConv2d" in check_model(_plugin_model(TensorProto.FLOAT), "jetpack9n").issues[0].why

    # fp16: the target's onnxruntime and plugin rule reach the conversion
    with pytest.raises(ValueError, match="refuses float32"):
        to_fp16(_plugin_model(TensorProto.FLOAT), target=get_target("jetpack9"))
    converted = to_fp16(_plugin_model(TensorProto.FLOAT), target=get_target("jetpack9n"))
    relu = next(n for n in converted.graph.node if n.op_type == "Relu")
    casts = {n.output[0]: n for n in converted.graph.node if n.op_type == "Cast"}
    assert relu.input[0] not in casts or casts[relu.input[0]].attribute[0].i == TensorProto.FLOAT  # kept fp32

    # lowering choice and option checks
    options = ExportOptions(target="jetpack9")
    assert pipeline.resolve_lowering(options, pipeline.resolve_target(options)) == "plugin"
    assert pipeline.resolve_lowering(ExportOptions(target="jetpack9n"), get_target("jetpack9n")) == "portable"
    with pytest.raises(UsageError, match="ships no ModulatedDeformConv2d"):
        pipeline.check_options(ExportOptions(target="jetpack9n", deform_conv="plugin"), get_target("jetpack9n"),
                               "plugin")


def _one_node(op: str, opset: int):
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], ["y"], name=f"the_{op.lower()}")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
