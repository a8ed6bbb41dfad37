"""Opset-18 forms the onnx converter has no down adapter for (Split, Pad) reach opsets 16/17 meaning the same.

Each graph is converted by ``convert_opset`` (the path the dynamo exporter's graphs take to the TensorRT 8.x
targets), validated by onnx's full checker at the target opset, run in onnxruntime and compared with numpy
computing the operator's definition, and with onnxruntime running the opset-18 original.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from blocks_export.export.errors import ExportFailed
from blocks_export.export.opset_down import convert_opset
from blocks_export.plugins.ort_cpu import cpu_session


def _split18(dims: list, axis: int, parts: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(parts)]
    node = helper.make_node("Split", ["x"], [o.name for o in outs], name="chunks", axis=axis, num_outputs=parts)
    graph = helper.make_graph([node], "split18", [x], outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _spec_split(a: np.ndarray, axis: int, parts: int) -> list[np.ndarray]:
    """Split-18 with ``num_outputs``: equal parts of ceil(d / parts), the last smaller
    (https://onnx.ai/onnx/operators/onnx__Split.html) -- not numpy's array_split, which spreads the remainder."""
    d = a.shape[axis]
    chunk = -(-d // parts)
    bounds = [min(chunk * i, d) for i in range(parts + 1)]
    return [np.take(a, np.arange(lo, hi), axis=axis) for lo, hi in zip(bounds, bounds[1:], strict=False)]


def _run(model: onnx.ModelProto, a: np.ndarray) -> list[np.ndarray]:
    return cpu_session(model.SerializeToString()).run(None, {"x": a})


@pytest.mark.parametrize("opset", [16, 17])
@pytest.mark.parametrize(("axis", "parts"), [(2, 3), (-1, 4), (3, 2)])
def test_uneven_split_on_a_dynamic_axis_matches_the_definition(opset: int, axis: int, parts: int) -> None:
    original = _split18(["n", 6, "h", "w"], axis, parts)
    converted = convert_opset(original, opset)
    onnx.checker.check_model(converted, full_check=True)
    assert [o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    split = next(n for n in converted.graph.node if n.op_type == "Split")
    assert not [a for a in split.attribute if a.name == "num_outputs"] and len(split.input) == 2
    rng = np.random.default_rng(3)
    # 10 into 4 is 3, 3, 3, 1; 7 into 3 is 3, 3, 1; 9 into 4 is 3, 3, 3, 0; 5 into 2 is 3, 2; and even cases.
    for shape in [(1, 6, 7, 10), (2, 6, 10, 7), (3, 6, 9, 12), (1, 6, 5, 9)]:
        a = rng.standard_normal(shape).astype(np.float32)
        expected = _spec_split(a, axis, parts)
        got = _run(converted, a)
        reference = _run(original, a)
        assert [g.shape for g in got] == [e.shape for e in expected], shape
        for g, e, r in zip(got, expected, reference, strict=True):
            np.testing.assert_array_equal(g, e)
            np.testing.assert_array_equal(g, r)


def test_split_on_a_static_axis_gets_constant_sizes() -> None:
    converted = convert_opset(_split18(["n", 7, "h", "w"], 1, 2), 16)
    assert "Shape" not in {n.op_type for n in converted.graph.node}  # no size arithmetic left for the runtime
    a = np.random.default_rng(4).standard_normal((2, 7, 3, 5)).astype(np.float32)
    got = _run(converted, a)
    assert [g.shape[1] for g in got] == [4, 3]
    for g, e in zip(got, _spec_split(a, 1, 2), strict=True):
        np.testing.assert_array_equal(g, e)


def _pad18(axes: list[int] | None, pads: list[int], mode: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, None, None])
    inits = [numpy_helper.from_array(np.asarray(pads, np.int64), "pads")]
    inputs = ["x", "pads"]
    if axes is not None:
        inits.append(numpy_helper.from_array(np.asarray(axes, np.int64), "axes"))
        inputs += ["", "axes"]
    node = helper.make_node("Pad", inputs, ["y"], name="pad", mode=mode)
    graph = helper.make_graph([node], "pad18", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.mark.parametrize(("axes", "pads", "mode"), [
    (None, [0, 0, 1, 2, 0, 0, 2, 1], "reflect"),
    ([-1, 2], [1, 2, 3, 0], "constant"),
    ([3], [2, 1], "edge"),
])
def test_pad18_converts_to_opset_16_and_pads_the_same(axes: list[int] | None, pads: list[int], mode: str) -> None:
    original = _pad18(axes, pads, mode)
    converted = convert_opset(original, 16)
    onnx.checker.check_model(converted, full_check=True)
    a = np.random.default_rng(5).standard_normal((2, 3, 6, 7)).astype(np.float32)
    full = [(0, 0)] * 4
    for i, ax in enumerate(axes if axes is not None else range(4)):
        full[ax % 4] = (pads[i], pads[i + len(pads) // 2])
    expected = np.pad(a, full, mode=mode)
    got = _run(converted, a)[0]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, _run(original, a)[0])


def test_pad_axes_from_a_graph_input_cannot_be_lowered_and_say_so_in_one_line() -> None:
    model = _pad18([3], [2, 1], "constant")
    model.graph.initializer.pop()  # axes become a runtime input
    model.graph.input.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [1]))
    with pytest.raises(ExportFailed, match="opset 16") as e:
        convert_opset(model, 16)
    assert "\n" not in str(e.value)


def test_two_unnamed_splits_get_distinct_size_tensors() -> None:
    model = _split18(["n", 6, "h", "w"], 2, 3)
    first = model.graph.node[0]
    first.name = ""
    second = onnx.NodeProto()
    second.CopyFrom(first)
    del second.output[:]
    second.output.extend(["z0", "z1", "z2"])
    model.graph.node.append(second)
    model.graph.output.extend(helper.make_tensor_value_info(z, TensorProto.FLOAT, None) for z in second.output)
    converted = convert_opset(model, 16)
    onnx.checker.check_model(converted, full_check=True)  # SSA: every tensor name written once
    a = np.random.default_rng(6).standard_normal((1, 6, 8, 2)).astype(np.float32)
    got = _run(converted, a)
    for g, e in zip(got, _spec_split(a, 2, 3) * 2, strict=True):
        np.testing.assert_array_equal(g, e)
