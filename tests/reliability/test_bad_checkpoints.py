"""Broken and hostile checkpoints: each is refused with one line on stderr, exit 2, nothing written, and no
code from the file runs without --trust-pickle."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import export_models
import numpy as np
import pytest
import torch
from bad_inputs import cli, listing, one_error_line

MARKER = "PWNED"


def _truncated_zip(path: Path) -> None:
    buf = io.BytesIO()
    torch.save(export_models.RefNet().state_dict(), buf)
    data = buf.getvalue()
    assert zipfile.is_zipfile(io.BytesIO(data))  # torch.save writes the zip format
    path.write_bytes(data[: len(data) // 2])


# case -> (writer, extra CLI arguments, words the refusal must contain)
CASES = {
    "empty": (lambda p: p.write_bytes(b""), [], ["empty"]),
    "random_bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), [], ["not"]),
    "truncated_zip": (_truncated_zip, [], ["truncated or corrupted"]),
    "tensor": (lambda p: torch.save(torch.zeros(2, 3), p), [], ["single tensor", "(2, 3)"]),
    "list": (lambda p: torch.save([torch.zeros(2), 3], p), [], ["list", "not a model"]),
    "dict_without_model": (lambda p: torch.save({"epoch": 3, "best_fitness": 0.5}, p), [],
                           ["'epoch'", "no 'model' or 'ema'"]),
    "arch_missing_module": (lambda p: torch.save(export_models.RefNet().state_dict(), p),
                            ["--arch", "no_such_module_xyz:build"], ["cannot import module", "no_such_module_xyz"]),
    "arch_not_callable": (lambda p: torch.save(export_models.RefNet().state_dict(), p),
                          ["--arch", "export_models:NOT_CALLABLE"], ["not a callable"]),
    "arch_callable_raises": (lambda p: torch.save(export_models.RefNet().state_dict(), p),
                             ["--arch", "export_models:raises"], ["raised RuntimeError", "cannot build this"]),
    "state_dict_keys_mismatch": (lambda p: torch.save(export_models.CANet().state_dict(), p),
                                 ["--arch", "export_models:build_refnet"],
                                 ["missing keys: stem.conv.weight", "unexpected keys: stem.weight"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_is_refused_with_one_line_and_nothing_written(tmp_path: Path, case: str) -> None:
    write, extra, words = CASES[case]
    src = tmp_path / "model.pt"
    write(src)
    before = listing(tmp_path)
    code, _out, err = cli(src, "--to", "onnx", "--trust-pickle", "-o", tmp_path / "model.onnx", *extra)
    line = one_error_line(err)
    assert code == 2, err
    for word in words:
        assert word in line, line
    assert listing(tmp_path) == before


def _save_zip(obj: object, path: Path) -> None:
    torch.save(obj, path)


def _save_legacy(obj: object, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _save_plain_pickle(obj: object, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain_pickle"])
@pytest.mark.parametrize("where", ["whole_object", "inside_checkpoint_dict"])
def test_code_running_pickle_is_refused_without_trust_pickle_and_never_runs(tmp_path: Path, where: str,
                                                                          fmt: str) -> None:
    marker = tmp_path / MARKER
    payload = export_models.Marker(str(marker))
    src = tmp_path / "evil.pt"
    save = {"zip": _save_zip, "legacy": _save_legacy, "plain_pickle": _save_plain_pickle}[fmt]
    save(payload if where == "whole_object" else {"model": payload, "epoch": 1}, src)
    for command in (["export", src, "--to", "onnx"], ["inspect", src]):
        code, _out, err = cli(*command)
        line = one_error_line(err)
        assert code == 2 and "--trust-pickle" in line and "posix.system" in line, line
        assert not marker.exists()
    assert listing(tmp_path) == ["evil.pt"]


def test_refusal_shows_a_traceback_only_with_debug(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save(torch.zeros(2), src)
    code, _out, err = cli(src, "--to", "onnx", "--debug")
    assert code == 2 and "Traceback" in err and "single tensor" in err


def test_trust_pickle_really_runs_the_files_code(tmp_path: Path) -> None:
    """The control of the test above: the payload is live, and --trust-pickle is what lets it run."""
    marker = tmp_path / MARKER
    torch.save(export_models.Marker(str(marker)), tmp_path / "evil.pt")
    code, _out, err = cli(tmp_path / "evil.pt", "--to", "onnx", "--trust-pickle")
    assert marker.exists()
    assert code == 2 and "not a model" in one_error_line(err)  # os.system's return value is no model


def _memo_trick_pickle(command: str) -> bytes:
    """``posix.system(command)`` whose module and name reach STACK_GLOBAL only through the memo (pushed,
    memoized, popped, fetched back): a scan that reads the strings just before STACK_GLOBAL sees none."""
    def text(s: str) -> bytes:
        data = s.encode()
        return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE

    return (b"\x80\x04" + text("posix") + b"\x94" + b"0" + text("system") + b"\x94" + b"0"  # MEMOIZE, POP
            + b"h\x00" + b"h\x01" + b"\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
            + text(command) + b"\x85" + b"R" + b".")  # TUPLE1, REDUCE, STOP


def _in_torch_zip(pickle_bytes: bytes, path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("envelope", ["plain_pickle", "torch_zip"])
def test_memo_trick_pickle_is_refused_in_one_line_naming_the_global(tmp_path: Path, envelope: str) -> None:
    marker = tmp_path / MARKER
    data = _memo_trick_pickle(f"touch {marker}")
    src = tmp_path / "model.pt"
    if envelope == "plain_pickle":
        src.write_bytes(data)
    else:
        _in_torch_zip(data, src)
    code, _out, err = cli(src, "--to", "onnx", "-o", tmp_path / "model.onnx")
    line = one_error_line(err)
    assert code == 2, err
    assert "posix.system" in line and "--trust-pickle" in line, line
    assert "corrupted" not in line and "Warning" not in err, err
    assert not marker.exists()
    assert listing(tmp_path) == ["model.pt"]


def test_memo_trick_pickle_is_live_so_the_refusal_above_means_something(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    pickle.loads(_memo_trick_pickle(f"touch {marker}"))
    assert marker.exists()
