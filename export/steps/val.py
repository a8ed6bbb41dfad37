"""Validation in the user's metric (``val=DATA``, ``val/step.py``): its own two steps.

- ``val data`` (after prepare, and calibration): DATA read and checked against the model's classes and task (the
  model adapter's) before any export work, so bad data costs no export.
- ``val`` (last): the original model and every graph of the run (the floating-point graph the fp16 / INT8 pass
  started from, the fp16 pass of it with ``fp16=True int8=True``, the written graph) scored on DATA; the figure is
  written with the ONNX file and its report (``io.OutputUnit``).
"""

from __future__ import annotations

from .base import State, step


def _asked(state: State) -> bool:
    return state.options.val is not None


@step("val data", reads=("loaded", "adapter", "original", "example"), writes=("val_data",), applies=_asked)
def val_data(state: State) -> None:
    from ..inputs import torch_outputs
    from ..val.step import val_data as read_val_data

    loaded, adapter, options = state.loaded, state.adapter, state.options
    assert loaded is not None and adapter is not None and options.val is not None
    with state.log.step("val data") as s:
        labels, task = adapter.classes(loaded.metadata)
        data = read_val_data(options.val, labels, task, outputs=torch_outputs(state.original, state.example))
        s.note = f"{len(data.images)} images ({options.val})"
    state.val_data = data


@step("val", reads=("val_data", "proto", "float_graph", "original"), applies=_asked)
def val(state: State) -> None:
    from ..val.step import figure_path, graphs_of_run, sensitivity_rows, validate_export

    assert state.unit is not None and state.val_data is not None
    options, report = state.options, state.report
    with state.log.step("val") as s:
        graphs = graphs_of_run(state.proto, state.onnx_out, float_graph=state.float_graph,
                               fp16_target=state.target if options.fp16 and report.int8 is not None else None)
        report.val = validate_export(state.val_data, state.original, graphs, progress=state.log.progress.count,
                                     figure=figure_path(state.output), sensitivity=sensitivity_rows(report.as_dict()),
                                     write=state.unit.write_bytes)
        s.note = report.val.line()
