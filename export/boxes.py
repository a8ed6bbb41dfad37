"""A detector's box check: PyTorch's and the graph's detect outputs decoded by ``runtime/infer.py``'s own code
(confidence threshold, NMS) and matched box by box on the same images, under a floor of the model's own noise;
and the images it runs on: the user's (``images``: a folder, each picture read and letterboxed by the runtime's
own code, as ``runtime/infer.py`` feeds the written graph) or synthetic ones with structure (``sample_images``).
A model adapter with a detect head (``ultralytics.UltralyticsAdapter``) runs it as its own check; the ``images``
folder is checked before anything is loaded (``steps/plan.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.parity import FLOOR_FACTOR
from .errors import InputError

# Box agreement between PyTorch and ONNX (decoded, after NMS), per precision: matched boxes' IoU and
# |score difference|. fp16 scores come out of a sigmoid in fp16 (spacing 2^-11 near 1).
MIN_IOU = 0.99
SCORE_ATOL = {"fp32": 1e-4, "fp16": 1e-2}


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
    images_from: str = "synthetic"  # what the boxes were found on: "synthetic" or the ``images`` folder

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
                "compared": self.compared, "reference": self.reference, "images_from": self.images_from,
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


#: At most this many of the folder's images (sorted by name) are compared: the check runs PyTorch in float64 on each.
MAX_BOX_IMAGES = 8


def box_image_files(folder: Path) -> list[str]:
    """The first ``MAX_BOX_IMAGES`` images of ``folder`` (and its direct subfolders), by name; ``InputError`` when
    there is no such folder or no image in it."""
    from .calibration import image_files

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"box-check folder {folder} does not exist or is not a folder; check `images`")
    files = [p for p, _ in image_files(folder, "box-check", "images")][:MAX_BOX_IMAGES]
    if not files:
        raise InputError(f"box-check folder {folder} holds no images (.png, .jpg, ...); give pictures like the ones "
                         "the detector will see in `images`")
    return files


def box_images(folder: Path, shape: tuple[int, ...], metadata: Mapping[str, str]) -> list[Any]:
    """[N, C, H, W] float tensors (each picture repeated over the batch) at the export ``shape``, read with the
    preprocessing the written graph's ``metadata`` (its ``blocks_export.*`` entries) declares."""
    import torch

    from blocks_export.runtime.infer import BadInput, preprocess_image, read_image

    from .calibration import image_preprocess

    prep = image_preprocess(dict(metadata), (1, *shape[1:]))
    out = []
    for path in box_image_files(folder):
        try:
            img = read_image(path)
        except BadInput as e:
            raise InputError(f"box-check image: {e}") from None
        x = torch.from_numpy(preprocess_image(img, prep)).float()[None]
        out.append(x.expand(shape[0], *x.shape[1:]).contiguous())
    return out


__all__ = ["MAX_BOX_IMAGES", "MIN_IOU", "SCORE_ATOL", "TOP_K", "BoxAgreement", "box_agreement", "box_image_files",
           "box_images", "match_detections", "sample_images"]
