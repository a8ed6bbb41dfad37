"""The ONNX file, its report and an engine's files are one unit: all new or all as they were (#13).

A real full disk (a tiny tmpfs, where root can mount one) while the report is written after --force, and the
commit function itself with a move that fails part-way (an OSError on the second file)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import onnxruntime as ort
import pytest
from bad_inputs import export_tiny, listing, one_error_line, tiny_model_file

from blocks_export.export import io
from blocks_export.export.errors import OutputError

PAGE = 4096


def _fill_leaving(folder: Path, pages: int) -> None:
    """Fill ``folder``'s filesystem so that exactly ``pages`` pages stay free."""
    st = os.statvfs(folder)
    assert st.f_frsize == PAGE
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * (free - pages * PAGE))
    assert os.statvfs(folder).f_bavail == pages


def test_disk_full_while_writing_the_report_after_force_keeps_the_previous_onnx_and_report(
        tmp_path: Path, tiny_fs: Path) -> None:
    source = tiny_model_file(tmp_path)
    out = tiny_fs / "m.onnx"
    code, _, err = export_tiny(source, out)  # the previous, static export and its PASSED report
    assert code == 0, err
    before = {name: (tiny_fs / name).read_bytes() for name in ("m.onnx", "m.report.json")}
    # The new, dynamic export: its ONNX fits in one page, its report needs two; one page is left. Written one
    # after the other, the new ONNX would land and the old report (another export's PASSED) stay beside it.
    _fill_leaving(tiny_fs, 1)
    code, _, err = export_tiny(source, out, "--force", "--dynamic")
    line = one_error_line(err)
    assert code == 2, err
    assert "No space left on device" in line and "no output was replaced" in line, line
    for name, data in before.items():
        assert (tiny_fs / name).read_bytes() == data, name
    assert listing(tiny_fs) == ["filler", "m.onnx", "m.report.json"]
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # the previous model, whole


def _staged(folder: Path, names: list[str]) -> list[tuple[Path, Path]]:
    pairs = []
    for name in names:
        tmp = folder / f".{name}.stagedXY.tmp"
        tmp.write_bytes(f"new {name}".encode())
        pairs.append((tmp, folder / name))
    return pairs


def _fail_on_the_second_move(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    real = io.publish
    calls: list[Path] = []

    def publish(tmp: Path, path: Path, force: bool) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise error
        real(tmp, path, force)

    monkeypatch.setattr(io, "publish", publish)


@pytest.mark.parametrize("force", [True, False], ids=["force_replaces", "new_files"])
@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()],
                         ids=["oserror", "interrupt"])
def test_a_move_failing_part_way_undoes_the_moves_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            force: bool, error: BaseException) -> None:
    names = ["m.onnx", "m.report.json", "m.engine.json"]
    if force:
        for name in names:
            (tmp_path / name).write_bytes(f"old {name}".encode())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _fail_on_the_second_move(monkeypatch, error)
    with pytest.raises(type(error)):
        io.commit_files(_staged(tmp_path, names), force)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files back, nothing else


def test_commit_without_failure_lands_every_file_and_removes_the_second_names(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"old")
    os.chmod(tmp_path / "m.onnx", 0o604)
    io.commit_files(_staged(tmp_path, ["m.onnx", "m.report.json"]), True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.report.json"]
    assert (tmp_path / "m.onnx").read_bytes() == b"new m.onnx"
    assert os.stat(tmp_path / "m.onnx").st_mode & 0o777 == 0o604  # a replaced file keeps its mode


def test_a_file_that_appeared_meanwhile_refuses_the_whole_unit_without_force(tmp_path: Path) -> None:
    (tmp_path / "m.report.json").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="already exists"):
        io.commit_files(_staged(tmp_path, ["m.onnx", "m.report.json"]), False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.report.json"]
    assert (tmp_path / "m.report.json").read_bytes() == b"someone else's"


def test_output_unit_write_failure_is_one_truthful_line_and_leaves_no_temporary(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.onnx").write_bytes(b"old model")
    (tmp_path / "m.report.json").write_bytes(b"old report")
    real_fsync = os.fsync
    seen: list[int] = []

    def fsync(fd: int) -> None:  # the second file's data does not reach the disk
        seen.append(fd)
        if len(seen) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    with pytest.raises(OutputError) as e:
        io.write_files({tmp_path / "m.onnx": b"new model", tmp_path / "m.report.json": b"new report"}, True)
    assert "m.report.json" in str(e.value) and "no output was replaced" in str(e.value)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.report.json"]
    assert (tmp_path / "m.onnx").read_bytes() == b"old model"
