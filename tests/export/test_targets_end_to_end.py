"""The sample models exported for every target with the target's defaults (static shape, fp32): the written
ONNX passes the static check for that target and matches the original model.

Two independent witnesses besides the pipeline's own verdict: ``check_model`` run again on the written file,
and onnxruntime CPU (``cpu_session``, which also runs TensorRT plugin nodes) against the unpickled original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from blocks_export.export.check import check_model
from blocks_export.export.options import ExportOptions
from blocks_export.export.pipeline import run_export
from blocks_export.export.targets import TARGETS, get_target
from blocks_export.plugins.ort_cpu import cpu_session
from blocks_export.runtime.parity import rel_l2

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
CASES = [(name, t) for name in ("classifier", "detector") for t in TARGETS]
SHAPES = {"classifier": (1, 1, 32, 32), "detector": (1, 3, 640, 640)}


@pytest.fixture(scope="module")
def originals() -> dict[str, torch.nn.Module]:
    return {name: torch.load(SAMPLES / f"{name}.pt", weights_only=False).eval() for name in SHAPES}


@pytest.mark.parametrize(("name", "target"), CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_sample_model_export_for_target_passes_its_check_and_matches_the_original(
        tmp_path: Path, originals: dict[str, torch.nn.Module], name: str, target: str) -> None:
    out = tmp_path / f"{name}.onnx"
    result = run_export(SAMPLES / f"{name}.pt", ExportOptions(output=out, target=target, trust_pickle=True,
                                                              quiet=True))
    assert result.exit_code == 0, result.report.as_dict().get("check", result.report)
    verification = result.report.as_dict()["verification"]
    assert verification["passed"] and verification["precision"] == "fp32"
    assert result.report.as_dict()["exporter"] == get_target(target).exporter

    proto = onnx.load(str(out))
    report = check_model(proto, target)
    assert report, report.lines()
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [get_target(target).opset]

    g = torch.Generator().manual_seed(7)
    x = torch.rand(SHAPES[name], generator=g)
    with torch.no_grad():
        expected = originals[name](x)
    expected = list(expected) if isinstance(expected, tuple | list) else [expected]
    sess = cpu_session(proto)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert len(got) == len(expected)
    for e, o in zip(expected, got, strict=True):
        assert np.isfinite(o).all()
        assert rel_l2(e, o) <= 1e-5


@pytest.mark.parametrize("target", ["jetpack5", "jetpack6.0"])
def test_explicit_dynamo_exporter_for_a_tensorrt8_target_reaches_its_opset_and_matches_the_original(
        tmp_path: Path, originals: dict[str, torch.nn.Module], target: str) -> None:
    out = tmp_path / "classifier.onnx"
    result = run_export(SAMPLES / "classifier.pt", ExportOptions(output=out, target=target, exporter="dynamo",
                                                                 trust_pickle=True, quiet=True))
    assert result.exit_code == 0, result.report.as_dict().get("error", result.report)
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [get_target(target).opset]
    assert check_model(proto, target), check_model(proto, target).lines()
    x = torch.rand(SHAPES["classifier"], generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = originals["classifier"](x)
    sess = cpu_session(proto)
    assert rel_l2(expected, sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]) <= 1e-5


def test_exporter_defaults_to_the_targets_own() -> None:
    assert ExportOptions().exporter is None
    assert ExportOptions(exporter="torchscript").exporter == "torchscript"
