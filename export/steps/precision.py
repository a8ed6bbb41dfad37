"""Precision: the mixed-precision fp16 graph (``fp16.to_fp16``: fp16 weights and activations, the blocks'
sensitive parts in fp32 behind Casts), IO kept fp32 unless ``fp16_io``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .base import State, step

if TYPE_CHECKING:
    from ..options import ExportOptions
    from ..targets import Target


def fp16_graph(model: Any, options: ExportOptions, target: Target | None, keep: Iterable[str] = ()) -> Any:
    """``model`` converted as the run asks; ``keep``: the nodes that stay fp32 as well (the fp16 fallback's)."""
    from .. import fp16 as fp16_module

    return fp16_module.to_fp16(model, keep_io_types=not options.fp16_io, target=target, keep=keep)


@step("fp16", reads=("proto",), writes=("proto", "float_graph"), applies=lambda state: state.options.fp16)
def fp16(state: State) -> None:
    with state.log.step("fp16") as s:
        state.float_graph = state.proto
        state.proto = fp16_graph(state.proto, state.options, state.target)
        s.note = "keep fp32 IO" if not state.options.fp16_io else "fp16 IO"
