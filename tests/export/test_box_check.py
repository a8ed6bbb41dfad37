"""The Ultralytics box check compares boxes that exist, under a floor of the model's own noise, through the CLI.

- The fitted shapes detector (``detect_fixture``: YOLOv8n with pasted DCNv2, CA and ACmix, its head fitted so it
  detects) sees real boxes on the check's images: a non-empty comparison, against the float64 run. Its ``--fp16``
  graph is further from float64 than the fp16 score rule (1e-2) allows on some box, and PyTorch's own half run is
  that far too: the box floor passes it, printed beside the rule.
- A detector that detects nothing (class biases far below the threshold) is not "0/0 agree ... PASSED": its
  top-k pre-NMS candidates are compared, whatever their score, and said to be.
- A wrong graph (one head weight changed by 1 %) fails the box check under the same floor.
The test computes its own comparison of the written graph with the PyTorch model, by onnxruntime.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("ultralytics")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ultralytics_models as um  # noqa: E402
from detect_fixture import IMGSZ, detect_checkpoint, shapes_image  # noqa: E402, F401 (a fixture)

from blocks_export.export import boxes, ultralytics  # noqa: E402
from blocks_export.export.cli import app, with_default_command  # noqa: E402
from blocks_export.plugins.ort_cpu import cpu_session  # noqa: E402


def export(src: Path, out: Path, *flags: object) -> tuple[int, dict, str]:
    result = CliRunner().invoke(app, with_default_command(
        [str(src), "--trust-pickle", "-o", str(out), "--force", *map(str, flags)]))
    return result.exit_code, json.loads(out.with_suffix(".report.json").read_text()), result.output


def own_top_score_diff(onnx_path: Path, model: torch.nn.Module, shape: tuple[int, ...], k: int) -> float:
    """This test's own run: the largest class-score difference at the k best-scoring anchors per image."""
    sess = cpu_session(onnx_path.read_bytes())
    worst = 0.0
    for x in boxes.sample_images(shape):
        with torch.no_grad():
            ref = model(x)
        ref = (ref[0] if isinstance(ref, list | tuple) else ref)[0].double().numpy()
        feed = x.numpy().astype(np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32)
        got = np.asarray(sess.run(None, {sess.get_inputs()[0].name: feed})[0][0], dtype=np.float64)
        top = np.argsort(-ref[4:].max(axis=0))[:k]
        worst = max(worst, float(np.abs(got[4:, top] - ref[4:, top]).max()))
    return worst


def test_the_fitted_detector_check_sees_real_boxes_and_its_fp16_graph_passes_on_the_box_floor(
        detect_checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    code, report, output = export(detect_checkpoint, tmp_path / "d.onnx", "--imgsz", IMGSZ)
    det = report["detections"]
    assert code == 0 and det["passed"] is True, det
    assert det["compared"] == "boxes" and det["reference_boxes"] > 0 and det["matched"] == det["reference_boxes"]
    assert det["reference"] == "float64" and det["floor"]["score_diff"] is not None
    assert "agree" in output and "NOT CHECKED" not in output

    code, report, output = export(detect_checkpoint, tmp_path / "h.onnx", "--imgsz", IMGSZ, "--fp16")
    det = report["detections"]
    assert code == 0 and det["passed"] is True, det
    assert det["reference_boxes"] > 0
    # PyTorch's own half run differs from its float64 run by more than a quarter of the rule: the limit is looser
    assert det["floor"]["score_diff"] * 4 > det["rule"]["score_atol"]
    assert det["limits"]["score_atol"] == pytest.approx(4 * det["floor"]["score_diff"], rel=1e-2)
    assert det["max_score_diff"] <= det["limits"]["score_atol"]


def prepared(checkpoint: Path, imgsz: int) -> torch.nn.Module:
    """The checkpoint's model as the export runs it (Detect in export mode, fp32)."""
    model = torch.load(checkpoint, weights_only=False)["model"].float().eval()
    return ultralytics.prepare(model, imgsz=(imgsz, imgsz), batch=1, dynamic=False, half=False)[0]


def test_a_detector_that_detects_nothing_has_its_candidates_compared_not_a_vacuous_pass(tmp_path: Path) -> None:
    # An Ultralytics detector that detects nothing: every class bias far below the confidence threshold.
    src = um.save_checkpoint(um.plain(cls_bias=-30.0), tmp_path / "silent.pt", 64)
    code, report, output = export(src, tmp_path / "s.onnx", "--imgsz", 64)
    det = report["detections"]
    assert code == 0 and det["compared"] == "candidates", det
    assert det["reference_boxes"] == boxes.TOP_K * det["images"] > 0 and det["passed"] is True
    assert "0/0" not in output and "top-20 candidates agree" in output
    assert own_top_score_diff(tmp_path / "s.onnx", prepared(src, 64), (1, 3, 64, 64), boxes.TOP_K) <= 1e-4


def test_a_wrong_graph_fails_the_box_check_under_the_floor(detect_checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    code, _, _ = export(detect_checkpoint, tmp_path / "d.onnx", "--imgsz", IMGSZ)
    assert code == 0
    graph = onnx.load(str(tmp_path / "d.onnx"))
    inits = {t.name: t for t in graph.graph.initializer}
    last_conv = [n for n in graph.graph.node if n.op_type == "Conv"][-1]  # a class-score 1x1 conv of Detect
    w = inits[last_conv.input[1]]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.01), w.name))
    agreement = boxes.box_agreement(prepared(detect_checkpoint, IMGSZ), graph, boxes.sample_images((1, 3, IMGSZ, IMGSZ)),
                                          precision="fp32")
    assert agreement.reference_boxes > 0 and not agreement, agreement.as_dict()


def test_the_box_check_runs_on_the_images_given_with_images(detect_checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    """``--images DIR``: the box check letterboxes the folder's pictures (of other sizes than the export's) and
    compares the boxes the detector finds on them; the report names the folder. A missing folder is refused
    before any export work (no file written)."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i, hw in enumerate(((120, 200), (200, 150), (160, 160))):
        Image.fromarray(shapes_image(rng, hw)[0]).save(folder / f"p{i}.png")
    code, report, output = export(detect_checkpoint, tmp_path / "d.onnx", "--imgsz", IMGSZ, "--images", folder)
    det = report["detections"]
    assert code == 0 and det["passed"] is True, det
    assert det["images"] == 3 and det["images_from"] == str(folder)
    assert det["compared"] == "boxes" and det["reference_boxes"] > 0 and det["matched"] == det["reference_boxes"]
    assert "on 3 image(s)" in output

    result = CliRunner().invoke(app, with_default_command(
        [str(detect_checkpoint), "--trust-pickle", "-o", str(tmp_path / "e.onnx"), "--imgsz", str(IMGSZ),
         "--images", str(tmp_path / "none")]))
    assert result.exit_code == 2 and "box-check folder" in result.output, result.output
    assert not (tmp_path / "e.onnx").exists()
