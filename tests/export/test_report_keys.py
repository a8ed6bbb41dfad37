"""The JSON report's schema, pinned on real exports through the CLI: every key path in document order, with the
JSON types its values take there (``verification.runs[].outputs[].rel_l2: float``). Refactoring the pipeline,
the verification layer or the report's values must not add, drop, rename, reorder or retype a key; a deliberate
schema change edits ``report_keys.json`` (one case per test below) and README together.

Paths: ``a.b`` for a key inside an object, ``a[]`` for the items of a list (every item merged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_models  # noqa: E402
from trt_double import HostMemory, Knobs, make_tensorrt  # noqa: E402

import blocks_export.blocks as blocks_package  # noqa: E402
from blocks_export.export import fp16 as fp16_module  # noqa: E402
from blocks_export.export.cli import app, with_default_command  # noqa: E402
from blocks_export.export.trt import api, run  # noqa: E402

PINNED = json.loads((Path(__file__).with_name("report_keys.json")).read_text())


def _type(value: object) -> str:
    return {dict: "object", list: "array", str: "str", bool: "bool", int: "int", float: "float",
            type(None): "null"}[type(value)]


def key_paths(doc: object) -> list[list[str]]:
    """[[key path, "type|type"], ...] of ``doc`` in document order (list items merged into ``path[]``)."""
    found: dict[str, set[str]] = {}

    def walk(value: object, at: str) -> None:
        if at:
            found.setdefault(at, set()).add(_type(value))
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{at}.{k}" if at else k)
        elif isinstance(value, list):
            for v in value:
                walk(v, f"{at}[]")

    walk(doc, "")
    return [[k, "|".join(sorted(v))] for k, v in found.items()]


def export(*args: object) -> tuple[int, dict]:
    result = CliRunner().invoke(app, with_default_command([str(a) for a in args] + ["--json", "--quiet"]))
    report = json.loads(result.stdout)
    written = json.loads(Path(report["report"]).read_text())
    assert written == report  # the file beside the output is the same document
    return result.exit_code, report


def assert_pinned(case: str, report: dict) -> None:
    got, want = key_paths(report), PINNED[case]
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    assert not missing and not extra, f"{case}: missing {missing}, new {extra}"
    assert got == want, f"{case}: the keys are reordered"


@pytest.fixture(scope="module")
def refnet_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "refnet.pt"
    torch.save(export_models.build(export_models.RefNet), path)
    return path


def test_a_dynamic_export_for_a_tensorrt_target_keeps_its_report_keys(refnet_pt: Path, tmp_path: Path) -> None:
    code, report = export(refnet_pt, "--trust-pickle", "--imgsz", "32", "--dynamic", "--target", "jetpack6",
                          "-o", tmp_path / "r.onnx")
    assert code == 0, report
    assert_pinned("dynamic_tensorrt_target", report)


def test_a_graph_the_runtime_cannot_run_keeps_its_report_keys_with_the_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stock export of a reference Coordinate Attention (a rewriter that knows no blocks) with --dynamic: its
    # split sizes are fixed at export time, so onnxruntime fails at another size, in a node of the block.
    src = tmp_path / "ca.pt"
    torch.save(export_models.build(export_models.CANet), src)
    real = blocks_package.rewrite_model
    monkeypatch.setattr(blocks_package, "rewrite_model", lambda model, example: real(model, example, {}, {}))
    code, report = export(src, "--trust-pickle", "--imgsz", "20,24", "--dynamic", "--rtol", "1e-3", "--atol", "0")
    assert code == 1
    assert report["verification"]["failure"]["node"]
    assert report["verification"]["first_diverging_block"]["block"] == "ca"
    assert_pinned("runtime_failure", report)


def test_a_graph_that_computes_something_else_keeps_its_report_keys_with_the_diverging_block(
        refnet_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fp16_module.to_fp16

    def perturbed(model: onnx.ModelProto, **kwargs: object) -> onnx.ModelProto:
        half = real(model, **kwargs)
        conv = [n for n in half.graph.node if n.op_type == "Conv"][0]
        init = next(t for t in half.graph.initializer if t.name == conv.input[1])
        array = onnx.numpy_helper.to_array(init)
        init.CopyFrom(onnx.numpy_helper.from_array((-array).astype(array.dtype), init.name))
        return half

    monkeypatch.setattr(fp16_module, "to_fp16", perturbed)
    code, report = export(refnet_pt, "--trust-pickle", "--imgsz", "32", "--fp16", "-o", tmp_path / "r.onnx")
    assert code == 1
    assert report["verification"]["first_diverging_block"]["block"]
    assert_pinned("diverging_block", report)
    # The TorchScript exporter writes no module scopes: no block can be named, and the report says why.
    code, report = export(refnet_pt, "--trust-pickle", "--imgsz", "32", "--fp16", "--exporter", "torchscript",
                          "-o", tmp_path / "t.onnx")
    assert code == 1
    assert report["verification"]["first_diverging_block"]["why"]
    assert_pinned("no_block_named", report)


def test_an_engine_build_keeps_its_report_keys_with_the_engine_parity(
        refnet_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10", Knobs()))
    monkeypatch.setattr(api, "cuda_device", lambda rebuild=None, index=0: api.DeviceInfo("Orin (double)", "8.7"))
    monkeypatch.setattr(run, "device_memory", HostMemory)
    code, report = export(refnet_pt, "--trust-pickle", "--imgsz", "32", "--to", "trt", "--target", "jetpack6",
                          "-o", tmp_path / "r.engine")
    assert code == 0, report
    assert [r["reference"] for r in report["engine_parity"]] == ["pytorch"]
    assert_pinned("engine", report)
    # An ONNX input: the engine against onnxruntime on that ONNX.
    code, report = export(tmp_path / "r.onnx", "--to", "trt", "--target", "jetpack6", "--force")
    assert code == 0, report
    assert [r["reference"] for r in report["engine_parity"]] == ["onnxruntime"]
    assert_pinned("engine_from_onnx", report)


def test_an_int8_export_keeps_its_report_keys(refnet_pt: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(calib / f"{i}.png")
    code, report = export(refnet_pt, "--trust-pickle", "--imgsz", "32", "--int8", "--calib", calib,
                          "--calib-count", "4", "--int8-budget", "10", "-o", tmp_path / "r.onnx")
    assert code == 0, report
    assert report["precision"] == "int8"
    assert_pinned("int8", report)


def test_an_int8_export_with_a_metric_budget_keeps_its_report_keys(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    digits = sorted((root / "sample_models" / "images").glob("digit_*.png"))
    for png in digits * 2:  # label-named folders: the held-out images carry their labels
        label = png.name.split("_")[1]
        (tmp_path / "calib" / label).mkdir(parents=True, exist_ok=True)
        target = tmp_path / "calib" / label / png.name
        (target.with_name(f"b_{png.name}") if target.exists() else target).write_bytes(png.read_bytes())
    code, report = export(root / "sample_models" / "classifier.pt", "--trust-pickle", "--int8", "--calib",
                          tmp_path / "calib", "--calib-count", "12", "--int8-budget-metric", "100",
                          "-o", tmp_path / "c.onnx")
    assert code == 0, report
    assert report["int8"]["metric"]["images"] == 8
    assert_pinned("int8_metric", report)


def test_an_ultralytics_detector_keeps_its_report_keys_with_the_box_check(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    import ultralytics_models as um

    ckpt = um.save_checkpoint(um.plain(), tmp_path / "yolo.pt", 64)
    code, report = export(ckpt, "--trust-pickle", "--imgsz", "64", "-o", tmp_path / "y.onnx")
    assert code == 0, report
    assert report["detections"]["passed"]
    assert_pinned("ultralytics_detect", report)



def test_an_export_with_val_keeps_its_report_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("3", "7"):
        (tmp_path / "val" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / "val" / label / f"{i}.png")
    classifier = Path(__file__).resolve().parents[2] / "sample_models" / "classifier.pt"
    code, report = export(classifier, "--trust-pickle", "--fp16", "--val", tmp_path / "val", "-o", tmp_path / "c.onnx")
    assert code == 0, report
    assert [r["precision"] for r in report["val"]["results"]] == ["fp32", "fp32", "fp16"]
    assert_pinned("val", report)
