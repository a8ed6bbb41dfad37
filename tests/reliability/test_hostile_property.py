"""Seeded property tests (Hypothesis, bounded examples, derandomized): whatever bytes a model file holds, the CLI
answers with an exit code it documents and one line, never a traceback, and no code from the file runs.

- model bytes: random bytes, and mutated payload pickles (every form that runs ``os.system`` under a full
  unpickler: the command would create a marker file), as ``.pt``, ``.pt2`` and inside a torch zip, exported
  without ``--trust-pickle``: exit 2, one line, no marker file;
- ONNX bytes: a valid model mutated (bytes flipped, cut, inserted, duplicated) for ``check`` and ``inspect``:
  exit 0, or exit 2 with one line; and a graph ``check`` PASSED is one this test's onnxruntime loads.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import onnxruntime as ort
import pytest
from bad_inputs import PICKLE_FORMS, cli, one_error_line, payload_pickle, relu_model, torch_zip_around
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def _mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few edits: byte flips, a cut, an insertion, a repeated slice."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del out[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            out[at:at] = out[at:at + draw(st.integers(1, 32))]
    return bytes(out)


@pytest.fixture(scope="module")
def marker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marker")


def _payloads(marker: Path) -> st.SearchStrategy[bytes]:
    command = f"touch {shlex.quote(str(marker))}"
    return st.sampled_from([payload_pickle(form, command) for form in PICKLE_FORMS])


@SETTINGS
@given(data=st.data())
def test_any_model_bytes_are_one_line_exit_2_and_run_nothing(tmp_path_factory: pytest.TempPathFactory,
                                                             marker_dir: Path, data: st.DataObject) -> None:
    marker = marker_dir / "ran"
    pickle_bytes = data.draw(_payloads(marker).flatmap(lambda p: st.one_of(st.just(p), _mutated(p))))
    body = data.draw(st.one_of(st.binary(max_size=600), st.just(pickle_bytes),
                               st.just(torch_zip_around(pickle_bytes))))
    suffix = data.draw(st.sampled_from([".pt", ".pth", ".pt2"]))
    folder = tmp_path_factory.mktemp("fuzz")
    model = folder / f"model{suffix}"
    model.write_bytes(body)
    out = folder / "out.onnx"
    code, stdout, stderr = cli(model, "--to", "onnx", "--imgsz", "8", "--quiet", "-o", out)
    assert code == 2, (body[:80], stdout, stderr)
    one_error_line(stderr)
    assert not marker.exists(), body[:80]
    assert not out.exists()


@pytest.fixture(scope="module")
def valid_onnx() -> bytes:
    return relu_model(weight=True).SerializeToString()


@SETTINGS
@given(data=st.data())
def test_mutated_onnx_is_refused_in_one_line_or_is_a_graph_onnxruntime_loads(
        tmp_path_factory: pytest.TempPathFactory, valid_onnx: bytes, data: st.DataObject) -> None:
    body = data.draw(_mutated(valid_onnx))
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    path.write_bytes(body)
    for command in ("check", "inspect"):
        code, stdout, stderr = cli(command, path)
        assert code in (0, 2), (command, body, stdout, stderr)
        assert "Traceback" not in stderr + stdout
        if code == 2:
            one_error_line(stderr)
        elif command == "check":  # PASSED: onnxruntime loads it (the check's claim, checked independently)
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_model_strings_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """A node name and op type carrying escape sequences (window title, clear screen, carriage return, bidi
    override) are printed escaped: `check` names the node in its FAILED line."""
    model = relu_model()
    model.graph.node[0].name = "relu\x1b]0;owned\x07\u202e"
    model.graph.node[0].op_type = "Evil\x1b[2J\r"
    model.doc_string = "\x1b[2J\x1b[Hwiped"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    code, stdout, stderr = cli("check", path)
    assert code == 1, (stdout, stderr)
    assert "relu\\x1b]0;owned\\x07\\u202e" in stdout and "Evil\\x1b[2J\\r" in stdout, stdout
    code, stdout2, stderr2 = cli("inspect", path)
    for raw in ("\x1b", "\x07", "\r", "\u202e"):
        assert raw not in stdout + stderr + stdout2 + stderr2, (stdout, stderr, stdout2, stderr2)
