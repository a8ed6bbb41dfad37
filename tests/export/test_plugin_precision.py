"""The TensorRT ``ModulatedDeformConv2d`` plugin's precision rule, per target: 8.6 takes float32 only, 10.x float32
or float16 with every input of one type (``trt_ops``, from each release's ``supportsFormatCombination``).

Through the CLI on DCNv2 blocks written as blog posts paste them (offset and mask cut by a Slice or a Split): the
plugin node never gets an input type its target's plugin rejects, and the graph matches the original model in
the test's own onnxruntime run. ``check`` flags a hand-made graph that breaks the rule.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import jetson_models  # noqa: E402

from blocks_export.export.check import check_model  # noqa: E402
from blocks_export.export.cli import app, with_default_command  # noqa: E402
from blocks_export.export.fp16 import deform_conv_inputs_fp32, elem_types, to_fp16  # noqa: E402
from blocks_export.export.targets import get_target  # noqa: E402
from blocks_export.plugins.ort_cpu import cpu_session  # noqa: E402
from blocks_export.runtime.parity import rel_l2  # noqa: E402

F, H = TensorProto.FLOAT, TensorProto.FLOAT16
DEFORM = ("ModulatedDeformConv2d", "DeformConv")


def _invoke(*args: object):
    return CliRunner().invoke(app, with_default_command([str(a) for a in args]))


def _deform_input_types(model: onnx.ModelProto) -> list[tuple[str, list[int]]]:
    types = elem_types(model)
    return [(n.op_type, [types.get(i, 0) for i in n.input if i]) for n in model.graph.node if n.op_type in DEFORM]


def _assert_rule_holds(model: onnx.ModelProto, target: str) -> None:
    table = get_target(target).table
    assert table is not None
    rule = table.plugin("ModulatedDeformConv2d")
    assert rule is not None
    found = _deform_input_types(model)
    assert found, "no deformable convolution in the graph"
    for op, types in found:
        assert 0 not in types, (op, types)  # every input typed
        assert types[0] in rule.first_input_types and set(types) == {types[0]}, (target, op, types)


CASES = [("BlogDCNNet", "slice", "jetpack6.0", []), ("InlineDCNNet", "split", "jetpack6.0", []),
         pytest.param("InlineDCNNet", "slice", "jetpack6", ["--deform-conv", "plugin"], marks=pytest.mark.slow),
         pytest.param("BlogDCNNet", "split", "jetpack6", ["--deform-conv", "plugin"], marks=pytest.mark.slow),
         pytest.param("InlineDCNNet", "split", "jetpack6", [], marks=pytest.mark.slow)]


@pytest.mark.parametrize(("cls", "how", "target", "extra"), CASES)
def test_fp16_export_feeds_the_plugin_only_types_its_target_accepts(tmp_path: Path, cls: str, how: str, target: str,
                                                                    extra: list[str]) -> None:
    model = jetson_models.build(getattr(jetson_models, cls), how, seed=3)
    src, out = tmp_path / "m.pt", tmp_path / "m.onnx"
    torch.save(model, src)
    result = _invoke(src, "--to", "onnx", "--trust-pickle", "--fp16", "--target", target, "--imgsz", "24", "-o", out,
                     "-q", *extra)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    proto = onnx.load(str(out))
    _assert_rule_holds(proto, target)
    assert check_model(proto, target), check_model(proto, target).lines()
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model.double()(x.double()).numpy()
    got = cpu_session(proto).run(None, {cpu_session(proto).get_inputs()[0].name: x.numpy()})[0]
    assert rel_l2(want, got) <= 1e-2


# ---- hand-made graphs ----------------------------------------------------------------------------------------

def _plugin_graph(x_type: int, offset_type: int, mask_type: int, weight_type: int) -> onnx.ModelProto:
    """x, offset, mask as float32 graph inputs, each Cast to the type asked for, into one plugin node."""
    rng = np.random.default_rng(0)
    np_type = {F: np.float32, H: np.float16}
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np_type[weight_type]), "w"),
             numpy_helper.from_array(np.zeros(4, np_type[weight_type]), "b")]
    nodes, names = [], []
    for name, dtype in (("x", x_type), ("offset", offset_type), ("mask", mask_type)):
        nodes.append(helper.make_node("Cast", [name], [f"{name}_t"], to=dtype, name=f"cast_{name}"))
        names.append(f"{name}_t")
    nodes.append(helper.make_node("ModulatedDeformConv2d", [*names, "w", "b"], ["y"], name="the_plugin",
                                  stride=[1, 1], padding=[1, 1], dilation=[1, 1], group=1, deformable_group=1,
                                  plugin_version="1", plugin_namespace=""))
    inputs = [helper.make_tensor_value_info("x", F, [1, 4, 8, 8]),
              helper.make_tensor_value_info("offset", F, [1, 18, 8, 8]),
              helper.make_tensor_value_info("mask", F, [1, 9, 8, 8])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", x_type, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_check_jetpack60_flags_a_plugin_fed_float16_offset_and_mask(tmp_path: Path) -> None:
    path = tmp_path / "plugin.onnx"
    onnx.save(_plugin_graph(F, H, H, F), path)
    result = _invoke("check", path, "--target", "jetpack6.0")
    assert result.exit_code != 0
    failed = [ln for ln in result.stdout.splitlines() if ln.startswith("FAILED | the_plugin")]
    assert failed and "mixed types" in failed[0] and "offset float16" in failed[0] and "mask float16" in failed[0]
    assert "release/8.6" in failed[0]
    # The same mixture breaks 10.x's rule (one type for all inputs) too; all float32 passes everywhere.
    assert not check_model(path, "jetpack6")
    assert check_model(_plugin_graph(F, F, F, F), "jetpack6.0") and check_model(_plugin_graph(F, F, F, F), "jetpack6")


def test_check_float16_plugin_fails_on_tensorrt_86_and_passes_on_10() -> None:
    model = _plugin_graph(H, H, H, H)
    report = check_model(model, "jetpack6.0")
    assert not report and "input x is float16" in report.issues[0].why and "float32 only" in report.issues[0].why
    assert check_model(model, "jetpack6"), check_model(model, "jetpack6").lines()
    assert check_model(model, "jetpack7"), check_model(model, "jetpack7").lines()


def test_deform_conv_node_with_mixed_input_types_is_flagged_on_tensorrt_10() -> None:
    model = _plugin_graph(F, H, F, F)
    node = model.graph.node[-1]
    node.op_type = "DeformConv"  # ONNX order (X, W, offset, B, mask)
    x, off, mask, w, b = node.input
    del node.input[:]
    node.input.extend([x, w, off, b, mask])
    del node.attribute[:]
    node.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]), helper.make_attribute("pads", [1] * 4)])
    model.opset_import[0].version = 19
    report = check_model(model, "jetpack6")
    assert not report and "offset float16" in report.issues[0].why


def test_fp16_pass_casts_a_float16_plugin_input_back_for_every_target() -> None:
    model = _plugin_graph(F, H, H, F)
    assert not check_model(model, "jetpack6.0")
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    assert deform_conv_inputs_fp32(fixed, get_target("jetpack6.0")) == 2
    _assert_rule_holds(fixed, "jetpack6.0")
    assert check_model(fixed, "jetpack6.0") and check_model(fixed, "jetpack6")
    xs = {n: np.random.default_rng(1).standard_normal(s).astype(np.float32)
          for n, s in (("x", (1, 4, 8, 8)), ("offset", (1, 18, 8, 8)), ("mask", (1, 9, 8, 8)))}
    plain = _plugin_graph(F, F, F, F)
    want = cpu_session(plain).run(None, xs)[0]
    got = cpu_session(fixed).run(None, xs)[0]
    assert rel_l2(want, got) <= 1e-3  # only the offset/mask rounding to float16 differs


def test_to_fp16_with_a_target_keeps_plugin_inputs_float32() -> None:
    model16 = to_fp16(_plugin_graph(F, F, F, F), target=get_target("jetpack6.0"))
    _assert_rule_holds(model16, "jetpack6.0")
