"""One loop over the validation images for the original model and every graph: each image is decoded once,
preprocessed once per distinct preprocessing, and run through every predictor; the metric, its change against the
reference (the original model when given) and the latency per image come out as one result per predictor."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from .data import ClassifyData, DetectData
from .metrics import metric_for
from .predict import Predictor

FORMAT = "blocks-export-val/1"
METRIC_TITLES = {"top1": "top-1", "top5": "top-5", "map50_95": "mAP50-95", "map50": "mAP50"}


@dataclass
class ValResult:
    """One predictor's score on the data: ``metric`` names the headline value (``top1`` or ``map50_95``);
    ``change`` is ``value`` minus the reference's (a fraction: 0.005 is half a point), None for the reference."""

    name: str
    precision: str
    metric: str
    value: float
    metrics: dict[str, float | None]
    images: int
    latency_ms: float  # wall time of ``predict`` per image, after the first batch (warm-up)
    reference: bool = False
    change: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"graph": self.name, "precision": self.precision, "metric": self.metric, "value": self.value,
                "metrics": dict(self.metrics), "change": self.change, "reference": self.reference,
                "images": self.images, "latency_ms": self.latency_ms}


@dataclass
class ValReport:
    task: str
    data: str
    images: int
    objects: int | None
    results: list[ValResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "task": self.task, "data": self.data, "images": self.images,
                "objects": self.objects, "settings": dict(self.settings),
                "results": [r.as_dict() for r in self.results]}


Progress = Callable[[int, int], None]


def evaluate(data: ClassifyData | DetectData, predictors: Sequence[Predictor], *, batch: int = 1,
             reference: int | None = 0, progress: Progress | None = None) -> ValReport:
    """Score every predictor on ``data``; ``reference`` indexes the predictor others are compared with (None: no
    comparison). ``progress(done, total)`` is called after each batch of images."""
    from blocks_export.runtime import infer

    from .metrics import VAL_CONF, VAL_IOU, VAL_MAX_DET

    if batch < 1:
        raise InputError(f"`batch={batch}`: must be at least 1")
    if not predictors:
        raise InputError("nothing to validate: give at least one graph")
    metrics = [metric_for(data) for _ in predictors]
    seconds = [0.0] * len(predictors)
    total = len(data.images)
    labels: Sequence[Any] = data.labels if isinstance(data, ClassifyData) else data.boxes
    for start in range(0, total, batch):
        paths = data.images[start:start + batch]
        try:
            decoded = [infer.read_image(p) for p in paths]
        except infer.BadInput as e:
            raise InputError(f"data: {e}") from None
        tensors: dict[Any, np.ndarray] = {}
        for k, predictor in enumerate(predictors):
            prep = predictor.prep
            if prep not in tensors:
                tensors[prep] = np.stack([infer.preprocess_image(img, prep) for img in decoded]).astype(np.float32)
            t0 = time.perf_counter()
            outputs = predictor.predict(tensors[prep])
            if start > 0 or total <= batch:  # the first batch warms up (allocations, lazy init): not timed
                seconds[k] += time.perf_counter() - t0
            metrics[k].update(outputs, labels[start:start + batch],
                              image_hw=[(int(i.shape[0]), int(i.shape[1])) for i in decoded], prep=prep)
        if progress is not None:
            progress(min(start + batch, total), total)
    report = ValReport(task=data.task, data=data.source, images=total,
                       objects=data.objects if isinstance(data, DetectData) else None,
                       settings={"batch": batch, **({"conf": VAL_CONF, "iou": VAL_IOU, "max_det": VAL_MAX_DET,
                                                     "evaluator": "faster-coco-eval"}
                                                    if isinstance(data, DetectData) else {})})
    timed = total if total <= batch else total - batch
    for k, (predictor, metric) in enumerate(zip(predictors, metrics, strict=True)):
        values = metric.result()
        value = values[metric.name]
        report.results.append(ValResult(predictor.name, predictor.precision, metric.name, float(value or 0.0), values,
                                        total, 1000.0 * seconds[k] / max(timed, 1), reference=k == reference))
    if reference is not None:
        base = report.results[reference].value
        for r in report.results:
            if not r.reference:
                r.change = r.value - base
    return report


def validate(graphs: Sequence[Any], data: Any, *, original: Any = None, trust_pickle: bool = False,
             arch: str | None = None, arch_kwargs: dict[str, object] | None = None, batch: int = 1,
             progress: Progress | None = None) -> ValReport:
    """``evaluate`` from files: ONNX ``graphs`` (paths or models), the validation ``data`` folder or yaml, and the
    ``original`` PyTorch model file (the reference when given, else the first graph). Bad data is refused before
    the original model is loaded."""
    from pathlib import Path

    from .data import read_data
    from .metrics import check_evaluator
    from .predict import OnnxPredictor, TorchPredictor, load_original

    if batch < 1:
        raise InputError(f"`batch={batch}`: must be at least 1")
    if not graphs:
        raise InputError("nothing to validate: give at least one ONNX graph")
    predictors: list[Predictor] = [OnnxPredictor(g) for g in graphs]
    first = predictors[0]
    dataset = read_data(Path(data), first.labels, first.task)
    if isinstance(dataset, DetectData):
        check_evaluator()
    if original is not None:
        model = load_original(Path(original), trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs)
        predictors.insert(0, TorchPredictor(model, first.prep, labels=first.labels, task=first.task))
    return evaluate(dataset, predictors, batch=batch, progress=progress)


def render(report: ValReport, console: Any) -> None:
    """One table on ``console`` (rich): graph, precision, the metric, its change against the reference, images,
    latency per image."""
    from rich.markup import escape
    from rich.table import Table

    main = report.results[0].metric if report.results else "top1"
    second = "top5" if main == "top1" else "map50"
    table = Table(title=f"{METRIC_TITLES[main]} on {escape(report.data)} ({report.images} images"
                        + (f", {report.objects} objects)" if report.objects is not None else ")"))
    for title in ("graph", "precision", METRIC_TITLES[main], METRIC_TITLES[second], "change", "images",
                  "ms / image"):
        table.add_column(title, justify="left" if title in ("graph", "precision") else "right")
    for r in report.results:
        other = r.metrics.get(second)
        change = "reference" if r.reference else ("" if r.change is None else f"{100 * r.change:+.2f} pt")
        table.add_row(escape(r.name), r.precision, f"{r.value:.4f}", "-" if other is None else f"{other:.4f}",
                      change, str(r.images), f"{r.latency_ms:.2f}")
    console.print(table)


__all__ = ["FORMAT", "METRIC_TITLES", "ValReport", "ValResult", "evaluate", "render", "validate"]
