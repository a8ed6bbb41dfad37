"""`inspect` and `check` on ONNX files built the way an attacker builds them (#13): each is bad input
(exit 2, one line) or a FAILED check, never PASSED and never "unexpected error"."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from blocks_export.export.cli import app, with_default_command


def _invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, with_default_command([str(a) for a in args]))
    return result.exit_code, result.stdout, result.stderr


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("blocks-export: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


def _ld(number: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out + bytes([n]))
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _relu(opset: int = 17, inits: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y], inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _deeply_nested(depth: int = 3000) -> bytes:
    # GraphProto{node: NodeProto{op_type: If, attribute: {name, g: GraphProto{...}}}} nested `depth` times.
    graph = b""
    for _ in range(depth):
        node = _ld(4, b"If") + _ld(5, _ld(1, b"then_branch") + _ld(6, graph))
        graph = _ld(1, node)
    return _ld(7, graph) + _ld(8, _ld(1, b"") + b"\x10\x11")


@pytest.mark.parametrize("case", ["random", "truncated", "nested"])
def test_inspect_on_a_corrupt_onnx_is_bad_input(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.onnx"
    if case == "random":
        path.write_bytes(bytes(np.random.default_rng(13).integers(0, 256, 4096, dtype=np.uint8)))
    elif case == "truncated":
        path.write_bytes(_relu().SerializeToString()[:-9])
    else:
        path.write_bytes(_deeply_nested())
    code, out, err = _invoke("inspect", path)
    assert code == 2, (out, err)
    assert "not a valid ONNX model" in _error_line(err) or "not an ONNX model" in _error_line(err)


def _with_external(tmp_path: Path, location: str) -> Path:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    model = _relu(inits=[w])
    (tmp_path / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    model.graph.initializer[0].CopyFrom(w)
    path = deploy / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_check_refuses_external_data_outside_the_model_folder(tmp_path: Path, how: str) -> None:
    if how == "parent":
        path = _with_external(tmp_path, "../w.bin")
    elif how == "absolute":
        path = _with_external(tmp_path, str(tmp_path / "w.bin"))
    else:
        path = _with_external(tmp_path, "w.bin")
        os.symlink(tmp_path / "w.bin", path.parent / "w.bin")
    code, out, err = _invoke("check", path, "--target", "ort")
    assert code == 2 and "PASSED" not in out, (out, err)
    assert "outside the model's folder" in _error_line(err)


def test_check_refuses_an_initializer_declaring_2_to_50_elements_with_no_data(tmp_path: Path) -> None:
    huge = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2 ** 25, 2 ** 25])
    path = tmp_path / "model.onnx"
    path.write_bytes(_relu(inits=[huge]).SerializeToString())
    for target in ("ort", "jetpack6"):
        code, out, err = _invoke("check", path, "--target", target)
        assert code == 2 and "PASSED" not in out, (out, err)
        assert "holds no data" in _error_line(err)


def test_check_fails_an_opset_no_runtime_knows_with_target_ort(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_relu(opset=99).SerializeToString())
    code, out, err = _invoke("check", path, "--target", "ort")
    assert code == 1 and "PASSED" not in out, (out, err)
    assert "opset 99 is newer than any ONNX opset" in out


def test_check_still_passes_a_sound_model_with_external_data_beside_it(tmp_path: Path) -> None:
    path = _with_external(tmp_path, "w.bin")
    os.replace(tmp_path / "w.bin", path.parent / "w.bin")
    code, out, err = _invoke("check", path, "--target", "ort")
    assert code == 0 and "PASSED" in out, (out, err)
