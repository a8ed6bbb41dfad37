"""Verify: the graph against the ORIGINAL model on every runtime asked for (``verify.verify_on``), at the export
shape and, for a dynamic graph, at other valid shapes; then the model adapter's own check (Ultralytics
detectors: decoded boxes). A failure names where the graph goes wrong (``diagnose``) and the run exits 1 with
the graph written. When the simplified graph fails and the one before onnxslim passes, that one is kept.

A new check of the written graph goes here when it is part of parity, or in a step of its own after this one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import one_line
from .base import SEED, State, step

if TYPE_CHECKING:
    from ...runtime.parity import Rule
    from ..diagnose import Divergence
    from ..verify import VerifyResult


@step("verify", reads=("loaded", "exported", "proto", "unsimplified", "float_graph", "shape", "original", "model",
                       "example", "adapter", "rewrite_report"),
      writes=("verification", "proto", "failed"))
def verify(state: State) -> None:
    from ...runtime.parity import user_rule
    from ..inputs import ModelReference, verification_shapes
    from ..verify import verify_on
    from .export import portable_twin
    from .precision import fp16_graph

    options = state.options
    if not options.verify:
        state.log.skip("verify", "`verify=False`")
        return
    exported, adapter = state.exported, state.adapter
    assert exported is not None and adapter is not None
    with state.log.step("verify") as s:
        shapes = verification_shapes(state.shape, (exported.dynamic or {}).get(exported.input_name))
        rule = user_rule(state.precision, options.rtol, options.atol)
        reference = ModelReference(state.original, fp16_io=options.fp16_io, fp16_floor=state.precision == "fp16",
                                   seed=SEED)

        def run(graph: Any, precision: str = state.precision) -> VerifyResult:
            fp16 = precision == "fp16"  # the fp16 fallback verifies the float graph at fp32 (fp32 IO) first
            return verify_on(options.verify_with, reference if fp16 == options.fp16 else ModelReference(state.original),
                             graph, shapes, precision=precision, rule=user_rule(precision, options.rtol, options.atol),
                             portable_twin=lambda: portable_twin(state, fp16=fp16))

        graph = state.proto
        verification = run(graph)
        if not verification and state.unsimplified is not None:
            # No step may break parity silently: if the graph before onnxslim passes, that one is written.
            plain = fp16_graph(state.unsimplified, options, state.target) if options.fp16 else state.unsimplified
            retry = run(plain)
            if retry:
                why = ("the simplified graph failed verification, the unsimplified one passes: kept the "
                       f"unsimplified graph ({_failure_summary(verification)})")
                state.report.warnings.append(why)
                graph, verification = plain, replace(retry, notes=(*retry.notes, why))
                state.proto = graph
                s.status = "warning"
        if not verification and options.fp16 and state.float_graph is not None:  # blocks kept fp32 until it passes
            from ..fallback import fp16_fallback

            state.report.fp16, kept_graph, kept_verdict = fp16_fallback(
                state.float_graph, [r.name for r in state.rewrite_report.replaced] if state.rewrite_report else [],
                convert=lambda g, keep: fp16_graph(g, options, state.target, keep),
                verify=run, scoped=exported.model, progress=state.log.progress.message)
            if kept_graph is not None:
                graph, verification = kept_graph, kept_verdict
                state.proto = graph
        if not verification:
            failing = next(r for r in verification.runs if not r.comparison)
            verification = replace(verification, divergence=diagnose(state, verification, graph, failing.shape,
                                                                      rule))
            s.status = "failed"
            s.note = f"FAILED at {'x'.join(map(str, failing.shape))} on {failing.runtime}"
            state.failed = True
        else:
            kept = "; kept the unsimplified graph" if s.status == "warning" else ""
            s.note = f"{len(shapes)} shape(s) passed on {', '.join(options.verify_with)}{kept}"
        own = adapter.check(state.original, graph, state.shape, precision=state.precision,
                            fp16_io=options.fp16_io, images=options.images) if verification else None
        if verification and own is None and options.images is not None:
            state.report.warnings.append(f"`images` ({options.images}) feeds a detector's box check; this model "
                                         f"({adapter.name}) has none, so they were not used")
        if own is not None:
            state.report.detections = own
            s.note = f"{s.note}; {own.line()}"
            if not own:
                s.status = "failed"
                state.failed = True
    state.verification = state.report.verification = verification


def _failure_summary(verification: VerifyResult) -> str:
    run = next((r for r in verification.runs if not r.comparison), None)
    if run is None:
        return "failed"
    at = "x".join(map(str, run.shape))
    if run.comparison.errors:
        return f"at {at}: {run.comparison.errors[0]}"
    return f"at {at}: rel_l2={run.comparison.worst_rel_l2:.3e}"


def diagnose(state: State, verification: VerifyResult, graph: Any, shape: tuple[int, ...],
             rule: Rule) -> Divergence:
    """Where the failing graph goes wrong: the node the runtime failed in and its block, or else the first block
    whose output diverges, localised on ``graph`` itself (the one that failed)."""
    from ..diagnose import Divergence, has_scopes, locate_divergence

    original = state.original
    classes = {n: type(m).__name__ for n, m in original.named_modules()} if hasattr(original, "named_modules") \
        else {}
    replaced = [r.name for r in state.rewrite_report.replaced] if state.rewrite_report is not None else []
    failure = verification.failure
    if failure is not None and failure.node:
        block = failure.block
        # A block path that is not a module of the model (a rewritten twin's inner part): its nearest module.
        while block and block not in classes and "." in block:
            block = block.rsplit(".", 1)[0]
        line = failure.line(block, classes.get(block) if block else None)
        return Divergence(block, block_class=classes.get(block, "?") if block else None, shape=tuple(shape),
                          error=line, node=failure.node, op=failure.op, replaced=block in replaced)
    if not has_scopes(graph):
        return Divergence.none("the failing graph carries no module scopes (TorchScript exporter, or lost in a "
                               "later step)")
    try:
        return locate_divergence(original, graph, replaced, shape, precision=state.precision,
                                 fp16_io=state.options.fp16_io, seed=SEED, rule=rule)
    except Exception as e:  # localisation is a diagnostic: its failure must not hide the verdict
        return Divergence.none(f"localisation failed: {one_line(e)}")
