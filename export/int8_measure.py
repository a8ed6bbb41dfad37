"""Measurements of candidate INT8 graphs against the ORIGINAL model on the held-out calibration images
(``int8.quantize_model``): the graph on onnxruntime CPU and the PyTorch model in batches of the graph's batch
size, the worst output error, top-1 agreement and accuracy for a classifier, and the metric budget
(``int8_budget_metric``: points of top-1 or mAP lost, measured with ``val.evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .calibration import CalibrationSet
from .errors import InputError


def run_graph(model: onnx.ModelProto, tensors: np.ndarray, batch: int) -> list[np.ndarray]:
    """Outputs of ``model`` on onnxruntime CPU for every image of ``tensors``, concatenated on the batch axis."""
    from .runners import open_runner

    runner = open_runner("onnxruntime", model)
    name = runner.input_names[0]
    return batched(lambda x: [np.asarray(o) for o in runner.run({name: x})], tensors, batch)


def torch_run(model: Any, tensors: np.ndarray, batch: int) -> list[np.ndarray]:
    """Outputs of the original PyTorch model for every image of ``tensors``."""
    import torch

    from .inputs import torch_outputs

    return batched(lambda x: torch_outputs(model, torch.from_numpy(x)), tensors, batch)


def batched(fn: Any, tensors: np.ndarray, batch: int) -> list[np.ndarray]:
    n, parts = len(tensors), []
    for start in range(0, n, batch):
        idx = [(start + k) % n for k in range(batch)]
        valid = min(batch, n - start)
        parts.append([np.asarray(o, dtype=np.float32)[:valid] for o in fn(tensors[idx])])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def worst(reference: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    from blocks_export.runtime.parity import compare

    cmp = compare(reference, got, "int8")
    return cmp.worst_rel_l2, min((o.cosine for o in cmp.outputs), default=0.0)


def top1s(outputs: list[np.ndarray]) -> np.ndarray | None:
    """[N] argmax of a classifier's scores [N, K] (one output, K >= 2), else None."""
    if len(outputs) != 1 or outputs[0].ndim != 2 or outputs[0].shape[1] < 2:
        return None
    return outputs[0].argmax(1)


def top1(reference: list[np.ndarray], got: list[np.ndarray]) -> float | None:
    """Argmax agreement of a classifier's scores [N, K] (one output), else None."""
    ref = top1s(reference)
    return None if ref is None else float((ref == got[0].argmax(1)).mean())


def predicted_classes(reference: list[np.ndarray]) -> int | None:
    """How many distinct top-1 classes a classifier's scores [N, K] (one output) hold, else None."""
    ref = top1s(reference)
    return None if ref is None else int(np.unique(ref).size)


def accuracy(out: list[np.ndarray], labels: list[int | None]) -> float | None:
    if len(out) != 1 or out[0].ndim != 2 or not labels or any(lb is None for lb in labels):
        return None
    return float((out[0].argmax(1) == np.asarray(labels)).mean())


@dataclass
class MetricBudget:
    """``int8_budget_metric``: at most ``points`` of the data's metric (top-1, or mAP50-95 for a detector) lost
    against the original model, measured with ``val.evaluate`` on ``data`` (a ``val`` ``ClassifyData`` or
    ``DetectData``) preprocessed as ``prep`` (the runtime's ``Preprocess``)."""

    points: float
    data: Any
    prep: Any
    source: str = ""  # where the labelled images come from, in words

    def as_dict(self) -> dict[str, Any]:
        return {"budget_points": self.points, "data": self.source or str(getattr(self.data, "source", "")),
                "images": len(self.data.images)}


@dataclass
class GraphPredictor:
    """A candidate graph for ``val.evaluate`` (its ``Predictor`` interface): onnxruntime CPU, the export's
    preprocessing (the graph carries no metadata yet)."""

    model: onnx.ModelProto
    prep: Any
    batch: int
    name: str = "int8"
    precision: str = "int8"
    labels: list[str] | None = None
    task: str | None = None

    runner: Any = None

    def predict(self, images: np.ndarray) -> list[np.ndarray]:
        if self.runner is None:
            from .runners import open_runner

            self.runner = open_runner("onnxruntime", self.model)
        name = self.runner.input_names[0]
        return batched(lambda x: [np.asarray(o) for o in self.runner.run({name: x})], images, self.batch)


def held_out_metric(data: CalibrationSet, points: float) -> MetricBudget:
    """``int8_budget_metric`` on the held-out split of the calibration folder: top-1 against the label-named
    subfolders its images sit in. ``InputError`` when a held-out image has no label."""
    from .val.data import ClassifyData

    unlabelled = [p for p, lb in zip(data.held_out, data.labels, strict=False) if lb is None]
    if not data.names or unlabelled or len(data.labels) != len(data.held_out):
        where = f" ({unlabelled[0]})" if unlabelled else ""
        raise InputError(f"`int8_budget_metric` needs labelled held-out images, and {data.folder} has images "
                         f"outside a folder named after one of the model's classes{where}: put each image in a "
                         "subfolder named after its class, or use `int8_budget`")
    labels = [int(lb) for lb in data.labels if lb is not None]
    return MetricBudget(points, ClassifyData(data.folder, list(data.names), list(data.held_out), labels), data.prep,
                        f"{len(labels)} held-out image(s) of {data.folder}")


def metric_of(predictor: Any, data: Any) -> tuple[str, float]:
    from .val.evaluate import evaluate

    r = evaluate(data, [predictor], batch=32, reference=None).results[0]
    return r.metric, r.value
