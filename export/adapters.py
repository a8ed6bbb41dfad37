"""Model adapters: what a model family asks of the export beyond the blocks, chosen once by the prepare step.

An adapter takes the loaded model into the form that family exports and is verified in (Ultralytics: fused,
head in export mode), names the graph's inputs and outputs, writes its own metadata on the final graph, says
which preprocessing and labels the runtime will read (INT8 calibration reads images the same way) and which
classes and task the model has (``val=DATA`` is checked against them), and adds its own check on a graph that
passed parity (Ultralytics detectors: decoded boxes). ``PlainModel``, the default, changes nothing. A new family is one class with these methods and one line in ``adapter_for``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .boxes import BoxAgreement
    from .onnx_export import OnnxExport


class ModelAdapter(Protocol):
    @property
    def name(self) -> str: ...

    def name_io(self, exported: OnnxExport) -> OnnxExport:
        """``exported`` with the family's input and output names."""
        ...

    def finish_graph(self, model: Any, opset: int) -> None:
        """The family's dimension names and metadata on the final graph (in place)."""
        ...

    def runtime_metadata(self, model_info: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, str]:
        """The ``blocks_export.*`` preprocessing, task and label entries the written graph will carry."""
        ...

    def classes(self, model_info: Mapping[str, Any]) -> tuple[list[str] | None, str | None]:
        """The model's class names and task (``val=DATA`` checks the data against them), each None if unknown."""
        ...

    def check(self, original: Any, graph: Any, shape: tuple[int, ...], *, precision: str,
              fp16_io: bool, images: Path | None = None) -> BoxAgreement | None:
        """The family's own check of a graph that passed parity (the report's ``detections``), or None;
        ``images``: the user's pictures for it (``boxes.box_images``), else the family's own."""
        ...


class PlainModel:
    """Any model: its own IO names, the metadata the pipeline writes, no check of its own."""

    name = "plain"

    def name_io(self, exported: OnnxExport) -> OnnxExport:
        return exported

    def finish_graph(self, model: Any, opset: int) -> None:
        return None

    def runtime_metadata(self, model_info: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, str]:
        from blocks_export.runtime.infer import encode_meta

        from .metadata import preprocess_for

        meta: dict[str, Any] = {}
        preprocess = preprocess_for(model_info, shape)
        if preprocess is not None:
            meta["preprocess"] = preprocess
        if isinstance(model_info.get("task"), str):
            meta["task"] = model_info["task"]
        if isinstance(model_info.get("labels"), list | tuple):
            meta["labels"] = [str(x) for x in model_info["labels"]]
        return encode_meta(meta)

    def classes(self, model_info: Mapping[str, Any]) -> tuple[list[str] | None, str | None]:
        from .val.step import model_classes

        return model_classes(model_info)

    def check(self, original: Any, graph: Any, shape: tuple[int, ...], *, precision: str,
              fp16_io: bool, images: Path | None = None) -> BoxAgreement | None:
        return None


PLAIN = PlainModel()


def adapter_for(model: Any, *, imgsz: tuple[int, int], batch: int, dynamic: bool,
                half: bool) -> tuple[Any, ModelAdapter]:
    """``(the model in its family's export form, its adapter)``; ``(model, PLAIN)`` for any other model.
    Recognising a family imports nothing of it (class and module names only)."""
    from . import ultralytics

    if ultralytics.task_of(model) is not None:  # exported as `yolo export format=onnx` writes it
        prepared, info = ultralytics.prepare(model, imgsz=imgsz, batch=batch, dynamic=dynamic, half=half)
        return prepared, ultralytics.UltralyticsAdapter(info)
    return model, PLAIN
