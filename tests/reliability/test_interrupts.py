"""SIGINT / SIGTERM while the exporter, the simplifier or the TensorRT build runs (a real subprocess): exit 130 /
143, one line, and no partial .onnx, .engine, _ctx.onnx, sidecar, report or temporary file left behind.

The step is made slow by ``shim/sitecustomize.py`` (the engine build through the tensorrt test double)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from bad_inputs import listing, relu_model, signals_as_at_a_terminal, subprocess_env
from torch import nn

EXE = Path(sys.executable).parent / "blocks-export"


def _source(folder: Path, step: str) -> tuple[Path, list[str]]:
    if step == "engine":  # an ONNX input goes straight to the build
        onnx.save(relu_model(), folder / "model.onnx")
        return folder / "model.onnx", ["--to", "trt", "--target", "jetpack6"]
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), folder / "model.pt")
    return folder / "model.pt", ["--to", "onnx", "--trust-pickle", "--imgsz", "8"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("step", ["export", "simplify", "engine"])
def test_interrupt_exits_with_the_signal_code_and_leaves_no_partial_file(tmp_path: Path, step: str, sig: int,
                                                                         code: int) -> None:
    src, args = _source(tmp_path, step)
    before = listing(tmp_path)
    proc = subprocess.Popen([str(EXE), str(src), *args], cwd=tmp_path, env=subprocess_env(BLOCKS_EXPORT_TEST_SLOW=step),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=signals_as_at_a_terminal)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # wait until the slow step is running
            seen.append(line)
            if line.startswith(f"SLOW-STEP {step}"):
                break
        else:
            pytest.fail("the step never started: " + "".join(seen))
        time.sleep(0.3)
        proc.send_signal(sig)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == code, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    errors = [ln for ln in rest.splitlines() if ln.startswith("blocks-export: error:")]
    assert len(errors) == 1 and "interrupted" in errors[0] and "Traceback" not in rest, rest
    assert listing(tmp_path) == before
