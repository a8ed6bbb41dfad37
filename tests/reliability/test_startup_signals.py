"""SIGINT / SIGTERM at known points of start-up (a real subprocess, a real signal): exit 130 / 143, one line, no
traceback, nothing written.

The subprocess stops at the point (``shim/sitecustomize.py``: ``BLOCKS_EXPORT_TEST_SIGNAL_AT``), says so on
stderr and waits for the signal, so no clock decides where the signal lands. The ``ort-C-init`` point is the
reported bug: a signal handled while a C extension's init runs (onnxruntime's pybind11 module; numpy's does the
same) comes out of the extension as an ImportError, read as "onnxruntime is not installed" (exit 3), or, where a
library's ImportError fallback swallows it, a run that goes on half-imported (the reported RecursionError).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs import listing, signals_as_at_a_terminal, subprocess_env, tiny_model_file

EXE = Path(sys.executable).parent / "blocks-export"
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


def _interrupt_at(folder: Path, point: str, sig: int) -> tuple[int, str, str]:
    """Start an export, wait for the ``SIGNAL-POINT`` line, send ``sig``: (exit code, that line, the rest)."""
    src = tiny_model_file(folder)
    proc = subprocess.Popen([str(EXE), str(src), "--to", "onnx", "--trust-pickle", "--imgsz", "8",
                             "-o", str(folder / "out.onnx")], cwd=folder, env=subprocess_env(BLOCKS_EXPORT_TEST_SIGNAL_AT=point),
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=signals_as_at_a_terminal)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        seen = []
        for line in proc.stderr:
            if line.startswith(f"SIGNAL-POINT {point}"):
                break
            seen.append(line)
        else:
            pytest.fail(f"the run never reached {point}: " + "".join(seen))
        proc.send_signal(sig)
        rest = "".join(seen) + proc.stderr.read()
        assert proc.stdout.read() == ""
        return proc.wait(timeout=120), line, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("sig", "code"), SIGNALS, ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", ["cli-import", "numpy", "torch", "torch-C-init", "ort-C-init"])
def test_signal_at_a_point_of_start_up_exits_with_its_code_and_one_line(tmp_path: Path, point: str, sig: int,
                                                                       code: int) -> None:
    rc, at, rest = _interrupt_at(tmp_path, point, sig)
    if point.endswith("-C-init"):  # the attack's precondition: the signal lands inside a C extension's init
        assert "in-extension-init=torch._C" in at or "in-extension-init=onnxruntime.capi" in at, at
    assert rc == code, rest
    errors = [ln for ln in rest.splitlines() if ln.startswith("blocks-export: error:")]
    assert len(errors) == 1 and "interrupted" in errors[0], rest
    assert "Traceback" not in rest and "RecursionError" not in rest and "ImportError" not in rest, rest
    assert listing(tmp_path) == ["tiny.pt"]


def test_sigterm_before_any_blocks_export_code_ends_the_process_and_writes_nothing(tmp_path: Path) -> None:
    """Before the program's handlers exist (interpreter start-up) Python's default applies: killed by SIGTERM."""
    rc, _at, rest = _interrupt_at(tmp_path, "interpreter", signal.SIGTERM)
    assert rc == -signal.SIGTERM, rest
    assert listing(tmp_path) == ["tiny.pt"]
