"""The engine parity step: after ``--to trt`` builds the engine, the pipeline runs it on the verification
inputs and records one row per shape in the report (``engine_parity``), against the original PyTorch model
(or onnxruntime on the ONNX input); a mismatch fails the run (exit 1).

TensorRT here is the test double (``trt_double``): its engine is an onnxruntime stand-in that reads and writes
the IO tensors at the addresses the runner gives it (``HostMemory`` in place of GPU memory), and ``perturb``
makes it wrong on purpose. Real engines: ``test_engine_real.py``, where TensorRT and a GPU exist."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trt_double import HostMemory, Knobs, make_tensorrt  # noqa: E402

from blocks_export.blocks import randomize_  # noqa: E402
from blocks_export.export.cli import app, with_default_command  # noqa: E402
from blocks_export.export.trt import api, run  # noqa: E402


class PastedGC(nn.Module):
    """A GCNet context block as pasted from a blog post (its own class and attribute names)."""

    def __init__(self, ch: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = max(1, int(ch * ratio))
        self.mask = nn.Conv2d(ch, 1, 1)
        self.softmax = nn.Softmax(dim=2)
        self.add = nn.Sequential(nn.Conv2d(ch, hidden, 1), nn.LayerNorm([hidden, 1, 1]), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weights = self.softmax(self.mask(x).view(n, 1, h * w)).unsqueeze(-1)
        context = torch.matmul(x.view(n, 1, c, h * w), weights).view(n, c, 1, 1)
        return x + self.add(context)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, 1, 1)
        self.gc = PastedGC(12)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gc(self.stem(x)))


@pytest.fixture
def model_pt(tmp_path: Path) -> Path:
    model = randomize_(Net().eval(), 3)
    path = tmp_path / "net.pt"
    torch.save(model, path)
    return path


@pytest.fixture
def double(monkeypatch: pytest.MonkeyPatch):
    """The tensorrt double on a fake GPU, with host memory for the engine's IO tensors."""
    knobs = Knobs()
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10", knobs))
    monkeypatch.setattr(api, "cuda_device", lambda rebuild=None, index=0: api.DeviceInfo("Orin (double)", "8.7"))
    monkeypatch.setattr(run, "device_memory", HostMemory)
    return knobs


def _export(*args: object) -> tuple[int, dict]:
    result = CliRunner().invoke(app, with_default_command([str(a) for a in args] + ["--json"]))
    return result.exit_code, json.loads(result.stdout)


def test_the_engine_is_run_on_the_verification_input_and_matches_the_original_model(
        model_pt: Path, double: Knobs, tmp_path: Path) -> None:
    code, report = _export(model_pt, "--to", "trt", "--trust-pickle", "--imgsz", "20,28", "--target", "jetpack6")
    assert code == 0, report
    rows = report["engine_parity"]
    assert [(r["shape"], r["runtime"], r["reference"], r["passed"]) for r in rows] == \
        [([1, 3, 20, 28], "tensorrt", "pytorch", True)]
    assert [c[2] for c in double.calls if c[0] == "set_input_shape"] == [(1, 3, 20, 28)]
    assert any(c[0] == "execute_async_v3" for c in double.calls)
    step = next(s for s in report["steps"] if s["name"] == "engine parity")
    assert step["status"] == "ok" and "1/1" in step["note"]
    # Our own check of what the stand-in ran: onnxruntime on the written ONNX against the original model.
    model = torch.load(model_pt, weights_only=False).eval()
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(5))
    sess = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def test_an_engine_that_computes_something_else_fails_the_run(model_pt: Path, double: Knobs,
                                                               tmp_path: Path) -> None:
    double.perturb = 0.5
    code, report = _export(model_pt, "--to", "trt", "--trust-pickle", "--imgsz", "20,28", "--target", "jetpack6")
    assert code == 1 and report["status"] == "FAILED"
    (row,) = report["engine_parity"]
    assert row["passed"] is False and row["outputs"] and row["outputs"][0]["rel_l2"] > 1e-3
    assert next(s for s in report["steps"] if s["name"] == "engine parity")["status"] == "failed"
    assert (tmp_path / "net.engine").is_file()  # written, and the report says it does not match
    saved = json.loads((tmp_path / "net.report.json").read_text())
    assert saved["status"] == "FAILED" and saved["engine_parity"][0]["passed"] is False


