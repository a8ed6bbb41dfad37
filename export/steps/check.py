"""Check: every node of the graph against the TensorRT target's ONNX-parser support (``check.check_model``), for
a TensorRT target; a graph that fails it is still written, and the run exits 1 before any engine is built."""

from __future__ import annotations

from .base import State, step


@step("check", reads=("proto",), writes=("failed",), applies=lambda state: state.target.is_tensorrt)
def check(state: State) -> None:
    from ..check import check_model

    with state.log.step("check") as s:
        result = check_model(state.proto, state.target.name)
        state.report.check = result
        s.note = "passed" if result else f"{len(result.issues)} issue(s) for {state.target.name}"
        if not result:
            s.status = "failed"
            state.failed = True
