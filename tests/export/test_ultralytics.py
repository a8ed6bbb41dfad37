"""Ultralytics YOLO checkpoints with pasted blocks, exported through the CLI as `yolo export format=onnx` writes them.

Each export is checked by this test's own onnxruntime run against the checkpoint's model, against what
Ultralytics' own exporter writes for the same model without the blocks (names, shapes, metadata keys), and by
Ultralytics itself: ``YOLO('ours.onnx').predict`` must give the boxes ``YOLO('model.pt').predict`` gives.
"""
from __future__ import annotations

import ast
import json
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

from blocks_export.plugins.ort_cpu import cpu_session  # noqa: E402

IMGSZ = 320  # the fast representative; the slow matrix runs at Ultralytics' default 640
ULTRA_KEYS = {"description", "author", "date", "version", "license", "docs", "stride", "task", "head", "batch",
              "imgsz", "names", "args", "channels", "end2end"}
# The metadata values YOLO('model.onnx') reads back (ultralytics/nn/backends/base.py, apply_metadata).
SAME_META = ("stride", "task", "head", "batch", "imgsz", "names", "channels", "end2end", "kpt_shape")
# The acceptance matrix: our CLI flags, and the `yolo export` arguments whose graph ours must look like. fp16
# keeps fp32 inputs and outputs, so its interface is the fp32 export's.
MODES = {"static": ([], False), "dynamic": (["--dynamic"], True),
         "fp16-jetpack6": (["--fp16", "--target", "jetpack6"], False), "jetpack5": (["--target", "jetpack5"], False)}


def _reference(ckpt: Path) -> torch.nn.Module:
    """The checkpoint's model as Ultralytics evaluates it: its fp16 weights in fp32, eval mode."""
    obj = torch.load(ckpt, map_location="cpu", weights_only=False)
    return (obj.get("ema") or obj["model"]).float().eval()


def _own_parity(onnx_path: Path, ckpt: Path, shapes: list[tuple[int, ...]], rel_l2: float) -> None:
    """Every output of our graph against the checkpoint's model, by this test's own onnxruntime session."""
    sess = cpu_session(onnx_path.read_bytes())
    ref_model = _reference(ckpt)
    for i, shape in enumerate(shapes):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(10 + i))
        with torch.no_grad():
            ref = ref_model(x)
        # eval mode: (what export mode returns, the raw head outputs); segment's first part is itself the pair
        # (decoded [B, 4 + nc + 32, anchors], prototypes), classify's the probabilities.
        ref = list(ref[0]) if isinstance(ref[0], tuple | list) else [ref[0]]
        got = sess.run(None, {"images": x.numpy()})
        assert len(got) == len(ref)
        for g, r in zip(got, ref, strict=True):
            r = r.float().numpy()
            assert g.shape == r.shape
            err = np.linalg.norm(g.astype(np.float64) - r) / np.linalg.norm(r)
            assert err <= rel_l2, (shape, err)


def _io(model: onnx.ModelProto) -> list[tuple[str, list[int | str]]]:
    def dims(v: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]

    return [(v.name, dims(v)) for v in (*model.graph.input, *model.graph.output)]


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


_EXPORTS: dict[tuple[str, ...], onnx.ModelProto] = {}


def _ultralytics_export(tmp: Path, model: torch.nn.Module, imgsz: int, dynamic: bool, task: str = "detect",
                        key: str = "yolov8n.yaml") -> onnx.ModelProto:
    """What `yolo export format=onnx` writes (its defaults: simplify=True) for ``model`` without our blocks."""
    from ultralytics import YOLO

    cache = (key, task, str(imgsz), str(dynamic))
    if cache not in _EXPORTS:
        pt = um.save_checkpoint(model, tmp / f"plain_{task}_{imgsz}_{int(dynamic)}.pt", imgsz, task)
        out = YOLO(str(pt), task=task).export(format="onnx", imgsz=imgsz, dynamic=dynamic, verbose=False)
        _EXPORTS[cache] = onnx.load(out)
    return _EXPORTS[cache]


