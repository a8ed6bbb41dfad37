"""runtime/infer.py on hostile inputs, each built as the attack is: real FIFOs named like images, metadata and
sidecars with JSON nested past the stack or odd types, a model declaring absurd input sizes, a real full disk
under --save-outputs, escape sequences in labels and file names. Each: one line, the documented exit code,
nothing waited on, nothing left behind, no raw escape sequence on the terminal."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from bad_inputs import one_error_line
from onnx import TensorProto, helper

from blocks_export.runtime import infer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "runtime"))
from infer_fixtures import classifier_model, ctx_model, sidecar  # noqa: E402

SCRIPT = Path(infer.__file__)
ESC = "\x1b"


def _run(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = infer.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _script(*argv: object, cwd: Path) -> subprocess.CompletedProcess:
    """The script as a device runs it, in a process of its own: a hang is a timeout, not a stuck test run."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def _png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("where", ["direct", "in_folder", "npy"])
def test_fifo_named_like_an_input_is_refused_not_waited_on(tmp_path: Path, where: str) -> None:
    onnx.save(classifier_model(), str(tmp_path / "model.onnx"))
    folder = tmp_path / "images"
    folder.mkdir()
    _png(folder / "a.png")
    fifo = folder / ("b.npy" if where == "npy" else "b.png")
    os.mkfifo(fifo)
    target = folder if where == "in_folder" else fifo
    proc = _script(tmp_path / "model.onnx", target, "--provider", "cpu", cwd=tmp_path)
    line = one_error_line(proc.stderr, "error:")
    assert proc.returncode == 2, proc.stderr
    assert "FIFO" in line and "b.np" in line or "b.png" in line, line


