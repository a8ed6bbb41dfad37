"""Engine (``to=trt``): the TensorRT engine built from the written (or input) ONNX, with its sidecar and EPContext
model (``trt.build.build_engine``); then engine parity: the engine run on the verification inputs its profile
takes and compared with the original model (an ``.onnx`` input: with onnxruntime on that ONNX), by the same
``verify`` as every graph. Skipped, with the reason, where the engine cannot run here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExportFailed, UsageError
from .base import SEED, State, step
from .prepare import DEFAULT_IMGSZ

if TYPE_CHECKING:
    from ..inputs import ReferenceSource
    from ..options import ExportOptions
    from ..trt.build import EngineResult


@step("engine", reads=("onnx_path",), writes=("engine",))
def engine(state: State) -> None:
    """Build the engine; the builder also writes its sidecar JSON and the EPContext model (``*_ctx.onnx``)."""
    from ..trt.api import EngineBuildError
    from ..trt.build import build_engine

    options, report, onnx_path = state.options, state.report, state.onnx_path
    assert onnx_path is not None
    profile = engine_profile(onnx_path, options)
    with state.log.step("engine") as s:
        try:
            # TensorRTUnavailable (a RuntimeMissing) goes up as it is: the CLI spells its rebuild facts.
            report.engine = state.engine = build_engine(
                onnx_path, state.output, fp16=options.fp16, target=state.target.name, profile=profile,
                workspace_mb=options.workspace_mb, progress=state.log.progress.message,
                checked=report.check is not None, force=options.force)
        except EngineBuildError as e:
            raise ExportFailed(str(e)) from e
        except ValueError as e:
            raise UsageError(str(e)) from e
        s.note = str(state.output)


@step("engine parity", reads=("engine", "verification", "original"), writes=("failed",))
def engine_parity(state: State) -> None:
    """The engine against the original model (fp32, the precision's rule) at the verification shapes its profile
    takes (else its opt shape)."""
    from ..inputs import ModelReference

    built = state.engine
    assert built is not None
    fits = _profile_fits(built)
    runs = state.verification.runs if state.verification is not None else ()
    shapes = [s for s in dict.fromkeys(tuple(r.shape) for r in runs) if fits(s)]
    shapes = shapes or [tuple(next(iter(built.sidecar.profiles[0].values()))["opt"])]
    _compare(state, built, ModelReference(state.original, float64=False, fp16_io=state.options.fp16_io, seed=SEED),
             shapes)


@step("engine parity", reads=("engine", "onnx_path"), writes=("failed",))
def engine_parity_onnx(state: State) -> None:
    """An ``.onnx`` input's engine against onnxruntime on that ONNX, at the profile's opt shapes."""
    from ..inputs import GraphReference

    built = state.engine
    assert built is not None and state.onnx_path is not None
    profile = built.sidecar.profiles[0]
    inputs = [(str(i["name"]), str(i["dtype"]), profile[i["name"]]["opt"]) for i in built.sidecar.inputs]
    _compare(state, built, GraphReference(state.onnx_path, inputs, seed=SEED), [tuple(inputs[0][2])])


def _compare(state: State, built: EngineResult, reference: ReferenceSource, shapes: list[tuple[int, ...]]) -> None:
    """``verify(reference, engine runner, shapes)`` as the step "engine parity"; skipped where the engine cannot
    run here (no TensorRT, GPU or device memory), or with ``verify=False``."""
    from ..runners import EngineRunner
    from ..trt.api import TensorRTUnavailable
    from ..verify import verify

    if not state.options.verify:
        state.log.skip("engine parity", "`verify=False`")
        return
    runner = EngineRunner(built.engine_path, [str(i["name"]) for i in built.sidecar.inputs],
                          [str(o["name"]) for o in built.sidecar.outputs])
    with state.log.step("engine parity") as s:
        try:
            result = verify(reference, runner, shapes, precision=built.precision)
        except TensorRTUnavailable as e:
            s.status, s.note = "skipped", e.reason
            return
        state.report.engine_parity = result
        s.note = f"{sum(bool(r.comparison) for r in result.runs)}/{len(result.runs)} shape(s) match {reference.name}"
        if not result:
            s.status = "failed"
            state.failed = True


def _profile_fits(built: EngineResult) -> Callable[[tuple[int, ...]], bool]:
    first = next(iter(built.sidecar.profiles[0].values()))
    return lambda shape: len(shape) == len(first["min"]) and all(
        a <= d <= b for a, d, b in zip(first["min"], shape, first["max"], strict=True))


def engine_profile(onnx_path: Path, options: ExportOptions) -> dict[str, dict[str, list[int]]] | None:
    """One optimisation profile {input: {"min", "opt", "max"}} for graphs with dynamic input dims."""
    import onnx

    from ..metadata import read_metadata

    model = onnx.load(str(onnx_path), load_external_data=False)
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    given = (options.min_shape, options.opt_shape, options.max_shape)
    if any(given):
        if not all(given):
            raise UsageError("`min_shape`, `opt_shape` and `max_shape` go together; give all three")
        for flag, sh in zip(("`min_shape`", "`opt_shape`", "`max_shape`"), given, strict=True):
            assert sh is not None
            if len(sh) != len(dims) or any(d is not None and d != v for d, v in zip(dims, sh, strict=True)):
                raise UsageError(f"{flag} {'x'.join(map(str, sh))} does not fit input {inp.name} "
                                 f"{['?' if d is None else d for d in dims]}")
        lo, opt, hi = (list(g or ()) for g in given)
        return {inp.name: {"min": lo, "opt": opt, "max": hi}}
    if all(d is not None for d in dims):
        return None
    h, w = options.imgsz or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
    recorded = read_metadata(model).get("export_shape")
    if options.imgsz is None and isinstance(recorded, dict) and recorded:
        shape = next(iter(recorded.values()))
        h, w = int(shape[2]), int(shape[3])
    c = dims[1] or 3
    return {inp.name: {"min": [1, c, h, w], "opt": [options.batch, c, h, w], "max": [options.batch, c, h, w]}}
