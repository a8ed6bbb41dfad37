"""The detection metric against values worked out by hand from COCO's definition, and the decode path that feeds it
(the runtime's detect-layout decoding, the letterbox undone) on outputs built in the test.

COCO AP (cocoapi PythonAPI/pycocotools/cocoeval.py, ``accumulate``): per IoU threshold t in 0.50, 0.55, ..., 0.95 a
detection matches an unmatched ground truth of its class with IoU >= t, best score first; precision is made
monotone from the right and read at the 101 recall points 0.00, 0.01, ..., 1.00 (0 where recall never gets
there); AP is their mean, mAP50-95 the mean over the ten thresholds (and classes)."""

from __future__ import annotations

import numpy as np
import pytest

from blocks_export.export.val import coco_map
from blocks_export.export.val.metrics import DetectMetric, yolo_boxes
from blocks_export.runtime import infer


def _boxes(*rows: tuple[float, ...]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


IMAGES = [(200, 300), (240, 240)]
TRUTH = [_boxes((0, 10, 20, 110, 120), (1, 150, 30, 250, 90)), _boxes((0, 40, 40, 100, 200))]


def _perfect(score: float = 0.9) -> list[np.ndarray]:
    return [np.concatenate([t[:, 1:], np.full((len(t), 1), score), t[:, :1]], axis=1) for t in TRUTH]


def test_perfect_predictions_score_one() -> None:
    assert coco_map(IMAGES, TRUTH, _perfect(), nc=2) == {"map50_95": 1.0, "map50": 1.0}


def test_no_prediction_scores_zero() -> None:
    assert coco_map(IMAGES, TRUTH, [np.zeros((0, 6))] * 2, nc=2) == {"map50_95": 0.0, "map50": 0.0}


def test_one_missed_box_of_three() -> None:
    # Class 0 has three boxes, two found exactly. Recall reaches 2/3 at precision 1 and never more: the recall
    # points 0.00 .. 0.66 read precision 1 (67 of them), 0.67 .. 1.00 read 0. AP = 67/101 at every IoU threshold.
    images = [(100, 100)] * 3
    truth = [_boxes((0, 10, 10, 50, 50)), _boxes((0, 20, 20, 80, 60)), _boxes((0, 5, 30, 45, 90))]
    preds = [_boxes((10, 10, 50, 50, 0.9, 0)), _boxes((20, 20, 80, 60, 0.8, 0)), np.zeros((0, 6))]
    got = coco_map(images, truth, preds, nc=1)
    assert got["map50"] == pytest.approx(67 / 101, abs=1e-9)
    assert got["map50_95"] == pytest.approx(67 / 101, abs=1e-9)


def test_a_loose_box_counts_only_up_to_its_iou() -> None:
    # Ground truth 100 x 100, prediction 100 x 77.5 inside it: IoU 0.775. It matches at 0.50 .. 0.75 (six
    # thresholds: AP 1) and misses at 0.80 .. 0.95 (four: the box is a false positive, recall 0, AP 0).
    got = coco_map([(200, 200)], [_boxes((0, 0, 0, 100, 100))], [_boxes((0, 0, 100, 77.5, 0.9, 0))], nc=1)
    assert got == {"map50_95": pytest.approx(0.6, abs=1e-9), "map50": 1.0}


def test_a_false_positive_between_two_hits() -> None:
    # Two boxes; detections by score: hit (P 1, R 1/2), miss (P 1/2), hit (P 2/3, R 1). Made monotone from the
    # right, precision is 1 up to recall 1/2 and 2/3 above: recall points 0.00 .. 0.50 (51) read 1, 0.51 .. 1.00
    # (50) read 2/3. AP = (51 + 50 * 2/3) / 101 at every threshold (the hits are exact, the miss overlaps nothing).
    truth = [_boxes((0, 0, 0, 40, 40), (0, 60, 60, 100, 100))]
    preds = [_boxes((0, 0, 40, 40, 0.9, 0), (0, 60, 30, 90, 0.8, 0), (60, 60, 100, 100, 0.7, 0))]
    got = coco_map([(100, 100)], truth, preds, nc=1)
    expected = (51 + 50 * 2 / 3) / 101
    assert got["map50"] == pytest.approx(expected, abs=1e-9)
    assert got["map50_95"] == pytest.approx(expected, abs=1e-9)


def test_classes_are_averaged_and_a_wrong_class_is_a_miss() -> None:
    # Class 1's only box is predicted as class 0 (score 0.8). Class 0 (two boxes) then ranks hit 0.9, false
    # positive 0.8, hit 0.7: the case above, AP (51 + 50 * 2/3) / 101. Class 1 has no detection: AP 0. The mean
    # over the two classes is half of class 0's.
    preds = [_boxes((10, 20, 110, 120, 0.9, 0), (150, 30, 250, 90, 0.8, 0)), _boxes((40, 40, 100, 200, 0.7, 0))]
    got = coco_map(IMAGES, TRUTH, preds, nc=2)
    expected = (51 + 50 * 2 / 3) / 101 / 2
    assert got == {"map50_95": pytest.approx(expected, abs=1e-9), "map50": pytest.approx(expected, abs=1e-9)}


def _letterbox_output(truth_xyxy: np.ndarray, image_hw: tuple[int, int], prep: infer.Preprocess, nc: int,
                      anchors: int = 64) -> np.ndarray:
    """A detect-layout output [1, 4 + nc, anchors] holding the boxes ``truth_xyxy`` (class, x1, y1, x2, y2 in image
    pixels) as the model would see them (letterboxed into ``prep.size``), score 0.9, every other anchor empty."""
    top, left, new_h, new_w = infer.letterbox_geometry(image_hw, prep.size)
    sy, sx = new_h / image_hw[0], new_w / image_hw[1]
    out = np.zeros((1, 4 + nc, anchors), dtype=np.float32)
    for a, (cls, x1, y1, x2, y2) in enumerate(truth_xyxy):
        bx1, by1, bx2, by2 = x1 * sx + left, y1 * sy + top, x2 * sx + left, y2 * sy + top
        out[0, :4, a] = [(bx1 + bx2) / 2, (by1 + by2) / 2, bx2 - bx1, by2 - by1]
        out[0, 4 + int(cls), a] = 0.9
    return out


def test_decoded_boxes_are_scored_in_the_image_s_own_pixels() -> None:
    """YOLO labels of a 300 x 200 image; the model sees it letterboxed into 160 x 160. Boxes put where the labels
    are in the letterboxed input come back at the labels (mAP 1); shifted by 10 % of their width in the input they
    lose the strict thresholds."""
    prep = infer.Preprocess(size=(160, 160), resize="letterbox")
    labels = _boxes((0, 0.30, 0.40, 0.20, 0.30), (2, 0.70, 0.55, 0.25, 0.50))
    hw = (200, 300)
    truth = yolo_boxes(labels, hw)
    assert truth[0].tolist() == pytest.approx([0, 60, 50, 120, 110])
    exact = DetectMetric(nc=3)
    exact.update([_letterbox_output(truth, hw, prep, nc=3)], [labels], image_hw=[hw], prep=prep)
    assert exact.result() == {"map50_95": pytest.approx(1.0), "map50": pytest.approx(1.0)}
    shifted = _letterbox_output(truth, hw, prep, nc=3)
    shifted[0, 0, :2] += 0.1 * shifted[0, 2, :2]  # IoU of a box moved by 10 % of its width: 0.9 / 1.1 = 0.818
    moved = DetectMetric(nc=3)
    moved.update([shifted], [labels], image_hw=[hw], prep=prep)
    got = moved.result()
    assert got["map50"] == pytest.approx(1.0) and got["map50_95"] == pytest.approx(0.7)  # 0.50 .. 0.80 match


def test_val_decoding_keeps_every_class_over_the_threshold() -> None:
    """Ultralytics' validator ranks every class of an anchor over 0.001 (multi-label); predict keeps the best."""
    out = np.zeros((1, 6, 16), dtype=np.float32)
    out[0, :4, 0] = [50, 50, 20, 20]
    out[0, 4:, 0] = [0.6, 0.3]
    (multi,) = infer.detections(out, conf=0.001, multi_label=True)
    (single,) = infer.detections(out, conf=0.001)
    assert sorted((round(s, 3), c) for _, s, c in multi) == [(0.3, 1), (0.6, 0)]
    assert [(round(s, 3), c) for _, s, c in single] == [(0.6, 0)]


def test_nms_limit_is_the_prefix_of_the_full_result() -> None:
    rng = np.random.default_rng(0)
    xy = rng.random((200, 2)) * 100
    boxes = np.concatenate([xy, xy + rng.random((200, 2)) * 30 + 1], axis=1)
    scores = rng.random(200)
    full = infer.nms(boxes, scores, 0.5)
    assert len(full) > 20 and infer.nms(boxes, scores, 0.5, limit=20) == full[:20]
