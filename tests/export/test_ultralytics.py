"""Ultralytics YOLO checkpoints with pasted blocks, exported through the CLI as `yolo export format=onnx` writes them.

Each export is checked by this test's own onnxruntime run against the checkpoint's model, against what
Ultralytics' own exporter writes for the same model without the blocks (names, shapes, metadata keys), and by
Ultralytics itself: ``YOLO('ours.onnx').predict`` must give the boxes ``YOLO('model.pt').predict`` gives.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("ultralytics")
sys.path.insert(0, str(Path(__file__).parent))
import ultralytics_models as um  # noqa: E402
from test_cli import invoke  # noqa: E402

from blocks_export.export.verify import session  # noqa: E402

IMGSZ = 320
ULTRA_KEYS = {"description", "author", "date", "version", "license", "docs", "stride", "task", "head", "batch",
              "imgsz", "names", "args", "channels", "end2end"}


def _reference(ckpt: Path) -> torch.nn.Module:
    """The checkpoint's model as Ultralytics evaluates it: its fp16 weights in fp32, eval mode."""
    obj = torch.load(ckpt, map_location="cpu", weights_only=False)
    return (obj.get("ema") or obj["model"]).float().eval()


def _own_parity(onnx_path: Path, ckpt: Path, shapes: list[tuple[int, ...]], rel_l2: float) -> None:
    sess = session(onnx_path.read_bytes())
    ref_model = _reference(ckpt)
    for i, shape in enumerate(shapes):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(10 + i))
        with torch.no_grad():
            ref = ref_model(x)[0].numpy()  # eval mode: (decoded [B, 4 + nc, anchors], raw maps)
        (got,) = sess.run(None, {"images": x.numpy()})
        assert got.shape == ref.shape
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err <= rel_l2, (shape, err)


def _io(model: onnx.ModelProto) -> list[tuple[str, list[int | str]]]:
    def dims(v: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]

    return [(v.name, dims(v)) for v in (*model.graph.input, *model.graph.output)]


def _ultralytics_export(tmp: Path, dynamic: bool) -> onnx.ModelProto:
    """What `yolo export format=onnx` writes for the plain YOLOv8n (no blocks) at the same size."""
    from ultralytics import YOLO

    pt = um.save_checkpoint(um.plain(), tmp / "plain.pt", IMGSZ)
    out = YOLO(str(pt)).export(format="onnx", imgsz=IMGSZ, dynamic=dynamic, simplify=False, verbose=False)
    return onnx.load(out)


