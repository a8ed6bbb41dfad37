"""`check`, `inspect` and `x.onnx --to trt` on graphs that onnxruntime and the TensorRT parser refuse before any
operator is looked at: each is written here as raw ONNX (a cycle, an input nothing produces, an output nothing
produces or without a type, IR version 99, an empty graph), and none may be PASSED: one line, exit 2, nothing
written. The same graph, repaired, passes (the check can tell them apart)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from bad_inputs import cli, listing, one_error_line, relu_model
from onnx import TensorProto, helper


def _two_relus() -> onnx.ModelProto:
    model = relu_model()
    g = model.graph
    del g.node[:]
    g.node.extend([helper.make_node("Relu", ["images"], ["a"], name="first"),
                   helper.make_node("Relu", ["a"], ["output0"], name="second")])
    return model


def broken(case: str) -> onnx.ModelProto:
    model = _two_relus()
    g = model.graph
    if case == "cycle":  # first reads second's output, second reads first's
        g.node[0].input[0] = "output0"
    elif case == "dangling_input":
        g.node[1].input[0] = "nobody_writes_this"
    elif case == "output_not_produced":
        g.output[0].name = "nobody_writes_this"
    elif case == "untyped_output":
        g.output[0].ClearField("type")
    elif case == "ir_version_99":
        model.ir_version = 99
    elif case == "empty_graph":  # no node: the output is produced by nothing
        del g.node[:]
    return model


CASES = ["cycle", "dangling_input", "output_not_produced", "untyped_output", "ir_version_99", "empty_graph"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", [("check",), ("inspect",), ("--to", "trt")])
def test_a_structurally_broken_graph_is_refused_in_one_line(tmp_path: Path, case: str, command: tuple) -> None:
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    onnx.save(broken(case), src)
    out = tmp_path / "out"
    out.mkdir()
    args = [src, *command] if command[0] == "--to" else [command[0], src]
    extra = ["-o", out / "model.engine"] if command[0] == "--to" else []
    code, stdout, stderr = cli(*args, *extra)
    assert code == 2, (stdout, stderr)
    assert "PASSED" not in stdout
    one_error_line(stderr)
    assert listing(out) == []


def test_the_repaired_graph_passes_check(tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    onnx.save(_two_relus(), src)
    code, stdout, _ = cli("check", src)
    assert code == 0 and "PASSED" in stdout


def test_an_untyped_output_is_not_confused_with_a_sequence_output() -> None:
    value = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    assert value.type.HasField("sequence_type")
