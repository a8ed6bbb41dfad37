"""Output paths that cannot or must not be written: refused with one line (exit 2); the previous file at that
path is untouched and no temporary file is left behind. A full disk and a read-only folder are simulated by
making the write itself fail (tests run as root here, and root ignores permissions)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import onnx
import pytest
from bad_inputs import cli, export_tiny, listing, one_error_line, tiny_model_file

PREVIOUS = b"previous export, must survive"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("src"))


_export = export_tiny


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in listing(folder) if p.endswith(".tmp") or "/." in "/" + p], listing(folder)


def test_missing_output_folder_is_refused(tmp_path: Path, source: Path) -> None:
    code, _, err = _export(source, tmp_path / "missing" / "m.onnx")
    assert code == 2 and "does not exist" in one_error_line(err)
    assert listing(tmp_path) == []


def test_output_path_that_is_a_directory_is_refused(tmp_path: Path, source: Path) -> None:
    (tmp_path / "m.onnx").mkdir()
    code, _, err = _export(source, tmp_path / "m.onnx")
    assert code == 2 and "is a directory" in one_error_line(err)
    assert listing(tmp_path) == ["m.onnx"]


def test_existing_output_without_force_is_refused_and_untouched(tmp_path: Path, source: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(PREVIOUS)
    code, _, err = _export(source, tmp_path / "m.onnx")
    assert code == 2 and "already exists; pass --force" in one_error_line(err)
    assert (tmp_path / "m.onnx").read_bytes() == PREVIOUS
    assert listing(tmp_path) == ["m.onnx"]


def test_existing_output_with_force_is_replaced_by_a_complete_model(tmp_path: Path, source: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(PREVIOUS)
    code, _, err = _export(source, tmp_path / "m.onnx", "--force")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    assert listing(tmp_path) == ["m.onnx", "m.report.json"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions; "
                    "the read-only case is covered by "
                    "test_write_failure_keeps_the_previous_file_and_leaves_no_temporary[read_only]")
def test_read_only_output_folder_is_refused_before_exporting(tmp_path: Path, source: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = _export(source, folder / "m.onnx")
        assert code == 2 and "not writable" in one_error_line(err)
        assert listing(folder) == []
    finally:
        folder.chmod(0o755)


def _fail_mkstemp(monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    from blocks_export.export import io

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        raise error
    monkeypatch.setattr(io.tempfile, "mkstemp", mkstemp)


def _fail_save_after_partial_write(monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    def save_model(model: object, path: str, *args: object, **kwargs: object) -> None:
        with open(path, "wb") as f:  # the disk fills up halfway through the model
            f.write(b"\x08\x08partial")
        raise error
    monkeypatch.setattr(onnx, "save_model", save_model)


def _fail_report_fsync(monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    from blocks_export.export import io

    def fsync(fd: int) -> None:
        raise error
    monkeypatch.setattr(io.os, "fsync", fsync)


# case -> (how the write fails, the file that must keep its previous content, words in the refusal)
WRITE_FAILURES = {
    "read_only": (_fail_mkstemp, OSError(errno.EACCES, "Permission denied"), "m.onnx", "Permission denied"),
    "read_only_filesystem": (_fail_mkstemp, OSError(errno.EROFS, "Read-only file system"), "m.onnx",
                             "Read-only file system"),
    "disk_full_during_onnx": (_fail_save_after_partial_write, OSError(errno.ENOSPC, "No space left on device"),
                              "m.onnx", "No space left on device"),
    "disk_full_during_report": (_fail_report_fsync, OSError(errno.ENOSPC, "No space left on device"),
                                "m.report.json", "No space left on device"),
}


@pytest.mark.parametrize("case", sorted(WRITE_FAILURES))
def test_write_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path, source: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       case: str) -> None:
    fail, error, kept, words = WRITE_FAILURES[case]
    (tmp_path / kept).write_bytes(PREVIOUS)
    fail(monkeypatch, error)
    code, _, err = _export(source, tmp_path / "m.onnx", "--force")
    line = one_error_line(err)
    assert code == 2 and words in line and "-o/--output" in line, line
    assert (tmp_path / kept).read_bytes() == PREVIOUS
    _no_temporaries(tmp_path)


def test_disk_full_while_writing_the_engine_keeps_the_previous_engine(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import trt_double
    from bad_inputs import relu_model

    from blocks_export.export.trt import api

    monkeypatch.setitem(sys.modules, "tensorrt", trt_double.make_tensorrt("10"))
    monkeypatch.setattr(api, "cuda_device", lambda command, index=0: api.DeviceInfo("Orin", "8.7"))
    onnx.save(relu_model(), tmp_path / "m.onnx")
    for name in ("m.engine", "m.engine.json", "m_ctx.onnx"):
        (tmp_path / name).write_bytes(PREVIOUS)
    real_write_bytes = Path.write_bytes

    def full(self: Path, data: bytes) -> int:  # the disk fills up halfway through the engine file
        if self.name == "m.engine":
            real_write_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    # The engine files go through the one atomic writer (export/io.py), which writes each file with write_bytes.
    monkeypatch.setattr(Path, "write_bytes", full)
    code, _, err = cli(tmp_path / "m.onnx", "--to", "trt", "--target", "jetpack6", "--force", "--quiet")
    line = one_error_line(err)
    assert code == 2 and "No space left on device" in line, line
    for name in ("m.engine", "m.engine.json", "m_ctx.onnx"):
        assert (tmp_path / name).read_bytes() == PREVIOUS
    _no_temporaries(tmp_path)
