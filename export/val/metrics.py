"""The user's metric: top-1 / top-5 for classifiers, COCO mAP50-95 and mAP50 for detectors.

Detection boxes come from ``runtime/infer.py``'s own decoding and NMS of the detect layout ([B, 4 + nc, anchors]),
with the settings ``yolo val`` uses for mAP rather than predict's: confidence 0.001, NMS IoU 0.7, at most 300 boxes
per image, every class over the threshold a candidate (ultralytics/cfg/default.yaml ``conf``: "predict=0.25,
val=0.001", ``iou: 0.7``, ``max_det: 300``; ultralytics/models/yolo/detect/val.py ``postprocess``:
``multi_label=True``). Boxes are mapped back to the original image's pixels (the letterbox undone, as Ultralytics'
``scale_boxes``) and scored against the labels there by faster-coco-eval (the COCO evaluator Ultralytics' own
validator calls for COCO-format data), with ``maxDets`` raised to the 300 boxes NMS keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, RuntimeMissing
from .data import ClassifyData, DetectData

VAL_CONF = 0.001
VAL_IOU = 0.7
VAL_MAX_DET = 300
INSTALL_HINT = "pip install 'blocks-export[val]'"


def _coco() -> Any:
    try:
        import faster_coco_eval
    except ImportError:
        raise RuntimeMissing(f"detection mAP needs faster-coco-eval: {INSTALL_HINT}") from None
    return faster_coco_eval


def check_evaluator() -> None:
    """Raise ``RuntimeMissing`` (one line, exit 3) before any work when the COCO evaluator is not installed."""
    _coco()


def coco_map(images: Sequence[tuple[int, int]], truth: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
             nc: int, max_det: int = VAL_MAX_DET) -> dict[str, float]:
    """COCO box mAP of ``predictions`` against ``truth`` with faster-coco-eval.

    ``images``: (height, width) per image. ``truth[i]``: [K, 5] class, x1, y1, x2, y2 in that image's pixels.
    ``predictions[i]``: [M, 6] x1, y1, x2, y2, score, class. Returns ``map50_95`` (AP over IoU 0.50:0.05:0.95,
    COCO's 101-point interpolation) and ``map50``.
    """
    fce = _coco()
    gt = fce.COCO()
    annotations: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for i, (boxes, preds) in enumerate(zip(truth, predictions, strict=True)):
        for cls, x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 5):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls),
                                "bbox": [float(x1), float(y1), float(w), float(h)], "area": float(w * h),
                                "iscrowd": 0})
        for x1, y1, x2, y2, score, cls in np.asarray(preds, dtype=np.float64).reshape(-1, 6):
            dets.append({"image_id": i + 1, "category_id": int(cls), "score": float(score),
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    gt.dataset = {"images": [{"id": i + 1, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(images)],
                  "annotations": annotations, "categories": [{"id": c} for c in range(nc)]}
    gt.createIndex()
    if not annotations:
        raise InputError("the data holds no labelled objects; nothing to measure mAP on")
    result = gt.loadRes(dets)
    evaluator = fce.COCOeval_faster(gt, result, iouType="bbox", print_function=lambda *a, **k: None)
    evaluator.params.maxDets = [1, 10, max_det]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    return {"map50_95": max(float(stats["AP_all"]), 0.0), "map50": max(float(stats["AP_50"]), 0.0)}


def yolo_boxes(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """[K, 5] class, cx, cy, w, h normalised -> [K, 5] class, x1, y1, x2, y2 in the image's pixels."""
    h, w = image_hw
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    out = np.empty_like(b)
    out[:, 0] = b[:, 0]
    out[:, 1], out[:, 3] = (b[:, 1] - b[:, 3] / 2) * w, (b[:, 1] + b[:, 3] / 2) * w
    out[:, 2], out[:, 4] = (b[:, 2] - b[:, 4] / 2) * h, (b[:, 2] + b[:, 4] / 2) * h
    return out


@dataclass
class ClassifyMetric:
    """Top-1 and top-5 accuracy, accumulated over batches of scores [B, nc]."""

    nc: int
    seen: int = 0
    top1_hits: int = 0
    top5_hits: int = 0
    name: str = "top1"

    def update(self, outputs: list[np.ndarray], labels: Sequence[int], **_: Any) -> None:
        scores = self.check(outputs)
        order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")
        truth = np.asarray(labels)[:, None]
        self.top1_hits += int((order[:, :1] == truth).any(axis=1).sum())
        self.top5_hits += int((order[:, :5] == truth).any(axis=1).sum())
        self.seen += len(labels)

    def check(self, outputs: Sequence[Any]) -> np.ndarray:
        """The class scores [N, classes] of ``outputs``; ``InputError`` where they are not."""
        scores = np.asarray(outputs[0])
        if scores.ndim != 2:
            raise InputError(f"the model's first output has shape {list(scores.shape)}, not class scores [N, classes]; "
                             "a classification folder needs a classifier")
        if scores.shape[1] < self.nc:
            raise InputError(f"the data has {self.nc} classes but the model scores {scores.shape[1]}; give the "
                             "model's own classes")
        return scores

    def result(self) -> dict[str, float | None]:
        n = max(self.seen, 1)
        return {"top1": self.top1_hits / n, "top5": self.top5_hits / n if self.nc > 5 else None}


@dataclass
class DetectMetric:
    """Decoded boxes per image, scored at the end by ``coco_map``."""

    nc: int
    images: list[tuple[int, int]] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)
    predictions: list[np.ndarray] = field(default_factory=list)
    name: str = "map50_95"

    def update(self, outputs: list[np.ndarray], labels: Sequence[np.ndarray], *, image_hw: Sequence[tuple[int, int]],
               prep: Any) -> None:
        from blocks_export.runtime import infer

        out = self.check(outputs)
        for dets, boxes, hw in zip(infer.detections(out, conf=VAL_CONF, iou=VAL_IOU, max_det=VAL_MAX_DET,
                                                    multi_label=True), labels, image_hw, strict=True):
            xyxy = np.array([d[0] for d in dets], dtype=np.float64).reshape(-1, 4)
            if len(xyxy):
                xyxy = infer.to_image_pixels(xyxy, hw, prep)
            scores = np.array([[d[1], d[2]] for d in dets], dtype=np.float64).reshape(-1, 2)
            self.predictions.append(np.concatenate([xyxy, scores], axis=1))
            self.truth.append(yolo_boxes(boxes, hw))
            self.images.append((int(hw[0]), int(hw[1])))

    def check(self, outputs: Sequence[Any]) -> np.ndarray:
        """The detect-layout output [N, 4 + classes, anchors] of ``outputs``; ``InputError`` where it is not."""
        from blocks_export.runtime import infer

        out = np.asarray(outputs[0])
        if not infer.is_detect_layout(out, None) or out.shape[1] - 4 < self.nc:
            raise InputError(f"the model's first output has shape {list(out.shape)}, not the detect layout "
                             f"[N, 4 + {self.nc} classes, anchors]; a detection set needs a YOLO detect model")
        return out

    def result(self) -> dict[str, float | None]:
        return dict(coco_map(self.images, self.truth, self.predictions, self.nc))


Metric = ClassifyMetric | DetectMetric


def metric_for(data: ClassifyData | DetectData) -> Metric:
    return ClassifyMetric(len(data.names)) if isinstance(data, ClassifyData) else DetectMetric(len(data.names))


__all__ = ["ClassifyMetric", "DetectMetric", "VAL_CONF", "VAL_IOU", "VAL_MAX_DET", "check_evaluator", "coco_map",
           "metric_for", "yolo_boxes"]
