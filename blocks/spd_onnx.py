"""ONNX translation of ``blocks_export::space_to_depth`` (the ``SpaceToDepthExport`` rearrangement) for the dynamo
exporter.

``torch.export`` sees the rearrangement as one op of output size (N, 4C, H/2, W/2), so the traced sizes carry no
strided-slice arithmetic (each slice's size is a floor division torch's symbolic shapes reason about, and the
concatenation adds guards that the four sizes are equal). Here it is written as the graph the slices export to:
two row-phase Slices, four column-phase Slices of those and one Concat, in the seed's channel order. onnxruntime
fuses that pattern into its ``SpaceToDepth`` kernel, as before.

    torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...,
                      custom_translation_table=spd_onnx.translation_table())

``spd.SPEC.onnx_translations`` (and ``spd.SPACE_TO_DEPTH``'s) is this function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

INT64_MAX = np.iinfo(np.int64).max  # Slice's "to the end" (https://onnx.ai/onnx/operators/onnx__Slice.html)


def translation_table(opset: int = 18) -> dict[Callable[..., Any], Callable[..., Any]]:
    """``custom_translation_table`` entry for ``torch.onnx.export(..., dynamo=True)`` at ``opset`` (>= 18)."""
    import onnxscript
    import torch
    from onnxscript import ir

    from . import spd  # noqa: F401  (registers torch.ops.blocks_export.space_to_depth)

    op = getattr(onnxscript.onnx_opset, f"opset{opset}")

    def i64(*values: int) -> Any:
        return op.Constant(value=ir.tensor(np.array(values, dtype=np.int64)))

    def space_to_depth(x: Any) -> Any:
        end, two = i64(INT64_MAX), i64(2)

        def phase(t: Any, start: int, axis: int) -> Any:
            return op.Slice(t, i64(start), end, i64(axis), two)  # every second row (axis 2) or column (axis 3)

        r0, r1 = phase(x, 0, 2), phase(x, 1, 2)  # (N, C, H/2, W)
        # Channel blocks (row, col) = (0, 0), (1, 0), (0, 1), (1, 1): SpaceToDepthExport's order.
        return op.Concat(phase(r0, 0, 3), phase(r1, 0, 3), phase(r0, 1, 3), phase(r1, 1, 3), axis=1)

    return {torch.ops.blocks_export.space_to_depth.default: space_to_depth}
