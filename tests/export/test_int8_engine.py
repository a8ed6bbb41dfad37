"""Engine builds from a Q/DQ graph through the TensorRT test double: strongly typed on 10+, explicit INT8 on 8.x
(the double checks our orchestration only; real builds are in test_engine_real.py, skipped without TensorRT)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from blocks_export.export.trt import api
from blocks_export.export.trt.api import DeviceInfo
from blocks_export.export.trt.build import build_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trt_double import make_tensorrt  # noqa: E402


def _qdq_file(tmp_path: Path) -> Path:
    """x -> QuantizeLinear -> DequantizeLinear (int8, zero point 0) -> Relu -> y."""
    dims = [1, 3, 8, 8]
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq"),
             helper.make_node("Relu", ["d"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def _install(monkeypatch: pytest.MonkeyPatch, flavour: str, **kw: bool) -> types.ModuleType:
    trt = make_tensorrt(flavour, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(api, "cuda_device", lambda command, index=0: DeviceInfo("Orin (double)", "8.7"))
    return trt


def _calls(trt: types.ModuleType, name: str) -> list[tuple]:
    return [c for c in trt.knobs.calls if c[0] == name]


@pytest.mark.parametrize(("flavour", "target"), [("10", "jetpack6"), ("10", "trt10"), ("11", "trt11")])
def test_qdq_graph_builds_strongly_typed_without_precision_flags_on_tensorrt_10_and_11(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flavour: str, target: str) -> None:
    trt = _install(monkeypatch, flavour)
    result = build_engine(_qdq_file(tmp_path), tmp_path / "model.engine", fp16=False, target=target)
    assert _calls(trt, "create_network") == [("create_network", 1 << 1)]  # STRONGLY_TYPED
    assert _calls(trt, "set_flag") == []  # precision lives in the graph
    assert result.strongly_typed and result.precision == "int8"
    assert result.sidecar.precision == "int8"


def test_qdq_graph_on_tensorrt_8_sets_the_int8_flag_and_fp16_when_asked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trt = _install(monkeypatch, "8.6")
    result = build_engine(_qdq_file(tmp_path), tmp_path / "model.engine", fp16=True, target="jetpack6.0")
    assert _calls(trt, "create_network") == [("create_network", 1 << 0)]  # EXPLICIT_BATCH
    assert _calls(trt, "set_flag") == [("set_flag", "INT8"), ("set_flag", "FP16")]
    assert _calls(trt, "layer.precision") == []  # Q/DQ placement decides, nothing is pinned
    assert not result.strongly_typed and result.precision == "int8"
