"""Ultralytics YOLO models: recognised by class, prepared and written as ``yolo export format=onnx`` writes them.

The contract followed here was read from Ultralytics 8.4 (AGPL-3.0; nothing of it is copied or vendored):
- ``ultralytics/engine/exporter.py`` ``Exporter.__call__``: parameters frozen, ``model.eval().float().fuse()``
  (Conv+BN folded), every ``Detect`` (and subclasses Segment/Pose/OBB) head with ``export = True``,
  ``dynamic``, ``format``, ``max_det`` clamped to the anchor count and ``shape`` reset; ``Classify`` heads with
  ``export = True``; ``C2f.forward = C2f.forward_split``. Then the metadata dict (``description``, ``author``,
  ``date``, ``version``, ``license``, ``docs``, ``stride``, ``task``, ``head``, ``batch``, ``imgsz``, ``names``,
  ``args``, ``channels``, ``end2end``, plus ``kpt_shape`` for pose).
- ``Exporter.export_onnx``: input ``images``; outputs ``output0`` (+ ``output1``, the mask prototypes, for segment);
  dynamic axes ``images {0: batch, 2: height, 3: width}``, ``output0 {0: batch, 2: anchors}``, ``output1 {0: batch,
  2: mask_height, 3: mask_width}``; each metadata value written into ``metadata_props`` as ``str(value)``.
- ``ultralytics/nn/backends/base.py`` ``BaseBackend.apply_metadata`` (what ``YOLO('model.onnx')`` reads back):
  ``stride``/``batch``/``channels`` through ``int``, ``imgsz``/``names``/``kpt_shape``/``args``/``end2end`` through
  ``ast.literal_eval``; ``args['dynamic']`` decides whether the backend pads batches to the export batch.
- ``ultralytics/nn/modules/head.py`` ``Detect.forward``: in export mode the head returns only the decoded
  predictions [B, 4 + nc, anchors] (boxes as centre x, centre y, width, height in input pixels, then class
  probabilities), not the (predictions, raw maps) tuple of eval mode.

ultralytics itself is imported only by ``prepare``, i.e. only for a model whose unpickling already needed it;
recognising a model looks at class names and module names alone.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..runtime.parity import FLOOR_FACTOR

# Ultralytics' model classes (ultralytics/nn/tasks.py) and the task each one exports as.
TASK_OF_CLASS = {"DetectionModel": "detect", "SegmentationModel": "segment", "PoseModel": "pose",
                 "OBBModel": "obb", "ClassificationModel": "classify"}
INPUT_NAME = "images"
MAX_DET = 300  # Ultralytics' default ``max_det`` (ultralytics/cfg/default.yaml)
# Box agreement between PyTorch and ONNX (decoded, after NMS), per precision: matched boxes' IoU and
# |score difference|. fp16 scores come out of a sigmoid in fp16 (spacing 2^-11 near 1).
MIN_IOU = 0.99
SCORE_ATOL = {"fp32": 1e-4, "fp16": 1e-2}


@dataclass(frozen=True)
class UltralyticsInfo:
    """What the exported graph must say about the model (the metadata of ``Exporter.__call__``)."""

    task: str
    names: dict[int, str]
    stride: int
    imgsz: tuple[int, int]
    batch: int
    dynamic: bool
    half: bool
    channels: int
    head: str
    yaml_file: str = ""
    data: str = ""
    kpt_shape: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_names(self) -> list[str]:
        return ["output0", "output1"] if self.task == "segment" else ["output0"]

    def output_dims(self) -> dict[str, dict[int, str]]:
        """Dynamic axes of the outputs, as Ultralytics names them (``Exporter.export_onnx``)."""
        if not self.dynamic or self.task == "classify":
            return {"output0": {0: "batch"}} if self.dynamic else {}
        dims: dict[str, dict[int, str]] = {"output0": {0: "batch", 2: "anchors"}}
        if self.task == "segment":
            dims["output1"] = {0: "batch", 2: "mask_height", 3: "mask_width"}
        return dims

    def metadata(self) -> dict[str, Any]:
        name = self.yaml_file.rsplit("/", 1)[-1].rsplit(".", 1)[0].replace("yolo", "YOLO") or "YOLO"
        meta: dict[str, Any] = {
            "description": f"Ultralytics {name} model" + (f" trained on {self.data}" if self.data else ""),
            "author": "Ultralytics",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "version": self.extra.get("version", ""),
            "license": "AGPL-3.0 License (https://ultralytics.com/license)",
            "docs": "https://docs.ultralytics.com",
            "stride": self.stride,
            "task": self.task,
            "head": self.head,
            "batch": self.batch,
            "imgsz": list(self.imgsz),
            "names": dict(self.names),
            "args": {"batch": self.batch, "half": self.half, "dynamic": self.dynamic, "simplify": True,
                     "opset": self.extra.get("opset"), "nms": False},
            "channels": self.channels,
            "end2end": False,
        }
        if self.kpt_shape is not None:
            meta["kpt_shape"] = list(self.kpt_shape)
        if "kpt_names" in self.extra:
            meta["kpt_names"] = self.extra["kpt_names"]
        return meta


def task_of(model: Any) -> str | None:
    """The Ultralytics task of ``model`` ("detect", ...) or None for a model that is not Ultralytics': by its classes'
    names and modules only, so that nothing is imported for a model that is not Ultralytics'.

    The first Ultralytics class of the model's MRO decides (a user's own subclass of ``DetectionModel`` is a
    detector). An Ultralytics model of another kind (RT-DETR, YOLO-World, YOLOE, semantic segmentation, depth) is
    refused in one line: exporting its raw eval outputs would be a graph neither ``yolo export`` nor
    ``YOLO('model.onnx')`` agrees with.
    """
    for cls in type(model).__mro__:
        if not cls.__module__.startswith("ultralytics."):
            continue
        if cls.__name__ in TASK_OF_CLASS:
            return TASK_OF_CLASS[cls.__name__]
        if any(c.__name__ == "BaseModel" and c.__module__.startswith("ultralytics.") for c in cls.__mro__):
            from .errors import InputError

            raise InputError(
                f"{type(model).__name__}: an Ultralytics {cls.__name__} is not exported in Ultralytics' layout here "
                f"(supported: {', '.join(TASK_OF_CLASS)}); without custom blocks, use `yolo export format=onnx`")
        return None
    return None


def _names(model: Any, nc: int | None) -> dict[int, str]:
    names = getattr(model, "names", None)
    if isinstance(names, dict) and names:
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, list | tuple) and names:
        return dict(enumerate(map(str, names)))
    return {i: f"class{i}" for i in range(nc or 0)}


def prepare(model: Any, *, imgsz: tuple[int, int], batch: int, dynamic: bool,
            half: bool) -> tuple[Any, UltralyticsInfo]:
    """A copy of ``model`` in Ultralytics' export form (fused, head in export mode) and its metadata.

    The copy is what gets exported AND what the export is verified against: it is the model ``yolo export``
    traces, so parity holds against the same function Ultralytics' own ONNX computes.
    """
    import torch
    from ultralytics import __version__
    from ultralytics.nn.modules import C2f, Classify, Detect

    task = task_of(model)
    if task is None:
        raise ValueError(f"{type(model).__name__} is not an Ultralytics model")
    model = copy.deepcopy(model).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model = model.fuse(verbose=False)
    head = model.model[-1]
    stride = getattr(model, "stride", None)
    strides = [int(s) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else [32]
    anchors = sum((imgsz[0] // s) * (imgsz[1] // s) for s in strides)
    for m in model.modules():
        if isinstance(m, Classify):
            setattr(m, "export", True)  # noqa: B010 (ultralytics' attribute types do not declare these values)
            setattr(m, "format", "onnx")  # noqa: B010
        elif isinstance(m, Detect):
            setattr(m, "export", True)  # noqa: B010
            setattr(m, "format", "onnx")  # noqa: B010
            m.dynamic = dynamic
            m.max_det = min(MAX_DET, anchors)
            m.shape = None  # its anchor grid is cached per input shape
            if getattr(m, "end2end", False):  # the NMS-free branch exports as (B, max_det, 6): not handled here
                m.end2end = False
        elif isinstance(m, C2f) and hasattr(m, "forward_split"):
            setattr(m, "forward", m.forward_split)  # noqa: B010 (Split instead of chunk, as the exporter does for ONNX)
    yaml = getattr(model, "yaml", None) or {}
    args = getattr(model, "args", None)
    info = UltralyticsInfo(
        task=task, names=_names(model, getattr(head, "nc", None)), stride=max(strides), imgsz=(int(imgsz[0]), int(imgsz[1])),
        batch=batch, dynamic=dynamic, half=half, channels=int(yaml.get("channels", 3)) if isinstance(yaml, dict)
        else 3, head=type(head).__name__,
        yaml_file=str(yaml.get("yaml_file", "")) if isinstance(yaml, dict) else "",
        data=str(args.get("data", "")) if isinstance(args, dict) else "",
        kpt_shape=tuple(head.kpt_shape) if task == "pose" and hasattr(head, "kpt_shape") else None,
        extra={"version": __version__, **({"kpt_names": model.kpt_names}
                                          if task == "pose" and hasattr(model, "kpt_names") else {})})
    return model, info


def _rename(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for n in graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
    for v in (*graph.input, *graph.output, *graph.value_info):
        if v.name == old:
            v.name = new


def name_io(exported: Any, info: UltralyticsInfo) -> Any:
    """``exported`` (an ``onnx_export.OnnxExport``) with Ultralytics' input and output names."""
    graph = exported.model.graph
    names = info.output_names
    if len(graph.output) != len(names):
        raise ValueError(f"the {info.task} model exports {len(graph.output)} outputs, Ultralytics' layout has "
                         f"{len(names)} ({', '.join(names)})")
    _rename(graph, graph.input[0].name, INPUT_NAME)
    for out, name in zip(list(graph.output), names, strict=True):
        _rename(graph, out.name, name)
    dynamic = {INPUT_NAME: next(iter(exported.dynamic.values()))} if exported.dynamic else exported.dynamic
    return replace(exported, input_name=INPUT_NAME, output_names=list(names), dynamic=dynamic)


