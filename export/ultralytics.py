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

import copy
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .boxes import BoxAgreement


# Ultralytics' model classes (ultralytics/nn/tasks.py) and the task each one exports as.
TASK_OF_CLASS = {"DetectionModel": "detect", "SegmentationModel": "segment", "PoseModel": "pose",
                 "OBBModel": "obb", "ClassificationModel": "classify"}
INPUT_NAME = "images"
MAX_DET = 300  # Ultralytics' default ``max_det`` (ultralytics/cfg/default.yaml)


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
              fp16_io: bool, images: Path | None = None) -> BoxAgreement | None:
        from .boxes import box_agreement, box_images, sample_images

        if self.info.task != "detect":
            return None
        pictures = sample_images(shape) if images is None else box_images(images, shape, runtime_metadata(self.info))
        agreement = box_agreement(original, graph, pictures, precision=precision, fp16_io=fp16_io)
        agreement.images_from = "synthetic" if images is None else str(images)
        return agreement


__all__ = ["INPUT_NAME", "TASK_OF_CLASS", "UltralyticsAdapter", "UltralyticsInfo", "finish_graph", "name_io", "prepare",
           "runtime_metadata", "task_of"]