def test_an_onnx_input_is_compared_with_onnxruntime_on_that_onnx(model_pt: Path, double: Knobs,
                                                                  tmp_path: Path) -> None:
    code, _ = _export(model_pt, "--trust-pickle", "--imgsz", "20,28", "--target", "jetpack6")
    assert code == 0
    code, report = _export(tmp_path / "net.onnx", "--to", "trt", "--target", "jetpack6")
    assert code == 0, report
    assert [(r["shape"], r["reference"], r["passed"]) for r in report["engine_parity"]] == \
        [([1, 3, 20, 28], "onnxruntime", True)]
    double.perturb = 0.5
    code, report = _export(tmp_path / "net.onnx", "--to", "trt", "--target", "jetpack6", "--force")
    assert code == 1 and report["engine_parity"][0]["passed"] is False


def test_without_device_memory_the_step_is_skipped_with_the_reason(model_pt: Path, double: Knobs,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cuda() -> HostMemory:
        raise api.TensorRTUnavailable("torch with CUDA is not available here")

    monkeypatch.setattr(run, "device_memory", no_cuda)
    code, report = _export(model_pt, "--to", "trt", "--trust-pickle", "--imgsz", "20,28", "--target", "jetpack6")
    assert code == 0 and report["status"] == "PASSED" and "engine_parity" not in report
    step = next(s for s in report["steps"] if s["name"] == "engine parity")
    assert step["status"] == "skipped" and "torch with CUDA" in step["note"]
    assert not any(c[0] == "deserialize_cuda_engine" for c in double.calls)


def test_no_verify_skips_the_engine_parity_too(model_pt: Path, double: Knobs) -> None:
    code, report = _export(model_pt, "--to", "trt", "--trust-pickle", "--imgsz", "20,28", "--target", "jetpack6",
                           "--no-verify")
    assert code == 0 and "engine_parity" not in report
    assert next(s for s in report["steps"] if s["name"] == "engine parity")["status"] == "skipped"
    assert not any(c[0] == "execute_async_v3" for c in double.calls)


def test_engine_parity_is_the_one_verify_with_an_engine_runner(model_pt: Path, double: Knobs, tmp_path: Path) -> None:
    """The engine is judged by the verification layer's ``verify``, like any graph: same result type, same rule."""
    from blocks_export.export.inputs import GraphReference, ModelReference
    from blocks_export.export.runners import EngineRunner
    from blocks_export.export.verify import VerifyResult, verify, verify_graph
    from blocks_export.runtime.infer import read_sidecar

    code, _ = _export(model_pt, "--to", "trt", "--trust-pickle", "--imgsz", "20,28", "--target", "jetpack6")
    assert code == 0
    engine, onnx_path = tmp_path / "net.engine", tmp_path / "net.onnx"
    side = read_sidecar(str(engine) + ".json")
    runner = EngineRunner(engine, [i["name"] for i in side.inputs], [o["name"] for o in side.outputs])
    model = torch.load(model_pt, weights_only=False).eval()
    shape = (1, 3, 20, 28)
    on_engine = verify(ModelReference(model, float64=False), runner, [shape], precision="fp32")
    on_graph = verify_graph(ModelReference(model, float64=False), "onnxruntime", onnx_path, [shape])
    assert type(on_engine) is type(on_graph) is VerifyResult and on_engine and on_graph
    assert [r.runtime for r in on_engine.runs] == ["tensorrt"] and on_engine.reference == "pytorch"
    against_onnx = verify(GraphReference(onnx_path, [("images", "float32", shape)]), runner, [shape])
    assert against_onnx and against_onnx.reference == "onnxruntime"
    double.perturb = 0.5
    wrong = verify(ModelReference(model, float64=False), runner, [shape])
    assert not wrong and wrong.runs[0].comparison.worst_rel_l2 > 1e-3