def runtime_metadata(info: UltralyticsInfo) -> dict[str, str]:
    """The ``blocks_export.*`` entries runtime/infer.py reads: class names, task and Ultralytics' preprocessing
    (RGB, /255; the LetterBox of its detection predictors, the shorter-side resize and centre crop of
    classify_transforms for a classifier: ultralytics/data/augment.py, ultralytics/models/yolo/classify/predict.py).
    INT8 calibration reads its images with the same entries."""
    from blocks_export.runtime.infer import encode_meta

    resize = "crop" if info.task == "classify" else "letterbox"
    own: dict[str, Any] = {"labels": [info.names[k] for k in sorted(info.names)],
                           "preprocess": {"size": list(info.imgsz), "resize": resize, "color": "RGB",
                                          "scale": 1 / 255}}
    if info.task in ("detect", "classify"):
        own["task"] = info.task
    return encode_meta(own)


def finish_graph(model: Any, info: UltralyticsInfo, opset: int) -> None:
    """Ultralytics' dimension names and metadata keys on the final graph (in place)."""
    graph = model.graph
    dims = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}} if info.dynamic else {}
    dims.update(info.output_dims())
    for v in (*graph.input, *graph.output):
        for axis, name in dims.get(v.name, {}).items():
            d = v.type.tensor_type.shape.dim
            if axis < len(d) and not d[axis].HasField("dim_value"):
                d[axis].dim_param = name
    meta: dict[str, Any] = replace(info, extra={**info.extra, "opset": opset}).metadata()
    meta = {**meta, **runtime_metadata(info)}
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for k, v in [*keep, *((k, str(v)) for k, v in meta.items())]:  # str(): what apply_metadata literal_evals
        model.metadata_props.add(key=k, value=v)
    # ONNX Runtime builds up to 1.18 read IR version 10 at most; Ultralytics caps it the same way.
    model.ir_version = min(model.ir_version, 10)


