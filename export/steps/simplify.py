"""Simplify: onnxslim, then static means over H/W as pooling (``simplify.simplify``); a simplifier failure costs
only the simplification, said as a warning. The graph before it is kept for verification to fall back on."""

from __future__ import annotations

from typing import Any

from .base import State, is_large, step


def simplified(model: Any) -> tuple[Any, str]:
    """``(the simplified graph, or model itself when the simplifier failed, the note)``."""
    from .. import simplify as simplify_module

    return simplify_module.simplify(model)


@step("simplify", reads=("proto",), writes=("proto", "unsimplified"))
def simplify(state: State) -> None:
    if not state.options.simplify:
        state.log.skip("simplify", "`simplify=False`")
    elif is_large(state.proto):
        state.log.skip("simplify", "model over 2 GB: simplification skipped")
    else:
        with state.log.step("simplify") as s:
            unsimplified = state.proto
            state.proto, s.note = simplified(unsimplified)
            if state.proto is unsimplified:
                s.status = "warning"
                state.report.warnings.append(s.note)
            else:
                state.unsimplified = unsimplified
