"""Static target check: one crafted graph per rule (onnx.helper), then real exports of the blocks per target."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
from helpers import DeformBlock
from onnx import TensorProto, helper

from blocks_export.blocks import BLOCKS, randomize_, to_export
from blocks_export.export.check import CheckReport, check_model
from blocks_export.export.cli import flag_words
from blocks_export.export.deform_conv import torchscript_symbolic

F = TensorProto.FLOAT
TRT = ["jetpack5", "jetpack6.0", "jetpack6", "trt10", "trt11"]
ALL = [*TRT, "ort"]


def _vi(name: str, shape: list, dtype: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes: list[onnx.NodeProto], inputs: list, outputs: list, inits: list | None = None, opset: int = 17,
           extra_opsets: list | None = None, functions: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *(extra_opsets or [])],
                             functions=functions or [])


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _one(op: str, *, opset: int = 17, inputs: list[str] | None = None, inits: list | None = None,
         rank: int = 4, outputs: list[str] | None = None, domain: str = "", **attrs) -> onnx.ModelProto:
    names = inputs or ["x"]
    node = helper.make_node(op, names, outputs or ["y"], name=f"the_{op.lower()}", domain=domain, **attrs)
    init_names = {t.name for t in inits or []}
    graph_inputs = [_vi(n, [1, 4, 8, 8][:rank] if rank <= 4 else [1, 4, 2, 8, 8]) for n in names
                    if n and n not in init_names]
    extra = [helper.make_opsetid(domain, 1)] if domain else []
    return _model([node], graph_inputs, [_vi(o, None) for o in (outputs or ["y"]) if o], inits, opset, extra)


def _issue(report: CheckReport, node: str = "") -> tuple[str, str, str, str]:
    assert not report, f"expected a failure, got {report.lines()}"
    matches = [i for i in report.issues if node in i.node_name]
    assert matches, report.lines()
    return matches[0]


# ---- opset, op types, custom domains --------------------------------------------------------------------------

def test_opset_newer_than_the_parser_is_reported_with_the_target_to_export_for():
    report = check_model(_one("Relu", opset=18), "jetpack5")
    name, op, why, fix = _issue(report, "(model)")
    assert op == "opset_import" and "18" in why and "17" in why
    assert flag_words(fix) == "export with --target jetpack5 (opset 16)"
    assert check_model(_one("Relu", opset=18), "jetpack6")


def test_layernorm_fails_on_jetpack5_only_and_the_fix_is_the_jetpack5_target():
    m = _one("LayerNormalization", inputs=["x", "s"], inits=[helper.make_tensor("s", F, [8], [1.0] * 8)])
    _, op, why, fix = _issue(check_model(m, "jetpack5"), "the_layernormalization")
    assert "not supported by TensorRT 8.5.2" in why and "--target jetpack5" in flag_words(fix)
    assert all(check_model(m, t) for t in ["jetpack6.0", "jetpack6", "trt10", "trt11", "ort"])


def test_layernorm_with_mean_output_fails_where_only_y_is_supported():
    m = _one("LayerNormalization", inputs=["x", "s"], outputs=["y", "mean"],
             inits=[helper.make_tensor("s", F, [8], [1.0] * 8)])
    assert "Mean/InvStdDev" in _issue(check_model(m, "trt10"))[2]


def test_unknown_op_types_fail_with_a_newer_release_hint():
    gelu = _one("Gelu", opset=17)  # the check reads op types, not the opset each op appeared in
    assert _issue(check_model(gelu, "jetpack6.0"), "the_gelu")[3] == \
        "rewrite the op with supported ones, or deploy with TensorRT 10.1+"
    assert check_model(gelu, "trt10")
    assert not check_model(_one("Unique", opset=17), "trt11")


def test_deform_conv_needs_tensorrt_10_and_the_fix_names_a_lowering():
    m = _one("DeformConv", opset=19, inputs=["x", "w", "offset"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    for t in ["jetpack6", "trt10", "trt11", "ort"]:
        assert check_model(m, t), (t, check_model(m, t).lines())
    assert flag_words(_issue(check_model(m, "jetpack5"), "the_deformconv")[3]) == "export with --deform-conv portable"
    assert "--deform-conv plugin" in flag_words(_issue(check_model(m, "jetpack6.0"), "the_deformconv")[3])


@pytest.mark.parametrize("attrs, why", [({"kernel_shape": [3, 3], "pads": [1, 0, 1, 1]}, "begin and end differ"),
                                        ({"kernel_shape": [3, 3, 3]}, "3 spatial dimensions")])
def test_deform_conv_attributes_the_parser_rejects(attrs, why):
    m = _one("DeformConv", opset=19, inputs=["x", "w", "offset"], **attrs)
    assert why in _issue(check_model(m, "trt10"))[2]


@pytest.mark.parametrize("target, version, ok", [
    ("jetpack5", "1", False), ("jetpack6.0", "1", True), ("jetpack6", "1", True), ("jetpack6", "2", False),
    ("trt11", "2", True), ("ort", "1", False)])
def test_modulated_deform_conv_plugin_availability_per_release(target, version, ok):
    m = _one("ModulatedDeformConv2d", inputs=["x", "o", "m", "w", "b"], plugin_version=version,
             plugin_namespace="", stride=[1, 1], padding=[1, 1], dilation=[1, 1], group=1, deformable_group=1)
    report = check_model(m, target)
    assert bool(report) is ok, report.lines()
    if target == "jetpack5":
        assert flag_words(report.issues[0].fix) == "export with --deform-conv portable"


def test_plugin_node_in_the_ort_trt_domain_passes_with_a_warning_and_the_cpu_copy_fails():
    kw = dict(inputs=["x", "o", "m", "w", "b"], plugin_version="1", stride=[1, 1], padding=[1, 1],
              dilation=[1, 1], group=1, deformable_group=1)
    report = check_model(_one("ModulatedDeformConv2d", domain="trt.plugins", **kw), "jetpack6")
    assert report and report.warnings and "trt.plugins" in report.warnings[0].why
    assert "CPU-reference copy" in _issue(check_model(_one("ModulatedDeformConv2d", domain="ai.onnx.contrib", **kw),
                                                      "jetpack6"))[2]


@pytest.mark.parametrize("target", ALL)
def test_unknown_custom_domain_fails_everywhere(target):
    m = _one("FancyOp", domain="com.example")
    assert "custom domain 'com.example'" in _issue(check_model(m, target), "the_fancyop")[2]


# ---- attribute and constant-input rules ------------------------------------------------------------------------

@pytest.mark.parametrize("target, mode, ok", [("jetpack6.0", "reflect", True), ("jetpack6.0", "edge", True),
                                              ("jetpack6.0", "wrap", False), ("trt10", "wrap", True)])
def test_pad_modes(target, mode, ok):
    m = _one("Pad", inputs=["x", "pads"], inits=[_i64("pads", [0, 0, 1, 1, 0, 0, 1, 1])], mode=mode)
    assert bool(check_model(m, target)) is ok


def test_pad_axes_computed_at_run_time_fails_before_tensorrt_10_4():
    m = _one("Pad", opset=19, inputs=["x", "pads", "", "axes"], inits=[_i64("pads", [1, 1, 1, 1])])
    m.graph.input[-1].type.tensor_type.elem_type = TensorProto.INT64
    assert "`axes` is computed at run time" in _issue(check_model(m, "trt10"))[2]
    assert check_model(m, "trt11")


def test_grid_sample_must_be_4d():
    grid4 = _one("GridSample", inputs=["x", "grid"], opset=17)
    assert check_model(grid4, "jetpack5")
    grid5 = _one("GridSample", inputs=["x", "grid"], opset=20, rank=5, mode="linear")
    assert "rank 5" in _issue(check_model(grid5, "trt11"))[2]


@pytest.mark.parametrize("axes_as, ok", [("initializer", True), ("constant", True), ("input", False)])
def test_reduce_mean_axes_must_be_constant_on_tensorrt(axes_as, ok):
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")
    inits, nodes, inputs = [], [node], [_vi("x", [1, 4, 8, 8])]
    if axes_as == "initializer":
        inits = [_i64("axes", [2, 3])]
    elif axes_as == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["axes"], value=_i64("v", [2, 3])))
    else:
        inputs.append(_vi("axes", [2], TensorProto.INT64))
    m = _model(nodes, inputs, [_vi("y", None)], inits, opset=18)
    assert bool(check_model(m, "trt10")) is ok
    assert check_model(m, "ort")


@pytest.mark.parametrize("attrs, ok", [
    ({"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, True),
    ({"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}, True),
    ({"mode": "cubic"}, False),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, False),
    ({"mode": "linear", "antialias": 1}, False),
])
def test_resize_modes(attrs, ok):
    m = _one("Resize", opset=19, inputs=["x", "", "scales"],
             inits=[helper.make_tensor("scales", F, [4], [1, 1, 2, 2])], **attrs)
    assert bool(check_model(m, "trt10")) is ok


@pytest.mark.parametrize("attrs, outputs, ok", [
    ({"kernel_shape": [2, 2]}, ["y"], True),
    ({"kernel_shape": [2, 2], "dilations": [2, 2]}, ["y"], False),
    ({"kernel_shape": [2, 2]}, ["y", "idx"], False),
    ({"kernel_shape": [2]}, ["y"], False),
])
def test_max_pool_restrictions(attrs, outputs, ok):
    assert bool(check_model(_one("MaxPool", outputs=outputs, **attrs), "jetpack6")) is ok


def test_slice_axes_at_run_time_fails_up_to_tensorrt_10_1_and_passes_on_10_3():
    m = _one("Slice", inputs=["x", "s", "e", "axes"], inits=[_i64("s", [0]), _i64("e", [2])])
    m.graph.input[-1].type.tensor_type.elem_type = TensorProto.INT64
    assert not check_model(m, "jetpack5") and not check_model(m, "trt10")
    assert check_model(m, "jetpack6")


def test_unsqueeze_axes_at_run_time_fails_before_tensorrt_10_7():
    m = _one("Unsqueeze", inputs=["x", "axes"])
    m.graph.input[-1].type.tensor_type.elem_type = TensorProto.INT64
    assert not check_model(m, "jetpack6") and check_model(m, "trt11")


def test_topk_k_at_run_time_fails_on_tensorrt_8_5_only():
    m = _one("TopK", inputs=["x", "k"], outputs=["v", "i"])
    m.graph.input[-1].type.tensor_type.elem_type = TensorProto.INT64
    assert not check_model(m, "jetpack5") and check_model(m, "jetpack6.0")
    assert not check_model(_one("TopK", inputs=["x", "k"], outputs=["v", "i"], inits=[_i64("k", [2])], sorted=0),
                           "trt10")


# ---- data types, subgraphs, local functions, report ------------------------------------------------------------

def test_data_types_per_release():
    bf16 = _model([helper.make_node("Add", ["x", "b"], ["y"], name="add")], [_vi("x", [2], TensorProto.BFLOAT16)],
                  [_vi("y", [2], TensorProto.BFLOAT16)], [helper.make_tensor("b", TensorProto.BFLOAT16, [2], [1, 1])])
    assert "BFLOAT16" in _issue(check_model(bf16, "jetpack6.0"))[2]
    assert check_model(bf16, "trt10")
    dbl = _one("Relu")
    dbl.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    report = check_model(dbl, "jetpack5")
    assert report and "DOUBLE" in report.warnings[0].why
    text = _one("Identity")
    text.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    assert "STRING" in _issue(check_model(text, "trt11"))[2]


def test_nodes_inside_if_branches_are_checked():
    branch = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="inner_unique")], "b", [],
                               [_vi("u", None)])
    node = helper.make_node("If", ["c"], ["y"], name="cond", then_branch=branch, else_branch=branch)
    m = _model([node], [_vi("c", [], TensorProto.BOOL), _vi("x", [4])], [_vi("y", None)])
    assert _issue(check_model(m, "trt10"), "inner_unique")[1] == "Unique"


def test_local_functions_fail_on_tensorrt_8_and_their_body_is_checked_on_10():
    fn = helper.make_function("local", "Blk", ["a"], ["b"], [helper.make_node("Unique", ["a"], ["b"], name="fn_u")],
                              [helper.make_opsetid("", 17)])
    node = helper.make_node("Blk", ["x"], ["y"], name="call", domain="local")
    m = _model([node], [_vi("x", [4])], [_vi("y", None)], extra_opsets=[helper.make_opsetid("local", 1)],
               functions=[fn])
    assert "inline them" in _issue(check_model(m, "jetpack6.0"), "call")[3]
    assert _issue(check_model(m, "trt10"), "fn_u")[1] == "Unique"


def test_report_lines_and_dict_name_each_issue():
    m = _model([helper.make_node("Unique", ["x"], ["y"], name="u1"), helper.make_node("Relu", ["y"], ["z"])],
               [_vi("x", [4])], [_vi("z", None)])
    report = check_model(m, "trt10")
    assert not report and len(report.issues) == 1 and report.nodes_checked == 2
    assert report.lines()[0].startswith("FAILED | target trt10 | 1 issue(s)")
    assert report.lines()[1].startswith("FAILED | u1 | Unique | ")
    d = report.as_dict()
    assert d["passed"] is False and d["issues"][0]["node_name"] == "u1" and d["issues"][0]["fix"]
    assert check_model(_one("Relu"), "trt10").lines() == ["PASSED | target trt10 | 1 nodes"]


def test_check_reads_a_file_path(tmp_path):
    onnx.save(_one("Relu"), tmp_path / "m.onnx")
    assert check_model(tmp_path / "m.onnx", "jetpack5") and check_model(str(tmp_path / "m.onnx"), "jetpack5")


# ---- real exports --------------------------------------------------------------------------------------------


def _torchscript(module: torch.nn.Module, shape: tuple[int, ...], opset: int, lowering: str | None = None) \
        -> onnx.ModelProto:
    buf = io.BytesIO()
    x = torch.randn(*shape)
    kw = dict(dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"])
    if lowering:
        with torchscript_symbolic(lowering, opset):
            torch.onnx.export(module.eval(), (x,), buf, **kw)
    else:
        torch.onnx.export(module.eval(), (x,), buf, **kw)
    return onnx.load_from_string(buf.getvalue())


def _twin(block: torch.nn.Module) -> torch.nn.Module:
    randomize_(block, 0)
    return to_export(block.eval())


# Blocks whose targets are block-specific facts, each with its own test below: the context block's
# LayerNormalization (jetpack5), DCN's lowerings. Every other block of ``blocks.BLOCKS`` passes every target.
OWN_TARGET_TESTS = {"CB2d", "DCN"}
GENERIC_SPECS = [s for s in BLOCKS if s.name not in OWN_TARGET_TESTS]


def test_the_target_block_table_is_the_block_list():
    assert OWN_TARGET_TESTS <= {s.name for s in BLOCKS}
    assert {"ACmix", "CA", "SPDConv"} <= {s.name for s in GENERIC_SPECS}


@pytest.mark.parametrize("opset, targets", [(16, ALL), (17, ALL), (19, ["jetpack6", "trt10", "trt11", "ort"])])
@pytest.mark.parametrize("spec", GENERIC_SPECS, ids=[s.name for s in GENERIC_SPECS])
def test_exported_block_twins_pass_their_targets(spec, opset, targets):
    example = spec.example()
    model = _torchscript(_twin(example.module), example.shapes[0], opset)
    for t in targets:
        assert check_model(model, t), (t, check_model(model, t).lines())


def test_exported_context_block_needs_layernorm_decomposition_for_jetpack5_only():
    cb2d = next(s for s in BLOCKS if s.name == "CB2d").example()
    model = _torchscript(_twin(cb2d.module), cb2d.shapes[0], 17)
    for t in ["jetpack6.0", "jetpack6", "trt10", "trt11", "ort"]:
        assert check_model(model, t), t
    report = check_model(model, "jetpack5")
    assert {i.op_type for i in report.issues} == {"LayerNormalization"}
    # at jetpack5's export opset (16) LayerNorm is written with standard ops, and the graph passes
    assert check_model(_torchscript(_twin(cb2d.module), cb2d.shapes[0], 16), "jetpack5")


@pytest.mark.parametrize("lowering, opset, passes", [
    ("std", 19, {"jetpack6", "trt10", "trt11", "ort"}),
    ("plugin", 17, {"jetpack6.0", "jetpack6", "trt10", "trt11"}),
    ("portable", 16, set(ALL)),
])
def test_exported_deform_conv_lowerings_pass_exactly_their_targets(lowering, opset, passes):
    model = _torchscript(DeformBlock(), (1, 8, 12, 12), opset, lowering)
    assert {t for t in ALL if check_model(model, t)} == passes