@dataclass(frozen=True)
class UltralyticsAdapter:
    """The export's ``adapters.ModelAdapter`` for an Ultralytics model: Ultralytics' IO names and metadata, its
    runtime preprocessing, and, for a detector, decoded boxes checked against PyTorch's on the same images."""

    info: UltralyticsInfo
    name: str = "ultralytics"

    def name_io(self, exported: Any) -> Any:
        return name_io(exported, self.info)

    def finish_graph(self, model: Any, opset: int) -> None:
        finish_graph(model, self.info, opset)

    def runtime_metadata(self, model_info: Any, shape: tuple[int, ...]) -> dict[str, str]:
        return runtime_metadata(self.info)

    def classes(self, model_info: Any) -> tuple[list[str] | None, str | None]:
        return [str(self.info.names[k]) for k in sorted(self.info.names)], str(self.info.task)

    def check(self, original: Any, graph: Any, shape: tuple[int, ...], *, precision: str,
              fp16_io: bool) -> BoxAgreement | None:
        if self.info.task != "detect":
            return None
        return box_agreement(original, graph, sample_images(shape), precision=precision, fp16_io=fp16_io)


# --- detections in the user's terms -------------------------------------------------------------------------

def _decoder() -> Any:
    from blocks_export.runtime import infer

    return infer


