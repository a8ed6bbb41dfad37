"""ONNX ``metadata_props`` written by the export pipeline (keys ``blocks_export.*``, values strings/JSON).

Consumers (the runtime script, the engine builder) read the input spec, dynamic ranges and preprocessing
from here instead of guessing. The keys and their value types are ONE contract, the runtime script's
(``runtime/infer.py``: ``META_KEYS``, ``encode_meta``, ``decode_meta``): the writer here and the reader on the
Jetson cannot disagree on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..runtime.infer import META, decode_meta, encode_meta

PREFIX = META
TASKS = ("classify", "detect", "features")


def toolkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("blocks-export")
    except PackageNotFoundError:
        return "unknown"


def _dtype_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def value_specs(values: Any, dim_names: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """[{"name", "shape" (ints or dim names), "dtype"}] of graph inputs or outputs.

    ``dim_names`` renames dynamic axes ({0: "batch", ...}) where the graph carries a symbolic name.
    """
    specs = []
    for v in values:
        shape: list[int | str] = []
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                shape.append(dim_names.get(axis, d.dim_param) if dim_names else (d.dim_param or f"d{axis}"))
        specs.append({"name": v.name, "shape": shape, "dtype": _dtype_name(v.type.tensor_type.elem_type)})
    return specs


def preprocess_for(model_info: Mapping[str, Any], export_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The model's ``preprocess`` settings with ``size`` = the exported input's [H, W] (``None`` without settings).

    A checkpoint records the size it was trained at; exported at another ``imgsz``, images must be resized to
    the size the graph takes (static H/W) or was exported and verified at (dynamic H/W: the runtime's default
    resize; other sizes go in as .npy arrays).
    """
    preprocess = model_info.get("preprocess")
    if not isinstance(preprocess, Mapping):
        return None
    out = dict(preprocess)
    if len(export_shape) == 4:
        out["size"] = [int(export_shape[2]), int(export_shape[3])]
    return out


def build_metadata(*, source_sha256: str, input_name: str, export_shape: tuple[int, ...],
                   dynamic: Mapping[str, Any] | None, model_info: Mapping[str, Any], blocks: list[Any],
                   precision: str, target: str, deform_conv: str, parity: Mapping[str, Any] | None,
                   graph: Any) -> dict[str, str]:
    """All ``blocks_export.*`` entries, as strings (``runtime/infer.py``'s ``META_KEYS``: the contract)."""
    dim_names = {0: "batch", 2: "height", 3: "width"} if dynamic else None
    meta: dict[str, Any] = {
        "version": toolkit_version(),
        "source_sha256": source_sha256,
        "inputs": value_specs(graph.input, dim_names),
        "outputs": value_specs(graph.output),
        "dynamic": dict(dynamic) if dynamic else None,
        "export_shape": {input_name: list(export_shape)},
        "blocks": blocks,
        "precision": precision,
        "target": target,
        "deform_conv": deform_conv,
        "parity": dict(parity) if parity is not None else None,
    }
    task = model_info.get("task")
    if task in TASKS:
        meta["task"] = task
    if isinstance(model_info.get("labels"), list | tuple):
        meta["labels"] = [str(x) for x in model_info["labels"]]
    elif isinstance(model_info.get("names"), Mapping | list | tuple):  # Ultralytics stores `names`
        names = model_info["names"]
        meta["labels"] = [str(names[k]) for k in sorted(names)] if isinstance(names, Mapping) else list(map(str, names))
    preprocess = preprocess_for(model_info, export_shape)
    if preprocess is not None:
        meta["preprocess"] = preprocess
    return encode_meta(meta)


def set_metadata(model: Any, entries: Mapping[str, str]) -> None:
    """Replace the ``blocks_export.*`` entries of ``model.metadata_props`` (others are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for k, v in [*keep, *entries.items()]:
        p = model.metadata_props.add()
        p.key, p.value = k, v


def set_metadata_entry(model: Any, name: str, value: Any) -> None:
    """Set the one entry ``blocks_export.<name>`` of ``model.metadata_props`` (a contract key), every other entry
    kept."""
    ((key, text),) = encode_meta({name: value}).items()
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = text
            return
    model.metadata_props.add(key=key, value=text)


def read_metadata(model: Any) -> dict[str, Any]:
    """``blocks_export.*`` entries by key, values decoded as the contract says (``runtime/infer.py``)."""
    return decode_meta({p.key: p.value for p in model.metadata_props})
