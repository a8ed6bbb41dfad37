"""INT8 (``int8=True``): its own steps, in the INT8 sequence of ``pipeline.py``.

- ``calibration`` (after prepare): the calibration folder read and split before anything is exported, so bad
  images cost no export; images are read as the written graph's metadata will say (the model adapter's
  ``runtime_metadata``).
- ``fp16`` (in the fp16 step's place): with ``fp16=True`` the fp16 pass runs on the INT8 graph instead.
- ``int8`` (after verify): the block-aware Q/DQ graph (``int8.quantize_model``), verified against the original
  model on the held-out images; skipped when the floating-point graph already failed verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExportFailed, UsageError, one_line
from .base import State, step

if TYPE_CHECKING:
    from ..options import ExportOptions
    from ..targets import Target


def check_options(options: ExportOptions, target: Target, lowering: str) -> None:
    """Refuse what INT8 cannot do, before anything is loaded."""
    if lowering == "plugin":
        raise UsageError(f"`int8=True` with `target={target.name}` (DeformConv as the TensorRT plugin node): "
                         "calibration runs onnxruntime, which has no kernel for it; add `deform_conv=std` or "
                         "`deform_conv=portable`")


def refuse_onnx_input(source: Path) -> None:
    raise UsageError(f"{source} is already ONNX: `int8=True` quantizes while exporting a PyTorch model")


@step("calibration images", reads=("loaded", "adapter", "shape"), writes=("calibration",))
def calibration(state: State) -> None:
    from blocks_export.runtime.infer import decode_meta

    from ..calibration import image_preprocess, read_calibration

    options, loaded, adapter = state.options, state.loaded, state.adapter
    assert options.calib is not None and loaded is not None and adapter is not None
    state.report.precision = "int8+fp16" if options.fp16 else "int8"
    with state.log.step("calibration images") as s:
        meta = adapter.runtime_metadata(loaded.metadata, state.shape)  # the settings the written graph will carry
        labels = decode_meta(meta).get("labels")
        prep = image_preprocess(meta, state.shape)
        data = read_calibration(Path(options.calib), prep, state.shape[1], options.calib_count,
                                [str(x) for x in labels] if labels else None)
        s.note = (f"{len(data.calibration)} for calibration, {len(data.held_out)} held out for verification "
                  f"({options.calib})")
        if options.int8_budget_metric is not None:  # refused before the export when the images have no labels
            from ..int8_measure import held_out_metric

            held_out_metric(data, options.int8_budget_metric)
    state.calibration = data


@step("fp16", writes=("float_graph",), applies=lambda state: state.options.fp16)
def fp16_in_int8(state: State) -> None:
    state.float_graph = None  # no fp16 graph before verification: verify's fp16 fallback has nothing to convert
    state.log.skip("fp16", "with `int8=True` the fp16 pass runs on the INT8 graph (int8 step)")


@step("int8", reads=("calibration", "failed", "proto", "original", "shape", "rewrite_report", "exported"),
      writes=("proto", "float_graph", "graph_precision", "failed"))
def quantize(state: State) -> None:
    """The block-aware Q/DQ graph, verified against the original model on held-out images."""
    from blocks_export.runtime.parity import RULES

    from ..int8 import quantize_model
    from ..int8_measure import held_out_metric

    if state.failed:  # the floating-point graph already failed its verification: quantizing it proves nothing
        state.log.skip("int8", "the floating-point graph failed verification")
        return
    assert state.calibration is not None
    budget = state.options.int8_budget or RULES["int8"].rel_l2
    blocks = [r.name for r in state.rewrite_report.replaced] if state.rewrite_report is not None else []
    scoped = state.exported.model if state.exported is not None else None
    with state.log.step("int8") as s:
        try:
            graph, result = quantize_model(state.proto, state.original, state.calibration, state.shape[0],
                                           budget=budget, blocks=blocks, scoped=scoped, fp16=state.options.fp16,
                                           metric=None if state.options.int8_budget_metric is None else
                                           held_out_metric(state.calibration, state.options.int8_budget_metric),
                                           progress=state.log.progress.message)
        except (ValueError, RuntimeError) as e:
            raise ExportFailed(f"INT8 quantization failed: {one_line(e)}") from e
        state.report.int8 = result
        state.float_graph, state.proto, state.graph_precision = state.proto, graph, "int8"
        s.note = result.line()
        if not result:
            s.status = "failed"
            state.failed = True