TOP_K = 20  # candidates per image compared when no box clears the confidence threshold


@dataclass
class BoxAgreement:
    """PyTorch vs ONNX decoded boxes on the same images (the decode of ``runtime/infer.py``).

    ``compared``: "boxes" (anchors whose PyTorch score clears the confidence threshold), "candidates" (no box
    cleared it on any image: the ``TOP_K`` best-scoring anchors per image, whatever their score) or "nothing"
    (no anchor at all: not checked, never PASSED). The limits are the rule's (``MIN_IOU``, ``SCORE_ATOL``) or, when
    looser, ``FLOOR_FACTOR`` x the model's own noise on the same anchors (PyTorch's fp32 run, and for fp16 its half
    run, against its float64 run): the box floor."""

    precision: str
    images: int = 0
    reference_boxes: int = 0
    matched: int = 0
    min_iou: float = 1.0
    max_score_diff: float = 0.0
    problems: list[str] = field(default_factory=list)
    compared: str = "boxes"
    floor_min_iou: float | None = None  # the model's own: worst IoU of its fp32/fp16 boxes with its float64 ones
    floor_score_diff: float | None = None  # the model's own: largest score difference from its float64 run
    reference: str = "fp32"  # what the boxes were compared with ("float64" where the float64 run exists)

    def __bool__(self) -> bool:
        return not self.problems

    @property
    def checked(self) -> bool:
        return self.compared != "nothing"

    @property
    def iou_limit(self) -> float:
        if self.floor_min_iou is None:
            return MIN_IOU
        return min(MIN_IOU, 1.0 - FLOOR_FACTOR * (1.0 - self.floor_min_iou))

    @property
    def score_limit(self) -> float:
        rule = SCORE_ATOL[self.precision]
        return rule if self.floor_score_diff is None else max(rule, FLOOR_FACTOR * self.floor_score_diff)

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "passed": bool(self) if self.checked else None, "images": self.images,
                "reference_boxes": self.reference_boxes, "matched": self.matched,
                "min_iou": round(self.min_iou, 6), "max_score_diff": float(f"{self.max_score_diff:.3g}"),
                "rule": {"min_iou": MIN_IOU, "score_atol": SCORE_ATOL[self.precision]}, "problems": self.problems,
                "compared": self.compared, "reference": self.reference,
                "floor": {"min_iou": self.floor_min_iou, "score_diff": self.floor_score_diff,
                          "floor_factor": FLOOR_FACTOR},
                "limits": {"min_iou": round(self.iou_limit, 6), "score_atol": float(f"{self.score_limit:.3g}")}}

    def line(self) -> str:
        if not self.checked:
            return f"NOT CHECKED | boxes | no anchor to compare on {self.images} image(s)"
        verdict = "PASSED" if self else "FAILED"
        what = "agree" if self.compared == "boxes" else \
            f"top-{TOP_K} candidates agree (no box above the confidence threshold)"
        floor = f" (box floor: {self.floor_score_diff:.2g})" if self.floor_score_diff is not None else ""
        return (f"{verdict} | boxes | {self.matched}/{self.reference_boxes} {what} on {self.images} image(s) | "
                f"min IoU {self.min_iou:.4f} | max score diff {self.max_score_diff:.2g} <= {self.score_limit:.2g}"
                f"{floor}" + (f" | {self.problems[0]}" if self.problems else ""))


