"""``cpu_session`` runs plugin-node graphs on onnxruntime CPU through the reference op, and plain graphs as is."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torchvision.ops import deform_conv2d

from blocks_export.plugins.deform_conv_contract import DeformConvParams
from blocks_export.plugins.ort_cpu import cpu_plugin_copy, cpu_session, has_plugin_nodes
from blocks_export.plugins.plugin_node import plugin_trt_domain
from blocks_export.runtime.parity import rel_l2

WEIGHT = np.random.default_rng(0).standard_normal((6, 2, 3, 3)).astype(np.float32)
BIAS = np.random.default_rng(1).standard_normal(6).astype(np.float32)
PARAMS = DeformConvParams((1, 2), (1, 0), (2, 1), 2, 2, True)


def _plugin_model(elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x -> Relu -> ModulatedDeformConv2d(x, offset, mask, weight, bias) -> y (the plugin's input order)."""
    node = helper.make_node("ModulatedDeformConv2d", ["xr", "offset", "mask", "weight", "bias"], ["y"],
                            name="dcn", **PARAMS.plugin_attributes())
    np_type = helper.tensor_dtype_to_np_dtype(elem)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["xr"]), node], "g",
        [helper.make_tensor_value_info(n, elem, ["n", n + "_c", n + "_h", n + "_w"]) for n in ("x", "offset", "mask")],
        [helper.make_tensor_value_info("y", elem, ["n", 6, "ho", "wo"])],
        [onnx.numpy_helper.from_array(WEIGHT.astype(np_type), "weight"),
         onnx.numpy_helper.from_array(BIAS.astype(np_type), "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _inputs(n: int = 2, h: int = 9, w: int = 11) -> dict[str, np.ndarray]:
    ho, wo = PARAMS.output_size(h, w, (3, 3))
    g = np.random.default_rng(3)
    return {"x": g.standard_normal((n, 4, h, w)).astype(np.float32),
            "offset": (g.standard_normal((n, 36, ho, wo)) * 3).astype(np.float32),
            "mask": g.random((n, 18, ho, wo)).astype(np.float32)}


def _torchvision(feeds: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    return deform_conv2d(t["x"].relu(), t["offset"], torch.from_numpy(WEIGHT), torch.from_numpy(BIAS),
                         PARAMS.stride, PARAMS.padding, PARAMS.dilation, t["mask"]).numpy()


def test_plugin_graph_runs_on_cpu_and_matches_torchvision() -> None:
    model = _plugin_model()
    assert has_plugin_nodes(model)
    for shape in [(2, 9, 11), (1, 5, 16)]:
        feeds = _inputs(*shape)
        (got,) = cpu_session(model).run(None, feeds)
        assert rel_l2(_torchvision(feeds), got) <= 1e-5
    assert model.graph.node[1].domain == ""  # the caller's graph is left as it was


def test_float16_plugin_graph_runs_through_float32_reference() -> None:
    model = _plugin_model(TensorProto.FLOAT16)
    feeds = _inputs()
    (got,) = cpu_session(model).run(None, {k: v.astype(np.float16) for k, v in feeds.items()})
    assert got.dtype == np.float16
    assert rel_l2(_torchvision(feeds), got) <= 1e-2
    casts = [n for n in cpu_plugin_copy(model).graph.node if n.op_type == "Cast"]
    assert len(casts) == 6  # five inputs to float32, the output back to float16


def test_cpu_session_accepts_bytes_and_paths(tmp_path) -> None:
    model = _plugin_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    feeds = _inputs()
    ref = _torchvision(feeds)
    for source in (model.SerializeToString(), str(path), path):
        assert rel_l2(ref, cpu_session(source).run(None, feeds)[0]) <= 1e-5


def test_plugin_trt_domain_moves_nodes_and_declares_the_domain() -> None:
    model = _plugin_model()
    trt = plugin_trt_domain(model)
    assert [n.domain for n in trt.graph.node if n.op_type == "ModulatedDeformConv2d"] == ["trt.plugins"]
    assert ("trt.plugins", 1) in {(o.domain, o.version) for o in trt.opset_import}
    assert has_plugin_nodes(trt)
    onnx.checker.check_model(trt)  # custom domain: the checker no longer needs a schema for the node


def test_plain_graph_has_no_plugin_nodes_and_does_not_import_extensions() -> None:
    code = (
        "import sys, numpy as np, onnx\n"
        "from onnx import helper, TensorProto\n"
        "from blocks_export.plugins.ort_cpu import cpu_session, has_plugin_nodes\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',"
        " [helper.make_tensor_value_info('x', TensorProto.FLOAT, [2])],"
        " [helper.make_tensor_value_info('y', TensorProto.FLOAT, [2])])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)], ir_version=9)\n"
        "assert not has_plugin_nodes(m)\n"
        "y = cpu_session(m).run(None, {'x': np.array([-1.0, 2.0], np.float32)})[0]\n"
        "assert y.tolist() == [0.0, 2.0]\n"
        "assert 'onnxruntime_extensions' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extensions_give_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    import blocks_export.plugins.ort_cpu as ort_cpu

    real_import = builtins.__import__

    def no_extensions(name: str, *args, **kwargs):
        if name.startswith("onnxruntime_extensions"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(ort_cpu, "_registered", False)
    monkeypatch.setattr(builtins, "__import__", no_extensions)
    with pytest.raises(ImportError, match="needs onnxruntime-extensions") as info:
        cpu_session(_plugin_model())
    assert "\n" not in str(info.value)


def test_convert_opset_keeps_plugin_nodes_in_the_default_domain() -> None:
    from blocks_export.export.opset_down import convert_opset

    converted = convert_opset(_plugin_model(), 16)
    assert {(o.domain, o.version) for o in converted.opset_import} == {("", 16)}
    assert [n.domain for n in converted.graph.node if n.op_type == "ModulatedDeformConv2d"] == [""]
    feeds = _inputs()
    assert rel_l2(_torchvision(feeds), cpu_session(converted).run(None, feeds)[0]) <= 1e-5
