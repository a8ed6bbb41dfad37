"""The TensorRT engine builder type-checks against the documented TensorRT Python API (tensorrt-stubs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "mypy-trt"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to run .ci/mypy-trt")


def _mypy(*extra: str) -> subprocess.CompletedProcess[str]:
    # The interpreter running the tests, wherever its environment lives.
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *extra], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


def test_engine_builder_type_checks_against_tensorrt_stubs() -> None:
    proc = _mypy()
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_type_check_catches_a_misspelled_tensorrt_call(tmp_path: Path) -> None:
    # The check is only worth something if the stubs are really consulted: a wrong method name must fail.
    bad = tmp_path / "bad_engine.py"
    bad.write_text(
        "import tensorrt as trt\n\n\n"
        "def build(logger: trt.ILogger) -> None:\n"
        "    builder = trt.Builder(logger)\n"
        "    builder.create_netwrk(0)\n"
    )
    proc = _mypy(str(bad))
    assert proc.returncode != 0
    assert "create_netwrk" in proc.stdout
