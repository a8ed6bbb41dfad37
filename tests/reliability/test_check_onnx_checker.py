"""`check` runs onnx's full checker (strict shape inference) after the structural checks: graphs that are well
formed node by node but that onnxruntime refuses at load must not be PASSED (`inspect` describes such a graph; a
file that does not parse is refused by both). Each case is confirmed
broken by this test's own onnxruntime session first, so the test fails if the case stops being a broken graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bad_inputs import cli, one_error_line, relu_model
from onnx import helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

ORT_REFUSALS = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.InvalidArgument)


def _case(case: str) -> bytes:
    model = relu_model(weight=True)  # Relu -> Add(w: 3x8x8) -> output0
    g = model.graph
    if case == "add_shapes_disagree":  # [1,3,8,8] + [4,8,8]: no broadcast exists
        g.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((4, 8, 8), np.float32), "w"))
    elif case == "relu_with_two_inputs":
        g.node[0].input.append("w")
    elif case == "unknown_attribute":
        g.node[0].attribute.append(helper.make_attribute("alpha", 0.5))
    data = model.SerializeToString()
    if case == "length_past_the_end":  # doc_string (field 6) announcing 127 bytes, 3 present
        data += bytes([0x32, 0x7F]) + b"abc"
    return data


CASES = ["add_shapes_disagree", "relu_with_two_inputs", "unknown_attribute", "length_past_the_end"]


@pytest.mark.parametrize(("case", "command"), [*((c, "check") for c in CASES), ("length_past_the_end", "inspect")])
def test_a_graph_onnxruntime_refuses_is_not_passed(tmp_path: Path, case: str, command: str) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_case(case))
    with pytest.raises(ORT_REFUSALS):  # the oracle: onnxruntime refuses this file at load
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    code, out, err = cli(command, path)
    assert code == 2, (out, err)
    assert "PASSED" not in out
    one_error_line(err)


def test_the_sound_graph_passes_check(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_case("sound"))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    code, out, err = cli("check", path)
    assert code == 0 and "PASSED" in out, (out, err)


def test_a_graph_without_input_shapes_is_not_refused_by_the_checker(tmp_path: Path) -> None:
    """onnx's checker requires a shape on graph inputs; onnxruntime does not: such a graph is left to the rules."""
    model = relu_model()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    code, out, err = cli("check", path)
    assert code == 0 and "PASSED" in out, (out, err)
