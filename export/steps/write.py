"""Write: the ``blocks_export.*`` metadata (``metadata.build_metadata``) and the model adapter's own on the final
graph, then the ONNX file, staged in the run's output unit (it lands with its report, or not at all); over
2 GB its tensors go to ``<name>.data`` beside it (external data)."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..io import OutputUnit, atomic_folder_files, atomic_path
from .base import State, is_large, step


@step("write", reads=("loaded", "exported", "proto", "shape", "rewrite_report", "graph_precision", "verification",
                      "adapter"),
      writes=("onnx_path",))
def write(state: State) -> None:
    from ..metadata import build_metadata, set_metadata

    loaded, exported, adapter, proto = state.loaded, state.exported, state.adapter, state.proto
    assert loaded is not None and exported is not None and adapter is not None
    blocks = [asdict(r) for r in state.rewrite_report.replaced] if state.rewrite_report is not None else []
    verification = state.verification
    set_metadata(proto, build_metadata(
        source_sha256=loaded.sha256, input_name=exported.input_name, export_shape=state.shape,
        dynamic=exported.dynamic, model_info=loaded.metadata, blocks=blocks, precision=state.graph_precision,
        target=state.target.name, deform_conv=state.lowering,
        parity=verification.summary() if verification else None, graph=proto.graph))
    adapter.finish_graph(proto, exported.opset)
    with state.log.step("write") as s:
        written = save_onnx(proto, state.onnx_out, state.options.force, state.unit)
        s.note = str(state.onnx_out) + (" (+ external data)" if len(written) > 1 else "")
    state.report.onnx = str(state.onnx_out)
    state.onnx_path = state.onnx_out


def save_onnx(model: Any, path: Path, force: bool = True, unit: OutputUnit | None = None) -> list[Path]:
    """Write ``model`` atomically; over 2 GB its tensors go to ``<name>.data`` beside it (external data).
    With ``unit``, the files are only staged in it: they land when the unit is committed (with the report)."""
    import onnx

    if not is_large(model):
        file = contextlib.nullcontext(unit.stage(path)) if unit is not None else atomic_path(path, force)
        with file as tmp:
            onnx.save_model(model, str(tmp))
        return [path]
    data_name = path.name + ".data"
    names = [data_name, path.name]
    folder = contextlib.nullcontext(unit.stage_folder(path.parent, names)) if unit is not None else \
        atomic_folder_files(path.parent, names, force)
    with folder as tmpdir:
        onnx.save_model(model, str(tmpdir / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    return [path, path.parent / data_name]
