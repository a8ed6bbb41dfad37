"""Quiet and readable: third-party warnings go into the report, not onto stderr; ``inspect`` runs the model at its
own size. Both through the installed console script, with stdout and stderr piped (as in CI logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import CB2d, randomize_
from blocks_export.export.cli import app, with_default_command

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "blocks-export"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}


def test_fp16_export_of_the_sample_classifier_keeps_library_warnings_off_stderr(tmp_path: Path) -> None:
    out = tmp_path / "classifier.onnx"
    proc = subprocess.run([str(EXE), str(ROOT / "sample_models" / "classifier.pt"), "--to", "onnx", "--trust-pickle",
                           "--fp16", "-o", str(out)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # One progress line per step (load, rewrite, export, simplify, fp16, verify, write) and one summary line.
    assert len(lines) <= 9, proc.stderr
    assert not any("Warning" in ln for ln in lines), proc.stderr
    assert json.loads((tmp_path / "classifier.report.json").read_text())["status"] == "PASSED"


class Chatty(nn.Module):
    """Warns on every forward, as models using deprecated library calls do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("this call is deprecated", UserWarning, stacklevel=1)
        return self.conv(x)


def test_warnings_raised_during_the_export_are_recorded_once_in_the_report(tmp_path: Path) -> None:
    src = tmp_path / "chatty.pt"
    torch.save(randomize_(Chatty().eval(), 1), src)
    result = CliRunner().invoke(app, with_default_command(
        [str(src), "--trust-pickle", "--imgsz", "16", "-o", str(tmp_path / "c.onnx")]))
    assert result.exit_code == 0, result.output
    assert "deprecated" not in result.stderr and "deprecated" not in result.stdout
    assert len([ln for ln in result.stderr.splitlines() if "library_warnings" in ln]) == 1
    report = json.loads((tmp_path / "c.report.json").read_text())
    assert report["library_warnings"] == ["UserWarning: this call is deprecated"]


class Fixed64(nn.Module):
    """A classifier whose head is sized for 64x64 inputs (flatten + Linear): it runs at 64 px only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), CB2d(8), nn.Conv2d(8, 4, 3, 2, 1))
        self.fc = nn.Linear(4 * 16 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(x), 1))


def test_inspect_runs_the_model_at_its_own_size_and_says_so(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import test_quiet  # the class pickled under a module name the console script can import

    src = tmp_path / "fixed64.pt"
    torch.save(randomize_(test_quiet.Fixed64().eval(), 2), src)
    proc = subprocess.run([str(EXE), "inspect", str(src), "--trust-pickle", "--json"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["export_shape"] == [1, 3, 64, 64]
    assert info["probed_with"] == "the smallest size the model runs at"

    shown = subprocess.run([str(EXE), "inspect", str(src), "--trust-pickle"], cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "1x3x64x64 (the smallest size the model runs at)" in shown.stdout
    assert "finding the smallest input size" in shown.stderr and "running the model at 1x3x64x64" in shown.stderr
