"""What a profile runs: the exported graph read without its weights, the shape of each input (the caller's
``shape``, else the export shape the graph records in its ``blocks_export.export_shape`` metadata, else the
inputs' static shapes) and seeded image-like values in [0, 1).

Shared by the onnxruntime profile (``profile``) and the TensorRT one (``profile_trt``); reads the ``.onnx``,
writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import one_line


class ShapeNeeded(ValueError):
    """The graph has a dynamic input and no recorded export shape: the caller must give one (``shape``)."""


def export_shapes(model: Any, shape: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Input name -> shape to profile at: ``shape`` for a one-input graph, else the ``export_shape`` metadata,
    else the inputs' static shapes. ``ValueError`` (one line) when a dynamic input has no shape to use."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if shape is not None:
        if len(inputs) != 1:
            raise ValueError(f"`shape` applies to a one-input graph; this one has {len(inputs)} inputs")
        return {inputs[0].name: [int(d) for d in shape]}
    meta = next((p.value for p in model.metadata_props if p.key == "blocks_export.export_shape"), None)
    if meta is not None:
        try:
            recorded = json.loads(meta)
        except ValueError:
            recorded = {}
        if isinstance(recorded, dict) and all(i.name in recorded for i in inputs):
            return {i.name: [int(d) for d in recorded[i.name]] for i in inputs}
    out = {}
    for i in inputs:
        dims = i.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ShapeNeeded(f"input {i.name!r} has dynamic dimensions and the graph records no export shape to "
                              "profile at")
        out[i.name] = [int(d.dim_value) for d in dims]
    return out


def make_inputs(model: Any, shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Image-like values in [0, 1) in each input's own dtype, deterministic per seed."""
    import onnx

    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        if i.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        data = rng.random(tuple(shapes[i.name]))
        feeds[i.name] = data.astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(data.shape, dtype)
    return feeds


def load_graph(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"{path}: not an ONNX model ({one_line(e)}); profile takes the .onnx an export "
                         "wrote") from None
