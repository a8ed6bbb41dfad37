"""The verdict's truth and floors, end to end through the CLI on models written here the way users paste blocks.

- An ACmix pasted verbatim from its authors' code builds its position grid with ``torch.linspace`` in the default
  dtype: the float64 reference runs it (float64 as torch's default dtype while it runs), so the graph is judged
  against float64, not against the fp32 model, at the export shape and with ``--dynamic``.
- An fp16-sensitive model (a head whose two halves nearly cancel) fails the fp16 rule (rel L2 1e-2) while
  PyTorch's own half-precision run is further still from the truth: the fp16 floor passes it, and says so.
- A graph that is genuinely wrong (a 1 % change of one weight) fails under the same reference and floors.
Every number the tests rest on is computed here, with this test's own onnxruntime and float64 runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.export.inputs import ModelReference, make_input
from blocks_export.export.verify import verify_graph
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import RULES, rel_l2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import seed_blocks  # noqa: E402  (the blog's block code, verbatim)


class PastedACmix(nn.Module):
    """A stem, the seed ACmix as pasted (its grid built in the default dtype), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.mix = seed_blocks.ACmix(16, 16)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.stem(x)))


class Cancelling(nn.Module):
    """Large features, then two 1x1 heads whose difference is about 1 % of either: fp16-sensitive by design."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Conv2d(16, 8, 1)
        self.b = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return self.a(f) - self.b(f)


class CastsToFloat(nn.Module):
    """Pasted code that forces fp32 inside forward: no float64 run of it exists."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float())


def cancelling() -> nn.Module:
    model = randomize_(Cancelling(), seed=3)
    with torch.no_grad():
        model.b.weight.copy_(model.a.weight * 1.01)
        model.b.bias.copy_(model.a.bias)
    return model.eval()


def export(tmp_path: Path, model: nn.Module, *flags: str) -> tuple[int, dict, Path]:
    src, out = tmp_path / "model.pt", tmp_path / "model.onnx"
    torch.save(model, src)
    result = CliRunner().invoke(app, with_default_command(
        [str(src), "--trust-pickle", "--imgsz", "32", "-o", str(out), "--force", "--json", "--quiet", *flags]))
    return result.exit_code, json.loads(result.stdout), out


def float64_truth(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """This test's own float64 run: a float64 copy under float64 as the default dtype."""
    import copy

    model64 = copy.deepcopy(model).double()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            return model64(x.double()).numpy()
    finally:
        torch.set_default_dtype(before)


def own_error(onnx_path: Path, model: nn.Module, shape: tuple[int, ...]) -> float:
    x = make_input(shape)
    sess = cpu_session(onnx_path.read_bytes())
    feed = x.numpy().astype(np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: feed})[0]
    return rel_l2(float64_truth(model, x), np.asarray(got, dtype=np.float64))


def scaled_weight(onnx_path: Path, factor: float, pick: int = 0) -> onnx.ModelProto:
    """The written graph with one Conv weight (the ``pick``-th Conv's) scaled by ``factor``: a wrong graph."""
    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    conv = [n for n in model.graph.node if n.op_type == "Conv"][pick]
    w = inits[conv.input[1]]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.asarray(factor, numpy_helper.to_array(w).dtype),
                                       w.name))
    return model


def test_a_pasted_acmix_grid_in_the_default_dtype_is_judged_against_float64(tmp_path: Path) -> None:
    model = randomize_(PastedACmix(), seed=2).eval()
    for flags in ((), ("--dynamic",)):
        code, report, out = export(tmp_path, model, *flags)
        v = report["verification"]
        assert code == 0 and report["status"] == "PASSED", v
        assert v["tolerance"]["reference"] == "float64" and v["tolerance"]["reference_why"] is None, v["tolerance"]
        assert not [n for n in v["notes"] if "fp32 model" in n], v["notes"]  # no shape fell back
        for run in v["runs"]:
            shape = tuple(run["shape"])
            mine = own_error(out, model, shape)
            assert mine <= RULES["fp32"].rel_l2
            assert abs(run["outputs"][0]["rel_l2"] - mine) <= 1e-3 * mine + 1e-12  # the report measured the same
            assert run["outputs"][0]["fp32_floor"] > 0  # a float64 run really happened
    wrong = scaled_weight(out, 1.01)
    result = verify_graph(ModelReference(model), "onnxruntime", wrong, [(1, 3, 32, 32)])
    assert not result and result.tolerance.reference == "float64"


def test_a_model_that_cannot_run_in_float64_says_its_reference_is_fp32_and_why(tmp_path: Path) -> None:
    code, report, _ = export(tmp_path, randomize_(CastsToFloat(), seed=1).eval())
    tol = report["verification"]["tolerance"]
    assert code == 0 and tol["reference"] == "fp32" and tol["floors"] == [], tol
    assert "float64 copy fails" in tol["reference_why"], tol


def test_an_fp16_sensitive_model_passes_on_its_fp16_floor_and_a_wrong_graph_still_fails(tmp_path: Path) -> None:
    model = cancelling()
    code, report, out = export(tmp_path, model, "--fp16")
    v = report["verification"]
    assert code == 0 and report["status"] == "PASSED", v
    assert v["tolerance"]["floors"] == ["fp32", "fp16"], v["tolerance"]
    o = v["runs"][0]["outputs"][0]
    mine = own_error(out, model, (1, 3, 32, 32))
    assert mine > RULES["fp16"].rel_l2 and o["rule_passed"] is False  # the fp16 rule alone fails it ...
    # ... while PyTorch's own half run is further from the truth than the graph: this test's own half run
    x = make_input((1, 3, 32, 32))
    with torch.no_grad():
        half = cancelling().half()(x.half()).double().numpy()
    torch_half = rel_l2(float64_truth(model, x), half)
    assert torch_half > mine and abs(o["fp16_floor"] - torch_half) <= 1e-6 + 1e-3 * torch_half
    assert o["floor_passed"] is True and o["floor_limit"] >= mine
    # A 1 % change of one head weight: the graph is wrong, and the same reference and floors fail it.
    wrong = scaled_weight(out, 1.01, pick=-2)
    result = verify_graph(ModelReference(model, fp16_floor=True), "onnxruntime", wrong, [(1, 3, 32, 32)],
                          precision="fp16")
    assert not result, result.runs[0].comparison.lines()


def test_without_the_fp16_floor_the_same_graph_fails_the_rule(tmp_path: Path) -> None:
    """The floor is what passes it: judged on the fp32 floor alone (no fp16 run), the written graph fails."""
    model = cancelling()
    code, _, out = export(tmp_path, model, "--fp16")
    assert code == 0
    result = verify_graph(ModelReference(model), "onnxruntime", onnx.load(str(out)), [(1, 3, 32, 32)],
                          precision="fp16")
    assert not result and result.tolerance.floors == ["fp32"]
