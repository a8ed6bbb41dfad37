"""Export: the rewritten model to ONNX (``onnx_export.to_onnx``) with the target's opset, exporter and LayerNorm
form and the run's DeformConv lowering, named by the model's adapter; with ``dynamic``, the valid sizes probed
on the ORIGINAL model (``dynamic.probe_ranges``).

``portable_twin`` is this step, simplify and fp16 run again with the ``portable`` lowering: the graph a runtime
that cannot read DeformConv (OpenVINO) verifies instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import State, is_large, step

if TYPE_CHECKING:
    from ..onnx_export import OnnxExport


def exporter_for(state: State) -> str:
    """The target's exporter unless the user chose one; a torch.export program only has the dynamo one."""
    assert state.loaded is not None
    return state.options.exporter or ("dynamo" if state.loaded.kind == "exported_program" else state.target.exporter)


def export_graph(state: State, lowering: str, derive_ranges: bool) -> OnnxExport:
    """``state.model`` exported as this run exports it, with ``lowering``, in its adapter's names."""
    from ..onnx_export import to_onnx

    options, target, adapter = state.options, state.target, state.adapter
    assert adapter is not None
    exported = to_onnx(state.model, state.example, opset=options.opset or target.opset,
                       opset_fixed=options.opset is not None, lowering=lowering, exporter=exporter_for(state),
                       dynamic=options.dynamic, decompose_layernorm=target.layernorm == "decompose",
                       derive_ranges=derive_ranges)
    return adapter.name_io(exported)


@step("export", reads=("loaded", "model", "example", "original", "shape", "adapter"), writes=("exported", "proto"))
def export(state: State) -> None:
    import torch

    # With --dynamic the ranges are probed on the original module below: the TorchScript exporter then needs no
    # torch.export trace of its own for them (about half its export time).
    probed = state.options.dynamic and isinstance(state.original, torch.nn.Module)
    with state.log.step("export") as s:
        exported = export_graph(state, state.lowering, derive_ranges=not probed)
        s.note = f"{exported.exporter}, opset {exported.opset}, {len(exported.model.graph.node)} nodes"
    if probed and exported.dynamic:
        from ..dynamic import probe_note, probe_ranges

        # The ranges the ORIGINAL model accepts (probed), not torch.export's guards on the twins.
        exported.dynamic = {exported.input_name: probe_ranges(state.original, state.shape)}
        exported.notes = [n for n in exported.notes if not n.startswith("dynamic sizes from")]
        exported.notes.append(probe_note(exported.dynamic[exported.input_name]))
    state.exported, state.proto = exported, exported.model
    report = state.report
    report.opset, report.exporter, report.dynamic = exported.opset, exported.exporter, exported.dynamic
    report.notes = list(exported.notes)


def portable_twin(state: State, fp16: bool | None = None) -> Any:
    """The same model exported as this run exports it, with the ``portable`` DeformConv lowering: the export
    step, then simplify and fp16 as the run asks (a ``ModelProto``; ``fp16=False``: the float twin, for the fp16
    fallback's fp32 check). Reads what the export step reads."""
    from .precision import fp16_graph
    from .simplify import simplified

    proto = export_graph(state, "portable", derive_ranges=True).model
    if state.options.simplify and not is_large(proto):
        proto = simplified(proto)[0]
    return fp16_graph(proto, state.options, None) if (state.options.fp16 if fp16 is None else fp16) else proto
