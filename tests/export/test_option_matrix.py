"""Every combination of the export options, end to end through the CLI with every default step on (the real
onnxslim, verification on onnxruntime): each ``--deform-conv`` lowering x both ``--exporter`` x static/``--dynamic``
x fp32/``--fp16`` x every ``--target``, on one small model with ACmix and a DeformConv pasted the way users write
them. The written graph is then run in this test's own onnxruntime session against the ORIGINAL model (not the
tool's report). A combination the tool cannot make (e.g. a lowering the target's TensorRT cannot parse) must be
refused in one line with exit 2; a FAILED verdict, a crash or a wrong graph fails the test. Known gaps are strict
xfails (``KNOWN``): they fail the sweep the day they start to work, so the list stays true.

The whole sweep is ``@pytest.mark.slow`` (``pytest -m slow``); a few representatives run by default.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from blocks_export.blocks import DCN, ACmix, randomize_
from blocks_export.export.cli import app, with_default_command
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2

LOWERINGS = ("std", "portable", "plugin")
EXPORTERS = ("dynamo", "torchscript")
TARGETS = ("ort", "jetpack5", "jetpack6.0", "jetpack6", "trt10", "trt11")


class MixDeform(nn.Module):
    """Stem, a modulated DCN, ACmix, head: the two blocks whose lowerings differ most between targets."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dcn = DCN(8, 8, 3, 1)
        self.attn = ACmix(8, 8, kernel_att=5, head=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.dcn(self.stem(x))))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = randomize_(MixDeform().eval(), seed=11)
    path = tmp_path_factory.mktemp("matrix") / "mix.pt"
    torch.save(model, path)
    return model, path


def _shapes(report: dict) -> list[tuple[int, ...]]:
    """The export shape and, for a dynamic graph, a non-square size at batch 2 from the recorded ranges."""
    shape = tuple(report["export_shape"])
    if not report.get("dynamic"):
        return [shape]
    ranges = next(iter(report["dynamic"].values()))
    hs, ws = (int(ranges[a].get("multiple_of") or 1) for a in ("2", "3"))
    return [shape, (2, shape[1], shape[2] + hs, shape[3] + 3 * ws)]


def _run(tmp_path: Path, source: tuple[nn.Module, Path], lowering: str, exporter: str, dynamic: bool, fp16: bool,
         target: str) -> None:
    model, src = source
    out = tmp_path / "mix.onnx"
    argv = [str(src), "--to", "onnx", "--trust-pickle", "--imgsz", "40", "-o", str(out), "--json", "--quiet",
            "--deform-conv", lowering, "--exporter", exporter, "--target", target,
            *(["--dynamic"] if dynamic else []), *(["--fp16"] if fp16 else [])]
    result = CliRunner().invoke(app, with_default_command(argv))
    if result.exit_code == 2:  # a refused combination: one line that names the option at fault, nothing written
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--" in lines[0], result.stderr
        assert not out.exists()
        pytest.skip(f"refused: {lines[0]}")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "PASSED"
    session = cpu_session(out.read_bytes())
    tol = 2e-2 if fp16 else 1e-4
    for i, shape in enumerate(_shapes(report)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(200 + i))
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == expected.shape, shape
        assert rel_l2(expected, np.asarray(got, dtype=np.float32)) <= tol, shape


# Combinations known not to work, with the reason (none today). The dynamo exporter's opset-18 graphs reach the
# TensorRT 8.x opsets (16, 17) through export/opset_down.py, which rewrites the forms onnx's converter has no
# adapter for (Split, Pad); every cell of that path passes.
KNOWN: dict[tuple, str] = {}


def _param(c: tuple) -> object:
    if c in KNOWN:
        return pytest.param(c, id=_id(c), marks=pytest.mark.xfail(reason=KNOWN[c], strict=True))
    return pytest.param(c, id=_id(c))


FAST = [("portable", "dynamo", True, False, "ort"), ("plugin", "torchscript", False, True, "jetpack6.0"),
        ("std", "dynamo", True, True, "jetpack6")]
def _id(c: tuple) -> str:
    lowering, exporter, dynamic, fp16, target = c
    return "-".join([lowering, exporter, "dynamic" if dynamic else "static", "fp16" if fp16 else "fp32", target])


@pytest.mark.parametrize("combo", FAST, ids=[_id(c) for c in FAST])
def test_representative_option_combinations(tmp_path: Path, source: tuple[nn.Module, Path], combo: tuple) -> None:
    _run(tmp_path, source, *combo)


ALL = [_param(c) for c in itertools.product(LOWERINGS, EXPORTERS, (False, True), (False, True), TARGETS)
       if c not in FAST]


@pytest.mark.slow
@pytest.mark.parametrize("combo", ALL)
def test_every_option_combination(tmp_path: Path, source: tuple[nn.Module, Path], combo: tuple) -> None:
    _run(tmp_path, source, *combo)
