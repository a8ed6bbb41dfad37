"""Output names refused up front, as an attacker or an unlucky user writes them: a dangling symbolic link at -o,
and a name whose derived files (report, temporaries) would pass the folder's name limit. One line, exit 2,
nothing written, the link left as it was; a long name that fits is exported."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from bad_inputs import cli, listing, one_error_line


def _model(folder: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    path = folder / "m.pt"
    torch.save(model, path)
    return path


def test_a_dangling_link_at_output_is_refused_and_left_alone(tmp_path: Path) -> None:
    src = _model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").symlink_to(tmp_path / "missing" / "x.onnx")
    code, _, stderr = cli(src, "--trust-pickle", "--imgsz", "16", "-o", out / "model.onnx")
    assert code == 2 and "symbolic link" in one_error_line(stderr)
    assert listing(out) == ["model.onnx"] and os.readlink(out / "model.onnx") == str(tmp_path / "missing" / "x.onnx")
    assert not (tmp_path / "missing").exists()


def test_an_output_name_whose_report_would_be_too_long_is_refused_before_any_work(tmp_path: Path) -> None:
    src = _model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    limit = os.pathconf(out, "PC_NAME_MAX")
    name = "a" * (limit - len(".onnx") - 5) + ".onnx"  # fits itself, not with ".report.json" and a temporary name
    code, stdout, stderr = cli(src, "--trust-pickle", "--imgsz", "16", "-o", out / name)
    assert code == 2 and "too long" in one_error_line(stderr)
    assert "export" not in stdout.lower() or "✓" not in stdout  # refused before the export step ran
    assert listing(out) == []


def test_a_long_output_name_that_fits_is_exported(tmp_path: Path) -> None:
    src = _model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    limit = os.pathconf(out, "PC_NAME_MAX")
    stem = "b" * (limit - len(".report.json") - len("..XXXXXXXX.tmp") - 1)
    code, _, stderr = cli(src, "--trust-pickle", "--imgsz", "16", "-o", out / f"{stem}.onnx", "--quiet")
    assert code == 0, stderr
    assert sorted(listing(out)) == sorted([f"{stem}.onnx", f"{stem}.report.json"])
