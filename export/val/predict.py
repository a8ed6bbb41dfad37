"""Predictors behind one interface, ``predict(batch [N, C, H, W] float32) -> outputs``: an ONNX graph on
onnxruntime CPU, and a PyTorch model (the original) fed the same preprocessed tensors.

A graph's preprocessing is the runtime's (``runtime/infer.py`` ``make_preprocess`` from the graph's metadata and
input shape: letterbox, centre crop or stretch, colour, scale, mean, std); the PyTorch model takes the
preprocessing of the graph it is compared with. An Ultralytics model is run in the form its ONNX is exported
from (``export/ultralytics.py`` ``prepare``: fused, the head in export mode, output [B, 4 + nc, anchors] or
[B, nc]), so both sides give the same layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InputError, one_line

ORIGINAL = "original (PyTorch)"


class Predictor(Protocol):
    """What the validation loop runs: a name for the table, the runtime's preprocessing, and ``predict``."""

    name: str
    precision: str
    prep: Any  # runtime.infer.Preprocess
    labels: list[str] | None
    task: str | None

    def predict(self, batch: np.ndarray) -> list[np.ndarray]: ...


@dataclass
class OnnxPredictor:
    """An ONNX graph (a path, a serialized model or a ModelProto) on onnxruntime's CPU provider.

    A static batch is filled to its size (padding dropped from the outputs); inputs are cast to the graph's input
    type (fp16 IO graphs) and outputs returned as float32.
    """

    model: Any
    name: str = ""
    threads: int = 0  # 0: onnxruntime's default (every core)
    precision: str = field(init=False)
    prep: Any = field(init=False)
    labels: list[str] | None = field(init=False)
    task: str | None = field(init=False)

    def __post_init__(self) -> None:
        import onnx

        from blocks_export.runtime import infer

        from ..onnx_file import read_onnx

        if isinstance(self.model, str | os.PathLike):
            path = Path(self.model)
            if not path.is_file():
                raise InputError(f"{path}: no such ONNX file; check the path")
            proto = read_onnx(path)
            self.name = self.name or path.name
        else:
            proto = onnx.load_from_string(self.model) if isinstance(self.model, bytes) else self.model
            self.name = self.name or "graph"
        meta = infer.parse_meta({p.key: p.value for p in proto.metadata_props})
        self.precision, self.labels, self.task = meta.precision, meta.labels, meta.task
        if len(proto.graph.input) != 1:
            raise InputError(f"{self.name}: the graph has {len(proto.graph.input)} inputs; validation feeds one image "
                             "input")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in proto.graph.input[0].type.tensor_type.shape.dim]
        try:
            self.prep = infer.make_preprocess(meta, dims, None)
        except infer.BadInput as e:
            raise InputError(f"{self.name}: images cannot be preprocessed for it ({e})") from None
        self._batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        self._session = _session(self.model, self.name, self.threads)
        spec = self._session.get_inputs()[0]
        self._input = spec.name
        self._dtype = np.float16 if spec.type == "tensor(float16)" else np.float32

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        step = self._batch or len(batch)
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(batch), step):
            x = batch[start:start + step]
            valid = len(x)
            if valid < step:  # a static batch must be full
                x = np.concatenate([x, np.zeros((step - valid, *x.shape[1:]), dtype=x.dtype)])
            out = self._session.run(None, {self._input: np.ascontiguousarray(x, dtype=self._dtype)})
            parts.append([np.asarray(o, dtype=np.float32)[:valid] for o in out])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _session(model: Any, name: str, threads: int) -> Any:
    from blocks_export.plugins.ort_cpu import cpu_session

    try:
        return cpu_session(os.fspath(model) if isinstance(model, str | os.PathLike) else model, threads=threads)
    except Exception as e:  # onnxruntime raises its own types (Fail, InvalidGraph, NotImplemented, ...)
        raise InputError(f"{name}: onnxruntime cannot load it on CPU ({one_line(e)}); export it again") from None


@dataclass
class TorchPredictor:
    """The original PyTorch model (an ``nn.Module``, TorchScript or a ``torch.export`` program), fed the
    preprocessed tensors of the graph it is compared with (``prep``)."""

    model: Any
    prep: Any
    name: str = ORIGINAL
    precision: str = "fp32"
    labels: list[str] | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        import torch

        from .. import ultralytics

        if isinstance(self.model, torch.nn.Module) and ultralytics.task_of(self.model) is not None:
            self.model, info = ultralytics.prepare(self.model, imgsz=tuple(self.prep.size), batch=1, dynamic=False,
                                                   half=False)
            self.labels = self.labels or [info.names[k] for k in sorted(info.names)]
            self.task = self.task or info.task

    def predict(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        from ..inputs import torch_outputs

        return torch_outputs(self.model, torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))


def load_original(path: Path, *, trust_pickle: bool = False, arch: str | None = None,
                  arch_kwargs: dict[str, object] | None = None) -> Any:
    """The original model at ``path`` through the export's own loader (the same trust rules: a pickle only with
    ``trust_pickle``, a state_dict with ``arch``)."""
    from ..load import load_model

    loaded = load_model(Path(path), trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs)
    if loaded.kind == "onnx":
        raise InputError(f"{path}: an ONNX graph, not the original PyTorch model; list it with the graphs to validate")
    return loaded.model


__all__ = ["ORIGINAL", "OnnxPredictor", "Predictor", "TorchPredictor", "load_original"]
