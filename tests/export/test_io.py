import os
from pathlib import Path

import pytest

from blocks_export.export.cli import flag_words
from blocks_export.export.errors import OutputError
from blocks_export.export.io import atomic_folder_files, atomic_path, atomic_write_bytes, check_output_path


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    atomic_write_bytes(out, b"new")
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_or_interrupted_write_keeps_the_previous_file_and_removes_the_temporary(tmp_path: Path,
                                                                                      error: BaseException) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(type(error)):
        with atomic_path(out) as tmp:
            assert tmp.parent == tmp_path  # same folder: os.replace stays on one filesystem
            tmp.write_bytes(b"half")
            raise error
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_write_error_from_the_filesystem_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.onnx"

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        atomic_write_bytes(out, b"x" * 100)
    assert list(tmp_path.iterdir()) == []


def test_multi_file_output_moves_every_file_or_none(tmp_path: Path) -> None:
    with atomic_folder_files(tmp_path, ["m.onnx.data", "m.onnx"]) as tmp:
        (tmp / "m.onnx.data").write_bytes(b"d")
        (tmp / "m.onnx").write_bytes(b"m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    with pytest.raises(RuntimeError):
        with atomic_folder_files(tmp_path, ["n.onnx"]) as tmp:
            (tmp / "n.onnx").write_bytes(b"m")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_output_checks_refuse_each_unwritable_case(tmp_path: Path) -> None:
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"x")
    with pytest.raises(OutputError) as refused:
        check_output_path(existing, force=False)
    assert ("force", "True") in refused.value.options and "--force" in flag_words(str(refused.value))
    check_output_path(existing, force=True)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "m.onnx", force=False)
    with pytest.raises(OutputError, match="directory"):
        check_output_path(tmp_path, force=True)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_output_check_refuses_a_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(ro / "m.onnx", force=False)
    finally:
        ro.chmod(0o755)
