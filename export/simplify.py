"""Graph simplification with onnxslim (constant folding, dead-node removal, pattern fusion).

onnxslim: https://github.com/inisis/OnnxSlim. A failed simplification is not fatal: the unsimplified graph is
kept and the reason is reported. Metadata is written after this step, so nothing the simplifier drops matters.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any


def simplify(model: Any) -> tuple[Any, str]:
    """Return ``(simplified_model, note)``; on any failure ``(model, why it was kept)``.

    The simplified graph must keep the input and output names, or it is rejected.
    """
    try:
        import onnxslim
    except ImportError:
        return model, "onnxslim is not installed: the graph was kept as exported"
    before = len(model.graph.node)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(model)
    except Exception as e:  # any simplifier bug must only cost the simplification
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return model, f"simplification failed ({type(e).__name__}: {first}); kept the unsimplified graph"
    if slim is None:
        return model, "simplification returned nothing; kept the unsimplified graph"
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if ([i.name for i in slim.graph.input], [o.name for o in slim.graph.output]) != names:
        return model, "simplification renamed the graph inputs/outputs; kept the unsimplified graph"
    return slim, f"{before} -> {len(slim.graph.node)} nodes"
