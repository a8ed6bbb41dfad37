"""Two exports of different models into the same folder at once (two processes): both succeed, and each file
is complete, its own, and matches its model (its report too)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from bad_inputs import listing, subprocess_env
from torch import nn

from blocks_export.blocks import randomize_

EXE = Path(sys.executable).parent / "blocks-export"


def _models() -> dict[str, nn.Module]:
    a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    b = nn.Sequential(nn.Conv2d(3, 6, 1), nn.SiLU(), nn.Conv2d(6, 2, 3, stride=2, padding=1))
    return {"a": randomize_(a.eval(), 1), "b": randomize_(b.eval(), 2)}


def test_two_exports_into_the_same_folder_at_once_both_succeed_and_verify(tmp_path: Path) -> None:
    models = _models()
    for name, model in models.items():
        torch.save(model, tmp_path / f"{name}.pt")
    procs = {name: subprocess.Popen([str(EXE), str(tmp_path / f"{name}.pt"), "--to", "onnx", "--trust-pickle",
                                     "--imgsz", "16", "--quiet"], cwd=tmp_path, env=subprocess_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in models}
    results = {name: (p.wait(timeout=240), p.communicate()) for name, p in procs.items()}
    for name, (code, (_out, err)) in results.items():
        assert code == 0, (name, err)
    assert listing(tmp_path) == ["a.onnx", "a.pt", "a.report.json", "b.onnx", "b.pt", "b.report.json"]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    for name, model in models.items():
        proto = onnx.load(str(tmp_path / f"{name}.onnx"))
        onnx.checker.check_model(proto, full_check=True)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        report = json.loads((tmp_path / f"{name}.report.json").read_text())
        assert report["status"] == "PASSED" and report["onnx"] == str(tmp_path / f"{name}.onnx")
