"""The figure of ``export --val``: the per-block rows it reads from a report (INT8's sensitivity rows, and any
precision step's rows of the same shape keyed by block), and the PNG with one sensitivity panel per step."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from blocks_export.export.val import ValReport, ValResult
from blocks_export.export.val.step import sensitivity_rows

INT8 = {"budget": 0.05, "fallback": ["10"],  # the names of the parts kept: not rows
        "sensitivity": [{"block": "1", "nodes": 1, "rel_l2": 6.6e-3, "top1_agreement": 1.0, "fallback": False,
                         "why": ""},
                        {"block": "10", "nodes": 4, "rel_l2": 9.1e-2, "top1_agreement": 0.9, "fallback": True,
                         "why": "over the budget"}]}
FP16 = {"fallback": [{"block": "backbone.3", "nodes": 7, "error": 2.1e-2, "kept": True, "why": "fp16 error"},
                     {"block": "backbone.9", "nodes": 3, "error": None, "kept": False, "why": "not measured"}]}


def test_rows_are_read_from_every_precision_step_keyed_by_block() -> None:
    doc = {"precision": "int8+fp16", "int8": INT8, "fp16": FP16, "verification": None, "warnings": ["x"]}
    rows = sensitivity_rows(doc)
    assert list(rows) == ["int8", "fp16"]
    assert [r["block"] for r in rows["int8"]] == ["1", "10"] and {r["budget"] for r in rows["int8"]} == {0.05}
    assert [r["block"] for r in rows["fp16"]] == ["backbone.3"]  # a row without a number is not drawn
    assert sensitivity_rows({"int8": {"sensitivity": []}, "val": {"results": [{"graph": "a"}]}}) == {}


def _report() -> ValReport:
    report = ValReport("classify", "digits", 360, None)
    report.results = [ValResult("original (PyTorch)", "fp32", "top1", 0.99, {"top1": 0.99}, 360, 5.0, True),
                      ValResult("c.onnx", "int8", "top1", 0.98, {"top1": 0.98}, 360, 1.0, change=-0.01)]
    return report


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as img:
        return img.size


def test_the_figure_has_a_sensitivity_panel_per_step() -> None:
    pytest.importorskip("matplotlib")
    from blocks_export.export.val.plot import export_figure

    alone = _size(export_figure(_report(), {}))
    one = _size(export_figure(_report(), sensitivity_rows({"int8": INT8})))
    two = _size(export_figure(_report(), sensitivity_rows({"int8": INT8, "fp16": FP16})))
    assert alone[0] < one[0] < two[0]  # each step adds a panel beside the metric bars