def _anchors(ref: np.ndarray, threshold: float | None) -> list[np.ndarray]:
    """Per image of a [B, 4 + nc, anchors] output: the anchors whose best score clears ``threshold``, or, with
    ``threshold`` None, the ``TOP_K`` best-scoring anchors whatever their score."""
    out = []
    for r in ref:
        top = r[4:].max(axis=0)
        out.append(np.nonzero(top > threshold)[0] if threshold is not None else np.argsort(-top)[:TOP_K])
    return out


def _box_pairs(ref: np.ndarray, got: np.ndarray, anchors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """IoU and largest class-score difference of ``got``'s box with ``ref``'s at each anchor (all images)."""
    dec = _decoder()
    ious, diffs = [], []
    for r, g, idx in zip(ref, got, anchors, strict=True):
        if not idx.size:
            continue
        rb, gb = dec.xywh_to_xyxy(r[:4, idx].T), dec.xywh_to_xyxy(g[:4, idx].T)
        ious.append(np.array([dec.box_iou(rb[i:i + 1], gb[i:i + 1])[0, 0] for i in range(idx.size)]))
        diffs.append(np.abs(g[4:, idx] - r[4:, idx]).max(axis=0))
    if not ious:
        return np.ones(0), np.zeros(0)
    return np.concatenate(ious), np.concatenate(diffs)


def match_detections(ref: Any, got: Any, precision: str, agreement: BoxAgreement,
                     anchors: list[np.ndarray] | None = None) -> None:
    """Compare two [B, 4 + nc, anchors] detect outputs box by box, before NMS.

    ``anchors`` (per image; default: every anchor whose best reference score is clearly above the confidence
    threshold, by more than the score tolerance) are the reference boxes; the ONNX box at the same anchor must
    have the same class (unless the two best classes are within the tolerance), IoU >= the IoU limit and a score
    within the score limit (``BoxAgreement``: the rule, or the box floor where looser). Comparing after NMS would
    let a 1e-4 difference flip one suppression and cascade; NMS is the same numpy code on both sides.
    """
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    atol, min_iou = agreement.score_limit, agreement.iou_limit
    if anchors is None:
        anchors = _anchors(ref, _decoder().CONF_THRESHOLD + SCORE_ATOL[precision])
    iou, diff = _box_pairs(ref, got, anchors)
    agreement.reference_boxes += int(iou.size)
    if not iou.size:
        return
    same = []
    for r, g, idx in zip(ref, got, anchors, strict=True):
        if not idx.size:
            continue
        scores = r[4:, idx]
        best = scores.argmax(axis=0)
        top = scores.max(axis=0)
        second = np.sort(scores, axis=0)[-2] if scores.shape[0] > 1 else np.full(idx.size, -np.inf)
        same.append((g[4:, idx].argmax(axis=0) == best) | (top - second <= atol))
    same_class = np.concatenate(same)
    ok = (iou >= min_iou) & (diff <= atol) & same_class
    agreement.matched += int(ok.sum())
    agreement.min_iou = min(agreement.min_iou, float(iou.min()))
    agreement.max_score_diff = max(agreement.max_score_diff, float(diff.max()))
    if not same_class.all():
        agreement.problems.append(f"{int((~same_class).sum())} box(es) change class")
    if agreement.min_iou < min_iou:
        agreement.problems.append(f"matched boxes IoU {agreement.min_iou:.4f} < {min_iou:.4f}")
    if agreement.max_score_diff > atol:
        agreement.problems.append(f"score diff {agreement.max_score_diff:.2g} > {atol:.2g}")


def _detect_output(model: Any, x: Any) -> np.ndarray:
    out = model(x)
    out = out[0] if isinstance(out, list | tuple) else out
    return out.detach().double().numpy()


def box_agreement(reference: Any, onnx_model: Any, images: list[Any], *, precision: str,
                  fp16_io: bool = False) -> BoxAgreement:
    """Decode both models' detect output on ``images`` ([1, 3, H, W] float tensors in [0, 1]) and compare.

    The box floor: on the same anchors, PyTorch's own fp32 run (and for fp16 its half run) against its float64 run
    (``inputs.float64_copy``, under float64 as the default dtype), where that runs; the ONNX boxes are then
    compared with the float64 boxes."""
    import torch

    from .inputs import float64_copy, float64_default, half_copy
    from .runners import open_runner

    runner = open_runner("onnxruntime", onnx_model)
    name = runner.input_names[0]
    agreement = BoxAgreement(precision)
    model64, _ = float64_copy(reference)
    model16 = half_copy(reference)[0] if precision == "fp16" and model64 is not None else None
    refs, gots, own = [], [], []
    for x in images:
        feed = x.numpy().astype(np.float16 if fp16_io else np.float32)
        xt = torch.from_numpy(feed.astype(np.float32))
        with torch.no_grad():
            fp32 = _detect_output(reference, xt)
            exact = None
            if model64 is not None:
                try:
                    with float64_default():
                        exact = _detect_output(model64, xt.double())
                except Exception:  # noqa: BLE001 (no float64 run: the fp32 boxes are the reference, no floor)
                    model64 = None
            noisy = [fp32]
            if model16 is not None and exact is not None:
                with contextlib.suppress(Exception):
                    noisy.append(_detect_output(model16, xt.half()))
        refs.append(exact if exact is not None else fp32)
        own.append(noisy if exact is not None else [])
        gots.append(np.asarray(runner.run({name: feed})[0], dtype=np.float64))
        agreement.images += 1
    ref_all = np.concatenate(refs)
    anchors = _anchors(ref_all, _decoder().CONF_THRESHOLD + SCORE_ATOL[precision])
    if not sum(a.size for a in anchors):
        anchors = _anchors(ref_all, None)
        agreement.compared = "candidates" if sum(a.size for a in anchors) else "nothing"
    if model64 is not None and all(own):
        agreement.reference = "float64"
        ious, diffs = zip(*(_box_pairs(ref_all, np.concatenate([o[k] for o in own]), anchors)
                            for k in range(min(len(o) for o in own))), strict=True)
        iou, diff = np.concatenate(ious), np.concatenate(diffs)
        if iou.size and np.isfinite(iou).all() and np.isfinite(diff).all():
            agreement.floor_min_iou, agreement.floor_score_diff = float(iou.min()), float(diff.max())
    match_detections(ref_all, np.concatenate(gots), precision, agreement, anchors)
    return agreement


def sample_images(shape: tuple[int, ...], count: int = 2, seed: int = 0) -> list[Any]:
    """Image-like inputs with structure (smooth gradients and rectangles), deterministic: a detector's boxes on
    uniform noise say little."""
    import torch

    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(count):
        img = torch.stack([(xx * float(torch.rand(1, generator=g)) + yy * float(torch.rand(1, generator=g))) / 2
                           for _ in range(c)])
        for _ in range(6):
            y0, x0 = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
            y1, x1 = y0 + h // 4 + int(torch.randint(0, h // 4, (1,), generator=g)), x0 + w // 4
            img[:, y0:y1, x0:x1] = torch.rand(c, 1, 1, generator=g)
        img += 0.05 * torch.rand(img.shape, generator=g)
        out.append(img.clamp(0, 1).expand(n, c, h, w).contiguous())
    return out


__all__ = ["BoxAgreement", "INPUT_NAME", "TASK_OF_CLASS", "UltralyticsAdapter", "UltralyticsInfo", "box_agreement",
           "finish_graph",
           "match_detections", "name_io", "prepare", "runtime_metadata", "sample_images", "task_of"]
