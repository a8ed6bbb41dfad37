"""Hostile paths given to ``blocks-export``: calibration folders holding FIFOs, link loops or ``/proc``, control
characters in file names, a killed run's temporary beside the output. Each is built for real (real FIFOs, links
and leftovers) and must be one line, exit 2, with nothing written (names too long once derived and links to
nothing at ``-o``: test_output_names.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import export_tiny, listing, one_error_line, tiny_model_file


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("src"))


def _png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def test_calibration_fifo_named_png_is_skipped_not_waited_on(tmp_path: Path, source: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for k in range(3):
        os.mkfifo(calib / f"f{k}.png")
    code, _, err = export_tiny(source, tmp_path / "m.onnx", "--int8", "--calib", calib)
    assert code == 2, err
    assert "holds no images" in one_error_line(err)


@pytest.mark.parametrize("where", ["folder", "member"])
def test_calibration_symlink_loop_is_one_line(tmp_path: Path, source: Path, where: str) -> None:
    calib = tmp_path / "calib"
    if where == "folder":
        calib.symlink_to(calib)
    else:
        calib.mkdir()
        _png(calib / "a.png")
        (calib / "b.png").symlink_to(calib / "b.png")
    code, _, err = export_tiny(source, tmp_path / "m.onnx", "--int8", "--calib", calib)
    assert code == 2, err
    line = one_error_line(err)
    assert "--calib" in line or "b.png" in line, line
    assert "output" not in line.split("--calib")[0], line  # not blamed on the output


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc on this system")
def test_calibration_from_proc_does_not_blame_the_output(tmp_path: Path, source: Path) -> None:
    code, _, err = export_tiny(source, tmp_path / "m.onnx", "--int8", "--calib", "/proc")
    assert code == 2, err
    line = one_error_line(err)
    assert "/proc" in line and "cannot write" not in line, line
    assert listing(tmp_path) == []


def test_newline_and_escape_in_a_calibration_path_stay_one_escaped_line(tmp_path: Path, source: Path) -> None:
    code, _, err = export_tiny(source, tmp_path / "m.onnx", "--int8", "--calib", tmp_path / "a\nb\x1b]0;owned\x07")
    assert code == 2, err
    line = one_error_line(err)
    assert "\x1b" not in err and "\x07" not in err and "a\\nb\\x1b]0;owned\\x07" in line, line


def test_a_fresh_temporary_left_by_a_killed_run_is_named_on_the_next_run(tmp_path: Path, source: Path) -> None:
    """What SIGKILL during the write leaves (``.m.onnx.XXXXXXXX.tmp``, minutes old) is kept (another run may still
    be writing it) and named in one note on the next run; a file off our pattern is neither touched nor named."""
    fresh = tmp_path / ".m.onnx.k3j9_x2a.tmp"
    fresh.write_bytes(b"partial")
    off_pattern = tmp_path / ".m.onnx.keep.tmp"
    off_pattern.write_bytes(b"mine")
    code, _, err = export_tiny(source, tmp_path / "m.onnx")
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("blocks-export: note:")]
    assert len(notes) == 1 and fresh.name in notes[0] and "a day old" in notes[0], err
    assert fresh.read_bytes() == b"partial" and off_pattern.read_bytes() == b"mine"
    code, _, err = export_tiny(source, tmp_path / "m2.onnx")  # another name: that leftover is not its business
    assert code == 0 and "note:" not in err, err
