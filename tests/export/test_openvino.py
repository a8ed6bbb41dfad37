"""OpenVINO as a second, independent runtime: ``--verify-with openvino`` and the exported graphs in OpenVINO.

The verdicts here come from the test's own OpenVINO run (the ``openvino`` API used directly, CPU, f32 inference
precision) against the original PyTorch model, not from the tool's report. Graphs with a DeformConv or plugin
node cannot be read by OpenVINO 2026.4; for them the same model exported with ``--deform-conv portable`` (their
portable twin) is what OpenVINO runs.

The sweep (every sample model x target x fp32/fp16 x static/dynamic) is ``slow``; it exports each distinct
graph once: the targets that share exporter, opset and LayerNorm form share the portable twin, and the fp16
graph is the pipeline's fp16 step applied to the written fp32 graph.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import DCN, CB2d, randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.export.options import ExportOptions
from blocks_export.export.report import Report
from blocks_export.export.targets import TARGETS
from blocks_export.runtime.parity import rel_l2

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'blocks-export[openvino]')")

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2}


def invoke(*args: object):
    return CliRunner().invoke(app, with_default_command([str(a) for a in args]))


def openvino_outputs(model: onnx.ModelProto | Path, x: np.ndarray) -> list[np.ndarray]:
    """The graph on OpenVINO CPU at f32 inference precision (its bf16 default would blur fp32 parity)."""
    data = model.read_bytes() if isinstance(model, Path) else model.SerializeToString()
    core = ov.Core()
    compiled = core.compile_model(core.read_model(data), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                "INFERENCE_NUM_THREADS": 1})
    result = compiled.create_infer_request().infer({0: x})
    return [np.array(result[p], dtype=np.float32) for p in compiled.outputs]


def torch_outputs(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(x.astype(np.float32)))
    return [t.numpy() for t in (out if isinstance(out, tuple | list) else [out])]


def image(shape: tuple[int, ...], seed: int = 7) -> np.ndarray:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).numpy()


class TwoDcnTrunk(nn.Module):
    """A pasted-style trunk: stride-2 stem, two DCN v2 blocks of different widths, a GCNet block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.BatchNorm2d(12), nn.SiLU())
        self.dcn_a = DCN(12, 12, 3, deformable_groups=2)
        self.down = nn.Conv2d(12, 20, 3, 2, 1)
        self.dcn_b = DCN(20, 20, 3, g=2, bias=False)
        self.context = CB2d(20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.context(self.dcn_b(self.down(self.dcn_a(self.stem(x)))))


@pytest.fixture(scope="module")
def trunk_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = randomize_(TwoDcnTrunk().eval(), seed=4)
    with torch.no_grad():  # offsets of a pixel or more, so the sampling really deforms
        for m in (model.dcn_a, model.dcn_b):
            m.offset.weight.mul_(4.0)
    path = tmp_path_factory.mktemp("ov") / "trunk.pt"
    torch.save(model, path)
    return path


def test_openvino_cannot_read_onnx_deform_conv_so_its_portable_twin_is_verified(tmp_path: Path,
                                                                                  trunk_pt: Path) -> None:
    out = tmp_path / "trunk.onnx"
    result = invoke(trunk_pt, "--trust-pickle", "--imgsz", "20,28", "-o", out, "--json", "--quiet",
                    "--verify-with", "onnxruntime", "--verify-with", "openvino")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ver = report["verification"]
    assert [r["runtime"] for r in ver["runtimes"]] == ["onnxruntime", "openvino"]
    ort_entry, ov_entry = ver["runtimes"]
    assert ort_entry["graph"] == "exported" and ov_entry["graph"] == "portable twin"
    assert "DeformConv" in ov_entry["note"] and "portable" in ov_entry["note"]
    assert {r["runtime"] for r in ver["runs"]} == {"onnxruntime", "openvino"} and ver["passed"]

    written = onnx.load(str(out))
    assert any(n.op_type == "DeformConv" for n in written.graph.node)  # the std graph the user gets
    with pytest.raises(RuntimeError):  # what makes the twin necessary (OpenVINO 2026.4.1)
        openvino_outputs(written, image((1, 3, 20, 28)))

    # The test's own OpenVINO run of the portable export against the original model.
    twin = tmp_path / "trunk_portable.onnx"
    result = invoke(trunk_pt, "--trust-pickle", "--imgsz", "20,28", "-o", twin, "--quiet", "--no-verify",
                    "--deform-conv", "portable")
    assert result.exit_code == 0, result.output
    original = torch.load(trunk_pt, weights_only=False).eval()
    x = image((1, 3, 20, 28))
    (got,), (expected,) = openvino_outputs(twin, x), torch_outputs(original, x)
    assert rel_l2(expected, got) <= TOLERANCE["fp32"]


def test_sample_classifier_verified_on_both_runtimes_matches_in_openvino(tmp_path: Path) -> None:
    out = tmp_path / "classifier.onnx"
    result = invoke(SAMPLES / "classifier.pt", "--trust-pickle", "--target", "jetpack5", "-o", out, "--json",
                    "--quiet", "--verify-with", "openvino", "--verify-with", "onnxruntime")
    assert result.exit_code == 0, result.output
    ver = json.loads(result.stdout)["verification"]
    assert [r["runtime"] for r in ver["runtimes"]] == ["openvino", "onnxruntime"]
    assert all(r["graph"] == "exported" and r["note"] is None for r in ver["runtimes"])  # portable: read as is
    original = torch.load(SAMPLES / "classifier.pt", weights_only=False).eval()
    x = image((1, 1, 32, 32))
    (got,), (expected,) = openvino_outputs(out, x), torch_outputs(original, x)
    assert rel_l2(expected, got) <= TOLERANCE["fp32"]


def test_missing_openvino_is_refused_with_exit_3_and_nothing_written(tmp_path: Path, trunk_pt: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # ``import openvino`` raises ImportError, as when absent
    out = tmp_path / "trunk.onnx"
    result = invoke(trunk_pt, "--trust-pickle", "--imgsz", "20,28", "-o", out, "--verify-with", "openvino")
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if "error" in line]
    assert len(lines) == 1 and "OpenVINO is not installed" in lines[0] and "blocks-export[openvino]" in lines[0]
    assert not out.exists() and not out.with_suffix(".report.json").exists()


def test_unknown_runtime_is_refused_with_one_line(tmp_path: Path, trunk_pt: Path) -> None:
    result = invoke(trunk_pt, "--trust-pickle", "-o", tmp_path / "t.onnx", "--verify-with", "tensorrt")
    assert result.exit_code == 2
    assert "--verify-with 'tensorrt'" in result.output and "onnxruntime, openvino" in result.output
    assert ExportOptions().verify_with == ("onnxruntime",)


# --- the sweep: every sample model x target x fp32/fp16 x static/dynamic -----------------------------------

SHAPES = {"classifier": (1, 1, 32, 32), "detector": (1, 3, 640, 640)}
SWEEP = [(m, t, p, d) for m in SHAPES for t in TARGETS for p in ("fp32", "fp16") for d in (False, True)]
REPRESENTATIVE = ("classifier", "jetpack5", "fp16", False)


@cache
def _original(name: str) -> nn.Module:
    return torch.load(SAMPLES / f"{name}.pt", weights_only=False).eval()


_EXPORTS: dict[tuple, tuple[bytes, Report]] = {}


def _portable_export(name: str, target: str, dynamic: bool, folder: Path) -> tuple[bytes, dict]:
    """The fp32 portable export (bytes, report) for ``target``. Targets that agree on exporter, opset and
    LayerNorm form write the same graph, so it is exported once per such key and shared."""
    from blocks_export.export.pipeline import run_export

    t = TARGETS[target]
    key = (name, t.exporter, t.opset, t.layernorm, dynamic)
    if key not in _EXPORTS:
        out = folder / ("-".join(map(str, key)) + ".onnx")
        result = run_export(SAMPLES / f"{name}.pt", ExportOptions(
            output=out, target=target, deform_conv="portable", dynamic=dynamic, trust_pickle=True, verify=False,
            quiet=True, force=True))
        assert result.exit_code == 0, result.report
        _EXPORTS[key] = (out.read_bytes(), result.report)
    return _EXPORTS[key]


def sweep_graph(name: str, target: str, precision: str, dynamic: bool, folder: Path) -> tuple[onnx.ModelProto, Report]:
    data, report = _portable_export(name, target, dynamic, folder)
    model = onnx.load_from_string(data)
    if precision == "fp16":  # the pipeline's fp16 step, on the written fp32 graph
        from blocks_export.export.fp16 import to_fp16

        model = to_fp16(model, keep_io_types=True)
    return model, report


@pytest.fixture(scope="session")
def sweep_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ov_sweep")


def _check_in_openvino(name: str, target: str, precision: str, dynamic: bool, folder: Path) -> None:
    from blocks_export.export.inputs import verification_shapes

    model, report = sweep_graph(name, target, precision, dynamic, folder)
    assert not any(n.op_type in ("DeformConv", "ModulatedDeformConv2d") for n in model.graph.node)
    shapes = [SHAPES[name]]
    if dynamic:
        dyn = (report.dynamic or {}).get(model.graph.input[0].name)
        assert dyn, report.dynamic
        shapes = verification_shapes(SHAPES[name], dyn)
        assert len(shapes) >= 3, shapes  # the export shape and at least two other valid ones
    for shape in shapes:
        x = image(shape)
        got, expected = openvino_outputs(model, x), torch_outputs(_original(name), x)
        assert len(got) == len(expected)
        for e, o in zip(expected, got, strict=True):
            err = rel_l2(e, o)
            assert err <= TOLERANCE[precision], f"{name} {target} {precision} dynamic={dynamic} {shape}: {err:.2e}"


def test_sample_model_graph_matches_in_openvino_representative(sweep_folder: Path) -> None:
    _check_in_openvino(*REPRESENTATIVE, sweep_folder)


def _sweep_params() -> list:
    params = []
    for m, t, p, d in SWEEP:
        if (m, t, p, d) == REPRESENTATIVE:
            continue
        params.append(pytest.param(m, t, p, d, id=f"{m}-{t}-{p}-{'dynamic' if d else 'static'}"))
    return params


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target", "precision", "dynamic"), _sweep_params())
def test_sample_model_graph_matches_in_openvino(name: str, target: str, precision: str, dynamic: bool,
                                                sweep_folder: Path) -> None:
    _check_in_openvino(name, target, precision, dynamic, sweep_folder)
