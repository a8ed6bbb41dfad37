"""``blocks-export check --target ...`` on Q/DQ graphs: the forms each TensorRT line parses pass, the others are
flagged with the fix (graphs written here with onnx.helper, the way other quantizers write them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from blocks_export.export.cli import app, flag_words, with_default_command

TARGETS = ("jetpack5", "jetpack6", "trt11")


def _conv_qdq(path: Path, *, weight_axis: int = 0, qtype: int = TensorProto.INT8, act_zero: int = 0,
              per_channel_activation: bool = False, opset: int = 16) -> Path:
    """x -> Q/DQ (per tensor) -> Conv(DQ(Q(w)) per channel on ``weight_axis``) -> y."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w_scale = np.abs(w).max(axis=tuple(a for a in range(4) if a != weight_axis)) / 127
    np_q = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}
    if qtype == TensorProto.INT4:
        zp_act = helper.make_tensor("x_zp", TensorProto.INT4, [], [0])
        zp_w = helper.make_tensor("w_zp", TensorProto.INT4, [w_scale.size], [0] * w_scale.size)
    else:
        zp_act = numpy_helper.from_array(np.array(act_zero, dtype=np_q[qtype]), "x_zp")
        zp_w = numpy_helper.from_array(np.zeros(w_scale.size, dtype=np_q[qtype]), "w_zp")
    x_scale = np.full(3, 0.02, np.float32) if per_channel_activation else np.array(0.02, np.float32)
    x_zp = zp_act if not per_channel_activation else numpy_helper.from_array(np.zeros(3, np.int8), "x_zp")
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w_scale.astype(np.float32), "w_scale"), zp_w,
             numpy_helper.from_array(x_scale, "x_scale"), x_zp]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="x_q",
                         **({"axis": 1} if per_channel_activation else {})),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="x_dq",
                         **({"axis": 1} if per_channel_activation else {})),
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], name="w_q", axis=weight_axis),
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"], name="w_dq", axis=weight_axis),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _check(path: Path, target: str) -> dict:
    result = CliRunner().invoke(app, with_default_command(["check", str(path), "--target", target, "--json"]))
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] == (result.exit_code == 0)
    return report


def _why(report: dict) -> str:
    return " ".join(i["why"] + " fix: " + i["fix"] for i in report["issues"])


@pytest.mark.parametrize("target", TARGETS)
def test_symmetric_int8_per_channel_weights_pass_every_target(tmp_path: Path, target: str) -> None:
    report = _check(_conv_qdq(tmp_path / "ok.onnx"), target)
    assert report["passed"], report["issues"]


@pytest.mark.parametrize("target", ("jetpack5", "jetpack6.0"))
def test_a_weight_scale_on_the_input_channel_axis_is_flagged_on_tensorrt_8(tmp_path: Path, target: str) -> None:
    report = _check(_conv_qdq(tmp_path / "axis1.onnx", weight_axis=1), target)
    assert not report["passed"] and "output-channel axis (0)" in _why(report)
    # the fix: the JSON keeps the library's words, which the terminal spells as the flag
    assert "`int8=True`" in _why(report) and "--int8" in flag_words(_why(report))


def test_int4_is_flagged_where_tensorrt_has_no_int4_and_on_activations_everywhere(tmp_path: Path) -> None:
    path = _conv_qdq(tmp_path / "int4.onnx", qtype=TensorProto.INT4, opset=21)
    j5 = _check(path, "jetpack5")
    assert not j5["passed"] and "INT4" in _why(j5)
    t11 = _check(path, "trt11")  # INT4 weights parse on 10+; the INT4 activation does not
    flagged = {i["node_name"] for i in t11["issues"] if "INT4" in i["why"]}
    assert flagged == {"x_q", "x_dq"}


@pytest.mark.parametrize("target", TARGETS)
def test_uint8_with_a_zero_point_is_flagged(tmp_path: Path, target: str) -> None:
    report = _check(_conv_qdq(tmp_path / "u8.onnx", qtype=TensorProto.UINT8, act_zero=128), target)
    assert not report["passed"]
    why = _why(report)
    assert "UINT8" in why and "zero point 0" in why


def test_per_channel_activation_scales_are_flagged_on_tensorrt_8(tmp_path: Path) -> None:
    path = _conv_qdq(tmp_path / "pc_act.onnx", per_channel_activation=True)
    assert "per-channel scale on an activation" in _why(_check(path, "jetpack5"))
