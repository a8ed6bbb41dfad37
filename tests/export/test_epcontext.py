"""The EPContext model follows onnxruntime's contract: checked by onnx.checker and by onnxruntime's own schema."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from blocks_export.export.epcontext import engine_reference, write_ep_context


def _source(path: Path) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    w = helper.make_tensor("w", TensorProto.FLOAT, [10, 3], [0.1] * 30)
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "net", [x], [y], [w])
    graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [10, 3]))  # initializer as input
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    m.metadata_props.add(key="blocks_export.task", value="classify")
    onnx.save(m, path)
    return m


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_ep_context_model_has_the_documented_node_and_the_original_io(tmp_path):
    src = _source(tmp_path / "model.onnx")
    (tmp_path / "model.engine").write_bytes(b"engine")
    write_ep_context(tmp_path / "model.engine", tmp_path / "model.onnx", tmp_path / "model_ctx.onnx",
                     tensorrt_version="10.3.0", compute_capability="8.7")
    ctx = onnx.load(tmp_path / "model_ctx.onnx")
    onnx.checker.check_model(ctx, full_check=True)
    assert [n.op_type for n in ctx.graph.node] == ["EPContext"]
    node = ctx.graph.node[0]
    assert node.domain == "com.microsoft"
    assert {(o.domain, o.version) for o in ctx.opset_import} == {("", 19), ("com.microsoft", 1)}
    attrs = _attrs(node)
    assert attrs["main_context"] == 1 and attrs["embed_mode"] == 0
    assert attrs["ep_cache_context"] == b"model.engine"
    assert attrs["source"] == b"TensorrtExecutionProvider"
    assert attrs["hardware_architecture"] == b"87" and attrs["ep_sdk_version"] == b"10.3.0"
    assert attrs["onnx_model_filename"] == b"model.onnx"
    assert list(node.input) == ["images"] and list(node.output) == ["logits"]
    assert [v.SerializeToString() for v in ctx.graph.input] == [src.graph.input[0].SerializeToString()]
    assert [v.SerializeToString() for v in ctx.graph.output] == [src.graph.output[0].SerializeToString()]
    assert {p.key: p.value for p in ctx.metadata_props}["blocks_export.task"] == "classify"


def test_onnxruntime_accepts_the_node_schema_and_asks_for_the_tensorrt_ep(tmp_path):
    # onnxruntime validates EPContext attributes against its contrib schema (a wrong type is INVALID_GRAPH);
    # a valid node on a session without the TensorRT EP is NOT_IMPLEMENTED: no provider claims its `source`.
    _source(tmp_path / "model.onnx")
    (tmp_path / "model.engine").write_bytes(b"engine")
    write_ep_context(tmp_path / "model.engine", tmp_path / "model.onnx", tmp_path / "model_ctx.onnx")
    with pytest.raises(Exception) as e:
        ort.InferenceSession(str(tmp_path / "model_ctx.onnx"), providers=["CPUExecutionProvider"])
    assert type(e.value).__name__ == "NotImplemented"


def test_engine_in_a_subfolder_is_referenced_with_a_relative_posix_path(tmp_path):
    (tmp_path / "engines").mkdir()
    assert engine_reference(tmp_path / "engines" / "m.engine", tmp_path / "m_ctx.onnx") == "engines/m.engine"


def test_engine_outside_the_context_folder_is_refused(tmp_path):
    # onnxruntime's TensorRT EP rejects absolute paths and '..' in ep_cache_context.
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="not in the folder"):
        engine_reference(tmp_path / "m.engine", tmp_path / "a" / "m_ctx.onnx")


def test_tensorrt_version_and_compute_capability_come_from_the_engine_sidecar(tmp_path):
    _source(tmp_path / "model.onnx")
    (tmp_path / "model.engine").write_bytes(b"engine")
    (tmp_path / "model.engine.json").write_text('{"tensorrt_version": "8.6.2", "compute_capability": "8.7"}')
    write_ep_context(tmp_path / "model.engine", tmp_path / "model.onnx", tmp_path / "model_ctx.onnx")
    attrs = _attrs(onnx.load(tmp_path / "model_ctx.onnx").graph.node[0])
    assert attrs["ep_sdk_version"] == b"8.6.2" and attrs["hardware_architecture"] == b"87"