def _boxes(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = result.boxes
    return b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy()


def _unmatched(a, b, score_atol: float) -> list[str]:
    """Boxes of ``a`` with no box of ``b`` of the same class at IoU >= 0.99 and a score within ``score_atol``.

    Exempt: a box within ``score_atol`` of predict's 0.25 confidence, or one whose suppression is borderline
    (IoU within 0.01 of NMS's 0.7 with a box of ``b``): either side of a threshold by a rounding difference; and
    one that ties in score with an overlapping box of ``b`` of its class (NMS keeps either of two equal scores).
    """
    from blocks_export.runtime.infer import box_iou

    iou = box_iou(a[0], b[0]) if len(b[0]) else np.zeros((len(a[0]), 0))
    bad = []
    for i in range(len(a[0])):
        same = (b[2] == a[2][i]) & (iou[i] >= 0.99) & (np.abs(b[1] - a[1][i]) <= score_atol)
        if same.any():
            continue
        tie = (b[2] == a[2][i]) & (iou[i] >= 0.3) & (np.abs(b[1] - a[1][i]) <= score_atol)
        borderline = a[1][i] <= 0.25 + score_atol or bool((np.abs(iou[i] - 0.7) <= 0.01).any()) or bool(tie.any())
        if not borderline:
            bad.append(f"class {int(a[2][i])} score {a[1][i]:.4f} box {a[0][i].round(1).tolist()}")
    return bad


def _same_predictions(pt: Path, onnx_path: Path, score_atol: float) -> None:
    from ultralytics import YOLO

    img = (np.random.default_rng(0).random((IMGSZ, IMGSZ, 3)) * 255).astype(np.uint8)
    ref = _boxes(YOLO(str(pt), task="detect").predict(img, imgsz=IMGSZ, verbose=False)[0])
    got = _boxes(YOLO(str(onnx_path), task="detect").predict(img, imgsz=IMGSZ, verbose=False)[0])
    assert len(ref[0]) >= 5, "the test model must predict boxes for this comparison to mean anything"
    assert abs(len(got[0]) - len(ref[0])) <= max(1, len(ref[0]) // 20)
    assert not _unmatched(ref, got, score_atol)
    assert not _unmatched(got, ref, score_atol)


@pytest.fixture(scope="module")
def blocks_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return um.save_checkpoint(um.with_blocks(cls_bias=-5.0), tmp_path_factory.mktemp("ultra") / "yolo.pt", IMGSZ)


def test_yolov8_with_blocks_exports_like_yolo_export_and_predicts_the_same_boxes(
        blocks_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ours.onnx"
    result = invoke(blocks_ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", str(IMGSZ), "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    ours = onnx.load(str(out))
    assert {n.op_type for n in ours.graph.node} >= {"DeformConv"}  # the DCNs were exported, not dropped
    _own_parity(out, blocks_ckpt, [(1, 3, IMGSZ, IMGSZ)], rel_l2=1e-5)

    monkeypatch.chdir(tmp_path)
    theirs = _ultralytics_export(tmp_path, dynamic=False)
    assert _io(ours) == _io(theirs)
    ours_meta = {p.key: p.value for p in ours.metadata_props}
    theirs_meta = {p.key: p.value for p in theirs.metadata_props}
    assert ULTRA_KEYS <= set(theirs_meta) and set(theirs_meta) <= set(ours_meta)
    for key in ("stride", "task", "head", "batch", "imgsz", "names", "channels", "end2end"):
        assert ours_meta[key] == theirs_meta[key], key

    _same_predictions(blocks_ckpt, out, score_atol=1e-4)
    # runtime/infer.py reads the same layout and names
    from blocks_export.runtime import infer

    sess = session(out.read_bytes())
    x = torch.rand((1, 3, IMGSZ, IMGSZ), generator=torch.Generator().manual_seed(3)).numpy()
    (pred,) = sess.run(None, {"images": x})
    assert infer.is_detect_layout(pred, 3)
    items = infer.detection_predictions(pred, ["x"], ["class0", "class1", "class2"])
    assert all(d["label"].startswith("class") for d in items[0]["detections"])


@pytest.mark.slow
def test_yolov8_with_blocks_dynamic_and_jetpack5(blocks_ckpt: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    theirs = _ultralytics_export(tmp_path, dynamic=True)
    dyn = tmp_path / "dyn.onnx"
    result = invoke(blocks_ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", str(IMGSZ), "--dynamic", "-o", dyn,
                    "--quiet")
    assert result.exit_code == 0, result.output
    # Ultralytics' unsimplified dynamic graph leaves the channel dim unnamed by its exporter
    # ("Concatoutput0_dim_1"); ours has it fixed (4 + nc). Names and the named dynamic axes must be equal.
    ours_io, theirs_io = _io(onnx.load(str(dyn))), _io(theirs)
    assert [n for n, _ in ours_io] == [n for n, _ in theirs_io]
    for (_, a), (_, b) in zip(ours_io, theirs_io, strict=True):
        assert len(a) == len(b)
        assert all(x == y for x, y in zip(a, b, strict=True) if not (isinstance(y, str) and y.startswith("Concat")))
    _own_parity(dyn, blocks_ckpt, [(1, 3, IMGSZ, IMGSZ), (2, 3, 256, 384)], rel_l2=1e-5)

    jp5 = tmp_path / "jp5.onnx"
    result = invoke(blocks_ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", str(IMGSZ), "--target", "jetpack5",
                    "-o", jp5, "--quiet")
    assert result.exit_code == 0, result.output
    assert "DeformConv" not in {n.op_type for n in onnx.load(str(jp5)).graph.node}
    _own_parity(jp5, blocks_ckpt, [(1, 3, IMGSZ, IMGSZ)], rel_l2=1e-5)
    _same_predictions(blocks_ckpt, jp5, score_atol=1e-4)


@pytest.mark.slow
def test_plain_yolov8_fp16_dynamic_graph_loads_and_matches_in_onnxruntime(tmp_path: Path) -> None:
    ckpt = um.save_checkpoint(um.plain(), tmp_path / "plain.pt", IMGSZ)
    out = tmp_path / "fp16.onnx"
    result = invoke(ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", str(IMGSZ), "--fp16", "--dynamic",
                    "--target", "jetpack6", "-o", out, "--quiet")
    # Our own onnxruntime run decides, not the tool's verdict: the graph must load and match at two shapes (the
    # Detect head's dynamic anchor grid casts arange to the feature dtype, a Cast the fp16 conversion must retarget).
    _own_parity(out, ckpt, [(1, 3, IMGSZ, IMGSZ), (2, 3, 256, 384)], rel_l2=1e-2)
    assert result.exit_code == 0, result.output