def _same_interface(ours: onnx.ModelProto, theirs: onnx.ModelProto) -> None:
    """Names, shapes and dim names, and the metadata Ultralytics reads back, equal to Ultralytics' export."""
    assert _io(ours) == _io(theirs)
    ours_meta, theirs_meta = _meta(ours), _meta(theirs)
    assert ULTRA_KEYS <= set(theirs_meta) and set(theirs_meta) <= set(ours_meta)
    for key in SAME_META:
        assert ours_meta.get(key) == theirs_meta.get(key), key
    ours_args, theirs_args = ast.literal_eval(ours_meta["args"]), ast.literal_eval(theirs_meta["args"])
    assert ours_args["dynamic"] == theirs_args["dynamic"] and ours_args["batch"] == theirs_args["batch"]


def _boxes(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = result.boxes
    return b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy()


def _unmatched(a, b, score_atol: float, px: float | None = None, cascade: bool = False) -> list[str]:
    """Boxes of ``a`` with no box of ``b`` of the same class at IoU >= 0.99 (or, with ``px``, every corner within
    ``px`` pixels, boxes clipped to no area at the image edge exempt) and a score within ``score_atol``.

    Exempt: a box within ``score_atol`` of predict's 0.25 confidence, or one whose suppression is borderline
    (IoU within 0.01 of NMS's 0.7 with a box of ``b``): either side of a threshold by a rounding difference; and
    one that ties in score with an overlapping box of ``b`` of its class (NMS keeps either of two equal scores).
    With ``cascade`` (fp16, whose rounding makes rows of near-equal copies equal), also one that ``b``'s NMS
    suppressed: ``b`` kept a higher-scored box of its class over it at IoU > 0.7 (another copy of a tie won).
    """
    from blocks_export.runtime.infer import box_iou

    iou = box_iou(a[0], b[0]) if len(b[0]) else np.zeros((len(a[0]), 0))
    bad = []
    for i in range(len(a[0])):
        if px is not None and np.prod(a[0][i, 2:] - a[0][i, :2]) == 0:
            continue  # clipped to nothing: a box in the letterbox padding, one of a row of equal-score copies
        close = iou[i] >= 0.99 if px is None else np.abs(b[0] - a[0][i]).max(axis=1, initial=0) <= px
        same = (b[2] == a[2][i]) & close & (np.abs(b[1] - a[1][i]) <= score_atol)
        if same.any():
            continue
        tie = (b[2] == a[2][i]) & (iou[i] >= 0.3) & (np.abs(b[1] - a[1][i]) <= score_atol)
        borderline = a[1][i] <= 0.25 + score_atol or bool((np.abs(iou[i] - 0.7) <= 0.01).any()) or bool(tie.any())
        if cascade:
            borderline = borderline or bool(((b[2] == a[2][i]) & (iou[i] > 0.7) & (b[1] > a[1][i])).any())
        if not borderline:
            bad.append(f"class {int(a[2][i])} score {a[1][i]:.4f} box {a[0][i].round(1).tolist()}")
    return bad


def _same_predictions(pt: Path, onnx_path: Path, imgsz: int, score_atol: float) -> None:
    """Ultralytics itself on both files: YOLO('ours.onnx').predict gives the boxes YOLO('model.pt') gives."""
    from ultralytics import YOLO

    img = (np.random.default_rng(0).random((imgsz, imgsz, 3)) * 255).astype(np.uint8)
    ref = _boxes(YOLO(str(pt), task="detect").predict(img, imgsz=imgsz, verbose=False)[0])
    got = _boxes(YOLO(str(onnx_path), task="detect").predict(img, imgsz=imgsz, verbose=False)[0])
    assert len(ref[0]) >= 5, "the test model must predict boxes for this comparison to mean anything"
    cascade = score_atol >= 1e-2  # fp16: every box accounted for both ways instead of equal counts
    if not cascade:
        assert abs(len(got[0]) - len(ref[0])) <= max(1, len(ref[0]) // 20)
    assert not _unmatched(ref, got, score_atol, cascade=cascade)
    assert not _unmatched(got, ref, score_atol, cascade=cascade)


_CKPTS: dict[tuple[str, int], Path] = {}


def _blocks_ckpt(tmp: Path, yaml: str, imgsz: int) -> Path:
    """``yaml`` with our test's pasted blocks, saved as an Ultralytics training checkpoint (one per module run)."""
    if (yaml, imgsz) not in _CKPTS:
        _CKPTS[yaml, imgsz] = um.save_checkpoint(um.with_blocks(yaml, cls_bias=-5.0), tmp / f"{yaml}_{imgsz}.pt",
                                                 imgsz)
    return _CKPTS[yaml, imgsz]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ultra")


def _export_case(shared: Path, tmp_path: Path, yaml: str, mode: str, imgsz: int) -> Path:
    """One cell of the acceptance matrix, through the CLI with every default step on, checked by this test."""
    flags, dynamic = MODES[mode]
    ckpt = _blocks_ckpt(shared, yaml, imgsz)
    out = tmp_path / f"ours_{mode}.onnx"
    result = invoke(ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", str(imgsz), *flags, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    ours = onnx.load(str(out))
    ops = {n.op_type for n in ours.graph.node}
    # JetPack 5's TensorRT 8.5 has no DeformConv: the DCNs are lowered; elsewhere they are one DeformConv each.
    assert ("DeformConv" in ops) == (mode != "jetpack5")
    fp16 = mode.startswith("fp16")
    shapes = [(1, 3, imgsz, imgsz)] + ([(2, 3, imgsz // 2, imgsz * 3 // 4)] if dynamic else [])
    _own_parity(out, ckpt, shapes, rel_l2=1e-2 if fp16 else 1e-5)
    _same_interface(ours, _ultralytics_export(shared, um.plain(yaml), imgsz, dynamic, key=yaml))
    _same_predictions(ckpt, out, imgsz, score_atol=1e-2 if fp16 else 1e-4)
    return out


def test_yolov8_with_blocks_exports_like_yolo_export_and_predicts_the_same_boxes(
        shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _export_case(shared, tmp_path, "yolov8n.yaml", "static", IMGSZ)

    # runtime/infer.py on a non-square image: the boxes Ultralytics predicts, in the image's own pixels, with the
    # class names of the metadata. The 640x400 image is a 320x200 one with every pixel doubled, so the letterbox
    # halving is exact in both resizers (OpenCV's uint8 one and infer.py's float one): the two see one input.
    from PIL import Image
    from ultralytics import YOLO

    from blocks_export.runtime import infer

    small = (np.random.default_rng(5).random((200, 320, 3)) * 255).astype(np.uint8)
    image = tmp_path / "wide.png"
    Image.fromarray(small.repeat(2, axis=0).repeat(2, axis=1)).save(image)
    assert infer.main([str(out), str(image), "--json", "--provider", "cpu"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["predictions"]
    assert item["box_space"] == "image"
    dets = item["detections"]
    got = (np.array([d["box_xyxy"] for d in dets]).reshape(-1, 4), np.array([d["score"] for d in dets]),
           np.array([d["class"] for d in dets]))
    assert all(d["label"] == f"class{d['class']}" for d in dets)
    # rect=False: the .pt backend letterboxes to the full square too (predict's default rect=True pads the .pt
    # input only to a stride multiple, a different input from a static ONNX's).
    ref = _boxes(YOLO(str(_blocks_ckpt(shared, "yolov8n.yaml", IMGSZ)), task="detect").predict(
        str(image), imgsz=IMGSZ, rect=False, verbose=False)[0])
    assert len(ref[0]) >= 5 and ref[0][:, 2].max() > IMGSZ  # in image pixels (640 wide), not input pixels
    # infer.py rounds boxes to 0.01 px and scores to 1e-5; boxes are twice the input's size here
    assert not _unmatched(ref, got, 1e-4, px=0.1) and not _unmatched(got, ref, 1e-4, px=0.1)

    # YOLO('ours.onnx').val on a tiny offline dataset labelled with the .pt model's predictions: the same mAP as
    # YOLO('model.pt').val. rect=False: one 320x320 input on both sides (a .pt validates rect batches padded to
    # 352). Ultralytics' FLOPs count (thop, while it loads a .pt for val) crashes in torchvision's deform_conv2d
    # at times; it only prints a number, so it is switched off.
    import ultralytics.utils.torch_utils as ultralytics_torch_utils

    monkeypatch.setattr(ultralytics_torch_utils, "get_flops", lambda *a, **k: 0.0)
    ckpt = _blocks_ckpt(shared, "yolov8n.yaml", IMGSZ)
    data = _tiny_dataset(tmp_path / "data", YOLO(str(ckpt), task="detect"), IMGSZ)
    kw = {"data": str(data), "imgsz": IMGSZ, "batch": 1, "rect": False, "plots": False, "verbose": False,
          "device": "cpu", "workers": 0}
    ref_map = YOLO(str(ckpt), task="detect").val(**kw).box.map50
    got_map = YOLO(str(out), task="detect").val(**kw).box.map50
    # Not 1: predict keeps boxes over 0.25, val ranks every box over 0.001. Near-equal-score copies in flat image
    # regions swap order on 1e-6 differences and NMS keeps others, hence 0.02 (measured: 0.376 vs 0.369).
    assert ref_map > 0.2 and abs(got_map - ref_map) <= 0.02, (ref_map, got_map)


def _tiny_dataset(root: Path, labeller, imgsz: int, count: int = 2) -> Path:
    """``count`` seeded noise images, labelled with ``labeller``'s predictions, and the data yaml pointing at them."""
    from PIL import Image

    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        img = (rng.random((imgsz, imgsz, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / "val" / f"im{i}.png")
        boxes = labeller.predict(img[..., ::-1].copy(), imgsz=imgsz, verbose=False)[0].boxes  # predict takes BGR
        lines = [f"{int(c)} {' '.join(f'{v:.6f}' for v in xywhn)}"
                 for c, xywhn in zip(boxes.cls.tolist(), boxes.xywhn.tolist(), strict=True)]
        assert lines, "the labeller must predict boxes for the dataset to mean anything"
        (root / "labels" / "val" / f"im{i}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: class{i}\n" for i in range(3))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n{names}")
    return root / "data.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("yaml", ["yolov8n.yaml", "yolo11n.yaml"])
def test_acceptance_matrix_at_640(shared: Path, tmp_path: Path, yaml: str, mode: str) -> None:
    _export_case(shared, tmp_path, yaml, mode, 640)


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


@pytest.mark.parametrize("task", [  # the classifier (the cheapest export) in the default run
    pytest.param("segment", marks=pytest.mark.slow), pytest.param("pose", marks=pytest.mark.slow),
    pytest.param("obb", marks=pytest.mark.slow), "classify"])
def test_other_tasks_export_in_ultralytics_layout(shared: Path, tmp_path: Path, task: str) -> None:
    """Segment (two outputs), pose, OBB and classify models with pasted blocks: the outputs, shapes and metadata
    Ultralytics' exporter writes for the same model without the blocks, and parity in our own run."""
    imgsz = 64
    ckpt = um.save_checkpoint(um.task_model(task, blocks=True), tmp_path / f"{task}.pt", imgsz, task)
    out = tmp_path / f"{task}.onnx"
    result = invoke(ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", str(imgsz), "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    ours = onnx.load(str(out))
    assert "DeformConv" in {n.op_type for n in ours.graph.node}
    _own_parity(out, ckpt, [(1, 3, imgsz, imgsz)], rel_l2=1e-5)
    _same_interface(ours, _ultralytics_export(shared, um.task_model(task, blocks=False), imgsz, False, task))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # Ultralytics may write settings or run folders beside the working directory


def test_an_ultralytics_model_of_another_task_is_refused_in_one_line(tmp_path: Path) -> None:
    """A depth model (a DetectionModel subclass whose head is not a detector's): one line, exit 2, no file."""
    from ultralytics.nn.tasks import DepthModel

    ckpt = um.save_checkpoint(DepthModel("yolo26n-depth.yaml", verbose=False).eval(), tmp_path / "depth.pt", 64,
                              "depth")
    out = tmp_path / "depth.onnx"
    result = invoke(ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", "64", "-o", out, "--quiet")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "DepthModel" in line]
    assert len(lines) == 1 and "not exported in Ultralytics' layout" in lines[0], result.output
    assert not out.exists()


@pytest.mark.parametrize("image_hw", [(400, 640), (480, 360), (333, 517), (50, 1000), (320, 320)])
def test_infer_maps_boxes_back_to_image_pixels_as_ultralytics_scale_boxes(image_hw: tuple[int, int]) -> None:
    """runtime/infer.py's letterbox inverse against Ultralytics' own (ultralytics.utils.ops.scale_boxes)."""
    from ultralytics.utils.ops import scale_boxes

    from blocks_export.runtime import infer

    size = (320, 256)
    prep = infer.Preprocess(size=size, resize="letterbox")
    rng = np.random.default_rng(sum(image_hw))
    xy = rng.random((20, 2)) * np.array([size[1], size[0]]) * 0.8
    boxes = np.concatenate([xy, xy + rng.random((20, 2)) * 60 + 1], axis=1)  # input pixels
    ours = infer.to_image_pixels(boxes, image_hw, prep)
    theirs = scale_boxes(size, torch.from_numpy(boxes.copy()), image_hw).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # and the letterbox itself puts the image where that inverse expects it
    top, left, new_h, new_w = infer.letterbox_geometry(image_hw, size)
    img = np.zeros(image_hw + (3,), dtype=np.uint8) + 7
    boxed = infer.letterbox(img, size)
    inside = np.argwhere(boxed[..., 0] == 7)
    assert inside.min(axis=0).tolist() == [top, left] and inside.max(axis=0).tolist() == [top + new_h - 1,
                                                                                          left + new_w - 1]


def _smooth_images(folder: Path, shapes: list[tuple[int, int]], seed: int = 3) -> list[Path]:
    """Seeded images of ``shapes`` (H, W) with structure at every scale a centre crop can cut off: coarse noise
    enlarged (bicubic) plus fine noise, saved as PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(shapes):
        coarse = Image.fromarray((rng.random((h // 8 + 2, w // 8 + 2, 3)) * 255).astype(np.uint8))
        img = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float64) + rng.normal(0, 12, (h, w, 3))
        paths.append(folder / f"im{i}_{h}x{w}.png")
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def _infer_top1(capsys: pytest.CaptureFixture, onnx_path: Path, images: list[Path], *extra: str) -> dict:
    from blocks_export.runtime import infer

    assert infer.main([str(onnx_path), *map(str, images), "--json", "--provider", "cpu", *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    return {"resize": result["preprocess"]["resize"],
            "top1": {Path(p["source"]).name: p["topk"][0] for p in result["predictions"]}}


def test_classifier_top1_through_infer_is_ultralytics_own_on_non_square_images(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A YOLOv8n-cls with pasted blocks, exported by the CLI: runtime/infer.py preprocesses as Ultralytics'
    ClassificationPredictor does (shorter side resized, centre crop) and gives ``YOLO('model.pt')``'s top-1."""
    from ultralytics import YOLO

    imgsz = 64
    ckpt = um.save_checkpoint(um.task_model("classify", blocks=True, nc=10), tmp_path / "cls.pt", imgsz, "classify")
    out = tmp_path / "cls.onnx"
    result = invoke(ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", str(imgsz), "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    images = _smooth_images(tmp_path, [(120, 200), (200, 90), (77, 131), (96, 300), (301, 127), (150, 151),
                                       (100, 160), (90, 64)])
    yolo = YOLO(str(ckpt), task="classify")
    ref = {p.name: yolo.predict(str(p), imgsz=imgsz, verbose=False)[0].probs for p in images}
    # Close calls exempt: this random network moves probabilities by up to 0.08 for the one-grey-level differences
    # Pillow 13's pass order makes (ultralytics_models._calibrate_classifier); measured: 6 of 8 images clear (margins
    # 0.21-0.79), all 8 top-1s equal, letterbox changes 5 of the 6.
    clear = [n for n, probs in ref.items() if float(probs.top5conf[0] - probs.top5conf[1]) >= 0.15]
    assert len(clear) >= 5 and len({ref[n].top1 for n in clear}) >= 3, "top-1s must be clear and depend on the image"

    got = _infer_top1(capsys, out, images, "--topk", "1")
    assert got["resize"] == "crop"
    assert [n for n in clear if got["top1"][n]["index"] != ref[n].top1] == []

    # The comparison can fail: the letterbox infer.py used for classifiers before gives other answers.
    boxed = _infer_top1(capsys, out, images, "--topk", "1", "--resize", "letterbox")
    assert any(boxed["top1"][n]["index"] != ref[n].top1 for n in clear)


@pytest.mark.parametrize("image_hw,size", [((120, 200), 64), ((200, 90), 64), ((77, 131), 32), ((64, 100), 64),
                                           ((65, 64), 64), ((67, 64), 64), ((20, 30), 64), ((301, 127), 224),
                                           ((50, 80), (32, 48))])
def test_infer_centre_crop_is_ultralytics_classify_transforms(tmp_path: Path, image_hw: tuple[int, int],
                                                              size: int | tuple[int, int]) -> None:
    """runtime/infer.py's crop against Ultralytics' own classify_transforms (torchvision Resize + CenterCrop on a
    PIL image): the same geometry (odd excesses included: torchvision rounds half to even), pixels within one
    level, and equal where at most one axis is resampled (Pillow's pass order cannot matter there)."""
    from PIL import Image
    from ultralytics.data.augment import classify_transforms

    from blocks_export.runtime import infer

    hw = (size, size) if isinstance(size, int) else size
    img = np.asarray(Image.open(_smooth_images(tmp_path, [image_hw], seed=sum(image_hw))[0]))
    theirs = classify_transforms(hw)(Image.fromarray(img)).numpy() * 255
    ours = infer.preprocess_image(img, infer.Preprocess(size=hw, resize="crop")) * 255
    assert ours.shape == theirs.shape == (3, *hw)
    diff = np.abs(ours.astype(np.float64) - theirs)
    assert diff.max() <= 1 + 1e-3 and diff.mean() <= 0.3
    top, left, new_h, new_w = infer.crop_geometry(image_hw, hw)
    if new_h == image_hw[0] or new_w == image_hw[1]:
        assert diff.max() <= 1e-3


@pytest.mark.parametrize("own,expected", [(None, "crop"), ("letterbox", "crop"), ("stretch", "stretch")])
def test_infer_takes_ultralytics_classifiers_as_centre_crop(own: str | None, expected: str) -> None:
    """A classifier's Ultralytics metadata (`yolo export`'s, or ours, which said letterbox for every task before
    "crop" existed) means Ultralytics' classify preprocessing; a resize our metadata says otherwise is kept."""
    from blocks_export.runtime import infer

    metadata = {"author": "Ultralytics", "task": "classify", "imgsz": "[64, 64]", "names": "{0: 'a', 1: 'b'}"}
    if own is not None:
        metadata["blocks_export.preprocess"] = json.dumps({"resize": own})
    meta = infer.parse_meta(metadata)
    assert meta.task == "classify" and meta.labels == ["a", "b"] and meta.preprocess["resize"] == expected
    assert infer.make_preprocess(meta, [1, 3, 64, 64], None).resize == expected
    detector = infer.parse_meta({**metadata, "task": "detect"})
    assert detector.preprocess["resize"] == (own or "letterbox")


def test_int8_calibration_reads_images_as_the_written_graph_says(tmp_path: Path) -> None:
    """INT8 calibration of an Ultralytics detector letterboxes its (non-square) images as infer.py will for the
    written graph, not with the defaults of a model that carries no preprocessing of its own."""
    from PIL import Image

    from blocks_export.runtime.infer import make_preprocess, parse_meta

    ckpt = um.save_checkpoint(um.plain(), tmp_path / "plain.pt", 64)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (48, 96, 3), dtype=np.uint8), "RGB").save(calib / f"{i}.png")
    out = tmp_path / "plain_int8.onnx"
    result = invoke(ckpt, "--trust-pickle", "--imgsz", 64, "--int8", "--calib", calib, "-o", out, "--json",
                    "--quiet")
    assert result.exit_code in (0, 1), result.stdout + result.stderr  # the verdict is not what is tested here
    used = json.loads(result.stdout)["int8"]["preprocess"]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props} if out.exists() else None
    assert meta is not None, result.stdout
    written = make_preprocess(parse_meta(meta), [1, 3, 64, 64], None)
    assert used["resize"] == written.resize == "letterbox"
    assert (list(used["size"]), used["color"], used["scale"]) == (list(written.size), written.color, written.scale)


SPD_IMGSZ = 128


@pytest.fixture(scope="module")
def spd_dynamic(shared: Path) -> tuple[Path, Path, object, object]:
    """A YOLOv8n with pasted SPD-Conv and a CA lookalike, through ``inspect`` and a ``--dynamic`` export (CLI)."""
    ckpt = um.save_checkpoint(um.with_spd(), shared / "spd.pt", SPD_IMGSZ)
    seen = invoke("inspect", ckpt, "--trust-pickle", "--imgsz", SPD_IMGSZ)
    out = shared / "spd.onnx"
    result = invoke(ckpt, "--to", "onnx", "--trust-pickle", "--imgsz", SPD_IMGSZ, "--dynamic", "-o", out)
    return ckpt, out, seen, result


def test_pasted_spd_conv_is_converted_by_inspect_and_export_alike_and_left_alone_blocks_are_said(
        spd_dynamic: tuple[Path, Path, object, object]) -> None:
    """Ultralytics' ``fuse()`` runs before the rewrite: the pasted SPD-Conv reaches it as a conv with bias and no
    BatchNorm, and must be converted all the same. ``inspect`` (the unfused model) and the export list the same
    replaced blocks; the lookalike left alone is one line with its reason on both terminals. The ``--dynamic``
    graph is checked by this test's own onnxruntime run at another size, and Detect's anchors (rebuilt in the graph
    in export mode) are not reported as a constant."""
    ckpt, out, seen, result = spd_dynamic
    assert seen.exit_code == 0, seen.output
    inspected = sorted(line.split("|")[1].strip() for line in seen.stdout.splitlines() if line.startswith("REPLACED"))
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".report.json").read_text())
    replaced = {r["name"]: r for r in report["blocks"]["replaced"]}
    assert inspected == sorted(replaced) == ["model.1", "model.3"], (inspected, sorted(replaced))
    assert all(r["recognized_as"] == "SPDConv" and r["twin_class"] == "SPDConvExport" for r in replaced.values())
    assert all(name in result.stdout for name in replaced)  # the export's terminal table

    left = [line for line in seen.stdout.splitlines() if line.startswith("LEFT ALONE")]
    assert len(left) == 1 and "model.9.1" in left[0] and "computes something else" in left[0], seen.stdout
    export_left = [line for line in result.stdout.splitlines() if line.startswith("LEFT ALONE")]
    assert [line.split("|")[:3] for line in export_left] == [line.split("|")[:3] for line in left], result.stdout
    assert report["blocks"]["left_alone"][0]["name"] == "model.9.1"

    assert not [w for w in report["warnings"] if w.startswith("model.22")], report["warnings"]
    _own_parity(out, ckpt, [(1, 3, SPD_IMGSZ, SPD_IMGSZ), (2, 3, 96, 160)], rel_l2=1e-5)


def test_infer_feeds_a_dynamic_yolo_the_rectangle_predict_feeds_it_and_finds_its_boxes(
        spd_dynamic: tuple[Path, Path, object, object], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``YOLO('ours.onnx').predict`` letterboxes a non-square image into the smallest stride-aligned rectangle when
    the graph has dynamic H/W (its ``LetterBox(auto=True)``): runtime/infer.py feeds the same tensor shape and finds
    the same boxes, in the image's pixels. The 256x64 image is a 128x32 one with every pixel doubled, so the
    halving is exact in both resizers."""
    from PIL import Image
    from ultralytics import YOLO

    from blocks_export.runtime import infer

    _, out, _, result = spd_dynamic
    assert result.exit_code == 0, result.output
    small = (np.random.default_rng(5).random((32, 128, 3)) * 255).astype(np.uint8)
    image = tmp_path / "wide.png"
    Image.fromarray(small.repeat(2, axis=0).repeat(2, axis=1)).save(image)

    yolo = YOLO(str(out), task="detect")
    ref = _boxes(yolo.predict(str(image), imgsz=SPD_IMGSZ, verbose=False)[0])
    fed = []
    preprocess = yolo.predictor.preprocess
    yolo.predictor.preprocess = lambda im: fed.append(preprocess(im)) or fed[-1]
    yolo.predict(str(image), imgsz=SPD_IMGSZ, verbose=False)
    assert [tuple(t.shape) for t in fed] == [(1, 3, 32, 128)]  # not the 128x128 square

    sess = cpu_session(out.read_bytes())
    spec = infer.InputSpec(sess.get_inputs()[0].name, list(sess.get_inputs()[0].shape), sess.get_inputs()[0].type)
    meta = infer.parse_meta(sess.get_modelmeta().custom_metadata_map)
    batches, _ = infer.image_batches([str(image)], spec, meta, None, None)
    assert [b.feeds[spec.name].shape for b in batches] == [tuple(fed[0].shape)]
    np.testing.assert_allclose(batches[0].feeds[spec.name], fed[0].numpy(), atol=1e-6)  # the very same tensor

    assert infer.main([str(out), str(image), "--json", "--provider", "cpu"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["predictions"]
    dets = item["detections"]
    got = (np.array([d["box_xyxy"] for d in dets]).reshape(-1, 4), np.array([d["score"] for d in dets]),
           np.array([d["class"] for d in dets]))
    assert len(ref[0]) >= 5 and item["box_space"] == "image"
    assert not _unmatched(ref, got, 1e-4, px=0.1) and not _unmatched(got, ref, 1e-4, px=0.1)

    # Images of different shapes in one call: one run per rectangle, each image's boxes as when it ran alone.
    half = tmp_path / "half.png"  # 64x128: fed at that size (no resize), 168 anchors against the wide one's 84
    Image.fromarray(small[:, :64].repeat(2, axis=0).repeat(2, axis=1)).save(half)
    saved = tmp_path / "raw"
    assert infer.main([str(out), str(image), str(half), "--json", "--provider", "cpu", "--save-outputs",
                       str(saved)]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["runs"] == 2 and [p["source"] for p in both["predictions"]] == [str(image), str(half)]
    assert both["predictions"][0]["detections"] == dets
    assert both["outputs"][0]["shape"] == [2, 4 + 3, None]  # anchors differ between the two rectangles
    assert sorted(f.name for f in saved.glob("*.npy")) == ["output0_run0.npy", "output0_run1.npy"]
