"""Rewrite: every known block inside the model replaced by its export twin (``blocks.rewrite_model``, on a copy),
each swap checked on the inputs that block really sees."""

from __future__ import annotations

from ..errors import ExportFailed, one_line
from .base import State, step


@step("rewrite", reads=("loaded", "original", "example"), writes=("model", "rewrite_report"))
def rewrite(state: State) -> None:
    from blocks_export.blocks import RewriteReport, rewrite_model
    from blocks_export.blocks.hazards import SIZE_KINDS

    loaded = state.loaded
    assert loaded is not None
    if loaded.kind != "module":
        state.log.skip("rewrite", "block rewrites cannot apply to a TorchScript or torch.export input")
        state.report.blocks = RewriteReport()
        state.model = state.original
        return
    with state.log.step("rewrite") as s:
        try:
            state.model, report = rewrite_model(state.original, state.example)
        except Exception as e:
            raise ExportFailed(f"block rewriting failed: {one_line(e)}") from e
        s.note = f"{len(report.replaced)} block(s) replaced"
    state.rewrite_report = report
    # A size hazard makes a graph wrong at other input sizes: a warning only where the graph takes other sizes.
    state.report.warnings += [f"{h.name}: {h.kind}: {h.detail}" for h in report.hazards
                              if state.options.dynamic or h.kind not in SIZE_KINDS]
    state.report.blocks = report