def test_image_swapped_for_a_fifo_after_the_check_is_refused_on_open(tmp_path: Path) -> None:
    """read_image checks the descriptor it opened (non-blocking), not the name it listed earlier."""
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    with pytest.raises(infer.BadInput, match="FIFO"):
        infer.read_image(str(fifo))


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("key,value", [
    ("blocks_export.labels", DEEP),
    ("blocks_export.preprocess", '{"a": ' * 60_000 + "1" + "}" * 60_000),
    ("blocks_export.export_shape", '{"x": [' + "9" * 5000 + "]}"),
    ("blocks_export.labels", json.dumps([{"not": "a name"}])),
], ids=["deep_labels", "deep_preprocess", "5000_digits", "labels_of_objects"])
def test_unreadable_blocks_export_metadata_is_one_line_exit_2(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(classifier_model(metadata={key: value}), str(path))
    code, _out, err = _run(path, "--random", "--provider", "cpu")
    line = one_error_line(err, "error:")
    assert code == 2 and "metadata" in line and "unexpected" not in line, err


@pytest.mark.parametrize("names", ["{0: 'a', 'x': 'b'}", "(" * 200_000 + ")" * 200_000, "{0: " * 3000 + "1" + "}" * 3000,
                                   "[1, 2]", "{0: [1, 2]}"],
                         ids=["mixed_keys", "deep_tuple", "deep_dict", "a_list", "a_list_as_name"])
def test_odd_ultralytics_names_are_ignored_not_a_crash(tmp_path: Path, names: str) -> None:
    path = tmp_path / "model.onnx"
    meta = {"author": "Ultralytics", "task": "classify", "names": names, "blocks_export.labels": "null"}
    onnx.save(classifier_model(metadata=meta), str(path))
    code, out, err = _run(path, "--random", "--provider", "cpu")
    assert code == 0, err
    assert "Traceback" not in err and "error" not in err


def _deploy_ctx(folder: Path, sidecar_text: str) -> Path:
    engine = b"\x00fake plan" * 8
    (folder / "model.engine").write_bytes(engine)
    (folder / "model.engine.json").write_text(sidecar_text)
    path = folder / "model_ctx.onnx"
    onnx.save(ctx_model("model.engine"), str(path))
    return path


@pytest.mark.parametrize("text", [
    '{"format": "blocks-export-engine/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"format": "blocks-export-engine/1", "engine_sha256": "' + "0" * 64 + '", "tensorrt_version": ' + "9" * 5000 + "}",
    "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
], ids=["deep", "5000_digits", "not_utf8"])
def test_unreadable_sidecar_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    path = _deploy_ctx(tmp_path, text)
    code, _out, err = _run(path, "--random")
    line = one_error_line(err, "error:")
    assert code == 3 and "sidecar" in line and "unexpected" not in line, err


@pytest.mark.parametrize("field,value", [("profiles", "abc"), ("profiles", [{"x": {"min": "1x3"}}]),
                                         ("tensorrt_version", ["10", "3"]), ("device_name", {"a": 1})])
def test_sidecar_with_fields_of_the_wrong_type_is_invalid(tmp_path: Path, field: str, value: object) -> None:
    path = tmp_path / "model.engine.json"
    path.write_text(json.dumps(sidecar(b"plan", **{field: value})))
    with pytest.raises(infer.SidecarInvalid, match=field.split("_")[0][:7]):
        infer.read_sidecar(str(path))


@pytest.mark.parametrize("dims", [[1, 3, 100_000, 100_000], [4096, 3, 4096, 4096]])
def test_random_input_of_absurd_declared_size_is_refused_before_allocating(tmp_path: Path, dims: list[int]) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    code, _out, err = _run(path, "--random", "--provider", "cpu")
    line = one_error_line(err, "error:")
    assert code == 2 and "GiB" in line and "--shape" in line, err


def test_negative_export_shape_in_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    meta = {"blocks_export.export_shape": json.dumps({"x": [-1, 3, 4, 4]})}
    onnx.save(classifier_model(metadata=meta), str(path))
    code, _out, err = _run(path, "--random", "--provider", "cpu")
    assert code == 2 and "negative" in one_error_line(err, "error:"), err


def test_save_outputs_on_a_full_disk_leaves_no_folder(tmp_path: Path, tiny_fs: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(classifier_model(), str(path))
    st = os.statvfs(tiny_fs)
    with open(tiny_fs / "filler", "wb") as f:  # fill the disk completely
        with contextlib.suppress(OSError):
            f.write(b"\0" * (st.f_bavail * st.f_frsize))
    target = tiny_fs / "outs" / "run1"
    code, _out, err = _run(path, "--random", "--provider", "cpu", "--save-outputs", target)
    line = one_error_line(err, "error:")
    assert code == 2 and "No space left" in line, err
    assert sorted(os.listdir(tiny_fs)) == ["filler"]


def test_model_strings_and_file_names_reach_the_terminal_escaped(tmp_path: Path) -> None:
    labels = [f"{ESC}]0;pwned\x07", f"{ESC}[2J", "r\u202egnp.exe", "a\nb", "fine"]
    path = tmp_path / "model.onnx"
    onnx.save(classifier_model(metadata={"blocks_export.labels": json.dumps(labels)}), str(path))
    image = _png(tmp_path / f"x{ESC}[31mred.png")
    code, out, err = _run(path, image, "--provider", "cpu", "--topk", "5")
    assert code == 0, err
    assert ESC not in out + err and "\u202e" not in out and "\x07" not in out
    assert "\\x1b]0;pwned\\x07" in out and "\\x1b[31mred.png" in out and "\\u202e" in out and "a\\nb" in out


def test_newline_in_a_file_name_does_not_split_the_error_line(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(classifier_model(), str(path))
    broken = tmp_path / "bad\nname.png"
    broken.write_bytes(b"not an image")
    code, _out, err = _run(path, broken, "--provider", "cpu")
    line = one_error_line(err, "error:")
    assert code == 2 and "bad\\nname.png" in line and len(err.strip().splitlines()) == 1, err
