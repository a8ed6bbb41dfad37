"""Fixtures for the Jetson inference script tests (model builders live in infer_fixtures.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import infer_fixtures`

from infer_fixtures import run_script  # noqa: E402

from blocks_export.runtime import infer as infer_module  # noqa: E402


@pytest.fixture
def infer():
    return infer_module


@pytest.fixture
def save(tmp_path: Path) -> Callable[..., Path]:
    def _save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, str(path))
        return path
    return _save


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """Run the script's main() in-process: (exit code, stdout, stderr)."""
    def _cli(*argv: object) -> tuple[int, str, str]:
        code = infer_module.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return _cli


@pytest.fixture
def script() -> Callable[..., subprocess.CompletedProcess]:
    return run_script
