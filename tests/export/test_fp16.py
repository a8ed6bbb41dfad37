"""Mixed-precision fp16 ONNX: parity against the fp32 PyTorch reference on onnxruntime CPU, and what stays fp32."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from helpers import DeformBlock
from onnx import TensorProto, helper

from blocks_export.blocks import BLOCKS, CA, CB2d, randomize_, to_export
from blocks_export.export.check import check_model
from blocks_export.export.deform_conv import torchscript_symbolic
from blocks_export.export.fp16 import LARGE_REDUCTION, fp32_nodes, name_nodes, to_fp16
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import RULES, rel_l2


def _export(module: torch.nn.Module, x: torch.Tensor, opset: int, lowering: str | None = None) -> onnx.ModelProto:
    buf = io.BytesIO()
    kw = dict(dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"])
    if lowering:
        with torchscript_symbolic(lowering, opset):
            torch.onnx.export(module, (x,), buf, **kw)
    else:
        torch.onnx.export(module, (x,), buf, **kw)
    return onnx.load_from_string(buf.getvalue())


def _input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# Every block of ``blocks.BLOCKS``, at its example's first and last shape; DeformConv blocks are checked per
# lowering below (``DeformBlock``). Block-specific facts only: the context block also at 40x36, where its softmax
# runs over 1440 positions (beyond ``LARGE_REDUCTION``).
EXTRA_SHAPES = {"CB2d": ((1, 16, 40, 36),)}
FP16_SPECS = [s for s in BLOCKS if "DeformConv" not in s.fp32_ops]


def test_the_fp16_block_table_is_the_block_list():
    assert {s.name for s in BLOCKS} - {s.name for s in FP16_SPECS} == {"DCN"}  # DCN: the lowering tests below
    assert set(EXTRA_SHAPES) <= {s.name for s in FP16_SPECS}


@pytest.mark.parametrize("spec", FP16_SPECS, ids=[s.name for s in FP16_SPECS])
def test_fp16_block_matches_the_fp32_reference_within_the_fp16_rule(spec):
    example = spec.example()
    ref = example.module
    randomize_(ref, 0)
    ref.eval()
    for shape in dict.fromkeys((example.shapes[0], example.shapes[-1], *EXTRA_SHAPES.get(spec.name, ()))):
        x = _input(shape)
        model = _export(to_export(ref), x, 17)
        model16 = to_fp16(model)
        onnx.checker.check_model(model16, full_check=True)
        got = cpu_session(model16).run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            want = ref(x).numpy()
        assert got.dtype == np.float32, shape  # IO stays fp32
        assert rel_l2(want, got) <= RULES["fp16"].rel_l2, shape
        if any(True for _ in ref.parameters()):  # space_to_depth has no weights to store in fp16
            assert any(t.data_type == TensorProto.FLOAT16 for t in model16.graph.initializer), shape


@pytest.mark.parametrize("lowering, opset", [("portable", 17), ("std", 19), ("plugin", 17)])
def test_fp16_deform_conv_lowerings_match_torchvision(lowering, opset):
    ref = DeformBlock()
    randomize_(ref, 0)
    ref.eval()
    x = _input((1, 8, 24, 20))
    model16 = to_fp16(_export(ref, x, opset, lowering))
    got = cpu_session(model16).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = ref(x).numpy()
    assert rel_l2(want, got) <= RULES["fp16"].rel_l2


def test_portable_deform_conv_sampling_coordinates_stay_fp32():
    ref = DeformBlock().eval()
    model = _export(ref, _input((1, 8, 12, 12)), 17, "portable")
    model16 = to_fp16(model)
    grid_samples = [n for n in model16.graph.node if n.op_type == "GridSample"]
    assert grid_samples
    producer = {o: n for n in model16.graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model16).graph.value_info}
    for gs in grid_samples:
        assert types.get(gs.input[1]) == TensorProto.FLOAT, "GridSample grid must be fp32"
        assert producer[gs.input[1]].op_type != "Cast", "the grid must be computed in fp32, not cast up from fp16"


def test_softmax_logits_and_the_weighted_sum_stay_fp32_in_the_context_block():
    ref = CB2d(16)
    randomize_(ref, 0)
    model = _export(to_export(ref.eval()), _input((1, 16, 8, 8)), 17)
    named = onnx.ModelProto()
    named.CopyFrom(model)
    name_nodes(named)
    kept = fp32_nodes(named)
    ops = {n.name: n.op_type for n in named.graph.node}
    kept_ops = {ops[k] for k in kept}
    assert {"Softmax", "LayerNormalization", "MatMul"} <= kept_ops
    # the conv_mask logits are reshaped into the softmax: that chain is fp32, the 1x1 convs are not
    assert not any(ops[k] == "Conv" for k in kept)


def _reduce_model(h: int, w: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=0)
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    return helper.make_model(helper.make_graph([node], "g", [x], [y], [axes]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_only_large_reductions_are_kept_fp32():
    assert fp32_nodes(_reduce_model(8, 8)) == set()
    side = int(np.ceil(np.sqrt(LARGE_REDUCTION + 1)))
    assert fp32_nodes(_reduce_model(side, side)) == {"sum"}


def test_fp16_io_on_request_and_the_input_model_is_left_unchanged():
    ref = CA(16, 16)
    randomize_(ref, 0)
    model = _export(to_export(ref.eval()), _input((1, 16, 8, 8)), 17)
    before = model.SerializeToString()
    model16 = to_fp16(model, keep_io_types=False)
    assert model.SerializeToString() == before
    assert model16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert {p.key: p.value for p in model16.metadata_props}["blocks_export.precision"] == "fp16"
    x = _input((1, 16, 8, 8)).numpy().astype(np.float16)
    got = cpu_session(model16).run(None, {"x": x})[0]
    assert got.dtype == np.float16


@pytest.mark.parametrize("target", ["jetpack6", "trt10", "trt11", "ort"])
def test_fp16_graph_passes_the_target_check(target):
    ref = CB2d(16)
    randomize_(ref, 0)
    model16 = to_fp16(_export(to_export(ref.eval()), _input((1, 16, 8, 8)), 17))
    assert check_model(model16, target), check_model(model16, target).lines()


def test_duplicate_value_info_entries_do_not_break_the_fp16_graph():
    # Seen on exported + simplified graphs: two value_info entries for the output of a node kept in fp32.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="mm"),
             helper.make_node("Softmax", ["logits"], ["att"], name="softmax"),
             helper.make_node("Relu", ["att"], ["y"], name="relu")]
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], list(np.linspace(-1, 1, 64)))
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    graph.value_info.extend([helper.make_tensor_value_info("att", TensorProto.FLOAT, [1, 4, 8])] * 2)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    xs = _input((1, 4, 8)).numpy()
    want = cpu_session(model).run(None, {"x": xs})[0]
    got = cpu_session(to_fp16(model)).run(None, {"x": xs})[0]
    assert rel_l2(want, got) <= RULES["fp16"].rel_l2


def test_graph_output_that_feeds_another_node_keeps_a_consistent_type():
    # A detector head: the first stage's feature map is an output and the input of the next conv.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("p3", "p4")]
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], [0.5, -0.25, 0.75, 1.0])
    nodes = [helper.make_node("Conv", ["x", "w"], ["p3"], name="c1"),
             helper.make_node("Conv", ["p3", "w"], ["p4"], name="c2")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, [w]), opset_imports=[helper.make_opsetid("", 17)])
    xs = _input((1, 2, 6, 6)).numpy()
    want = cpu_session(model).run(None, {"x": xs})
    model16 = to_fp16(model)
    assert [o.name for o in model16.graph.output] == ["p3", "p4"]
    got = cpu_session(model16).run(None, {"x": xs})
    for a, b in zip(want, got, strict=True):
        assert b.dtype == np.float32 and rel_l2(a, b) <= RULES["fp16"].rel_l2


def test_weights_fp16_can_hold_are_not_clamped() -> None:
    """A weight of 3e4 fits float16 (largest 65504): the fp16 graph keeps it, and its output matches fp32 (the
    converter's own default clamps at 1e4, a third of it)."""
    rng = np.random.default_rng(3)
    w = (rng.uniform(2e4, 6e4, size=(1, 4)) * rng.choice([-1, 1], size=(1, 4))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = to_fp16(model)
    stored = next(onnx.numpy_helper.to_array(t) for t in half.graph.initializer if t.name == "w")
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored.astype(np.float32), w, rtol=1e-3)
    x = rng.uniform(0.5, 1.0, size=(2, 4)).astype(np.float32)
    got = cpu_session(half.SerializeToString()).run(None, {"x": x})[0]
    assert rel_l2(x * w, got) < RULES["fp16"].rel_l2
