"""The shared graph helpers: producers/consumers, best-effort shape inference, the LayerNorm decomposition."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from blocks_export.export.graph import consumers, decompose_layer_norm, infer_shapes, producers, shapes_of
from blocks_export.plugins.ort_cpu import cpu_session


def _layer_norm_model(axis: int) -> onnx.ModelProto:
    g = np.random.default_rng(0)
    scale = numpy_helper.from_array(g.standard_normal((5, 6)).astype(np.float32), "scale")
    bias = numpy_helper.from_array(g.standard_normal((5, 6)).astype(np.float32), "bias")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("LayerNormalization", ["r", "scale", "bias"], ["y"], name="ln", axis=axis,
                              epsilon=1e-3),
             helper.make_node("Add", ["y", "r"], ["z"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5, 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4, 5, 6])],
                              [scale, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_producers_and_consumers_index_every_tensor_once() -> None:
    graph = _layer_norm_model(-2).graph
    assert {k: n.name for k, n in producers(graph).items()} == {"r": "relu", "y": "ln", "z": "add"}
    assert {k: [n.name for n in v] for k, v in consumers(graph).items()} == {
        "x": ["relu"], "r": ["ln", "add"], "scale": ["ln"], "bias": ["ln"], "y": ["add"]}


def test_shape_inference_is_best_effort(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _layer_norm_model(-2)
    inferred = infer_shapes(model)
    assert inferred is not None and shapes_of(inferred)["r"] == [None, 4, 5, 6]
    assert "r" not in shapes_of(model)  # only what the graph itself declares

    def fails(_: onnx.ModelProto) -> onnx.ModelProto:
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] (what onnx raises on a graph it rejects)")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fails)
    assert infer_shapes(model) is None


def test_layer_norm_decomposed_with_a_positive_or_negative_axis_computes_the_same() -> None:
    x = np.random.default_rng(1).standard_normal((3, 4, 5, 6)).astype(np.float32)
    for axis in (-2, 2):
        model = _layer_norm_model(axis)
        (want,) = cpu_session(model).run(None, {"x": x})
        decomposed = onnx.ModelProto()
        decomposed.CopyFrom(model)
        assert decompose_layer_norm(decomposed) == 1
        assert "LayerNormalization" not in {n.op_type for n in decomposed.graph.node}
        (got,) = cpu_session(decomposed).run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
