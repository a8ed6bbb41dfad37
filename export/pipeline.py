"""The export pipeline: it only sequences the steps of ``export/steps/`` (one module each) and decides what gets
written.

    PyTorch model:  load -> prepare -> [val data] -> rewrite -> export -> simplify -> [fp16] -> verify -> write
                    -> [check] -> [val] [-> engine -> engine parity]
                                                                 (int8: + calibration images, int8 after verify)
    ONNX model:     load -> read onnx -> check -> engine -> engine parity

Nothing is written before the output paths have been checked (``steps/plan.py``); the ONNX file and its report
land together or not at all (``io.OutputUnit``), the engine and its files as one unit (``trt/build.py``). A
refusal (bad input or options) raises an ``ExportError`` before anything is written; a failed verification or
target check still writes the ONNX file and a report that says FAILED (exit code 1), and builds no engine.

torch is imported lazily: an ``.onnx`` input to ``to=trt`` never imports it (a Jetson may have none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import EXIT_FAILED, EXIT_OK, UsageError
from .io import OutputUnit, output_unit
from .options import ExportOptions
from .report import Report, StepRecord
from .steps import check, engine, export, precision, prepare, rewrite, simplify, val, verify, write
from .steps import int8 as int8_steps
from .steps.base import Progress, State, Step, StepLog, captured_warnings, run_steps
from .steps.inspect import inspect_file
from .steps.plan import (
    check_options,
    check_outputs,
    default_output,
    report_force,
    report_path_for,
    resolve_lowering,
    resolve_target,
)

# The sequences. A new step is a module of export/steps/ and one entry here.
PYTORCH_STEPS: tuple[Step, ...] = (prepare.prepare, val.val_data, rewrite.rewrite, export.export, simplify.simplify,
                                   precision.fp16, verify.verify, write.write, check.check, val.val)
INT8_STEPS: tuple[Step, ...] = (prepare.prepare, int8_steps.calibration, val.val_data, rewrite.rewrite, export.export,
                                simplify.simplify, int8_steps.fp16_in_int8, verify.verify, int8_steps.quantize,
                                write.write, check.check, val.val)
ENGINE_STEPS: tuple[Step, ...] = (engine.engine, engine.engine_parity)
ONNX_STEPS: tuple[Step, ...] = (prepare.read_onnx, check.check)  # an .onnx input, to=trt
ONNX_ENGINE_STEPS: tuple[Step, ...] = (engine.engine, engine.engine_parity_onnx)


@dataclass
class ExportResult:
    """What one run produced. ``report`` is the JSON report (also written beside the output)."""

    exit_code: int
    report: Report
    output: Path | None = None
    report_path: Path | None = None
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK


def graph_steps(options: ExportOptions) -> tuple[Step, ...]:
    """The steps from a loaded PyTorch model to its written (and checked) ONNX graph."""
    return INT8_STEPS if options.int8 else PYTORCH_STEPS


def run_export(source: Path, options: ExportOptions, progress: Progress | None = None) -> ExportResult:
    """Run every step for ``source``; ``ExportError`` for refusals, an ``ExportResult`` otherwise."""
    source = Path(source)
    target = resolve_target(options)
    lowering = resolve_lowering(options, target)
    check_options(options, target, lowering)
    if options.int8:
        int8_steps.check_options(options, target, lowering)
    if options.val is not None and source.suffix.lower() == ".onnx":
        raise UsageError(f"`val` scores the graphs an export makes from a PyTorch model; {source} is a graph "
                         "already: score it with the `blocks-export val` command")
    if options.to == "onnx" and source.suffix.lower() == ".onnx":
        raise UsageError(f"{source} is already ONNX; use `to=trt` to build an engine, or `blocks-export check`")
    output = default_output(source, options)
    onnx_out = output if options.to == "onnx" else output.with_suffix(".onnx")
    check_outputs(source, output, onnx_out, options)
    if options.verify:  # a missing runtime is refused (exit 3) before anything is loaded or written
        from .runners import require

        for runtime in options.verify_with:
            require(runtime)
    report = Report(source=str(source), output=str(output), target=target.name, deform_conv=lowering,
                    precision="fp16" if options.fp16 else "fp32")
    state = State(source, options, target, lowering, output, onnx_out, report, StepLog(progress))
    prepare.load(state)
    assert state.loaded is not None
    if state.loaded.kind == "onnx":
        if options.int8:
            int8_steps.refuse_onnx_input(source)
        run_steps(ONNX_STEPS, state)
        if not state.failed:
            run_steps(ONNX_ENGINE_STEPS, state)
        return _finish(state, output, report_force(options, source, output))
    # The ONNX file (+ external data) and its report land together or not at all (io.OutputUnit).
    with output_unit(options.force) as state.unit:
        with captured_warnings(report, state.log.progress):
            run_steps(graph_steps(options), state)
        if state.failed or options.to == "onnx":
            return _finish(state, output if options.to == "onnx" else onnx_out, options.force, state.unit)
        state.unit.commit()  # the engine is built from the ONNX file: it is in place first
    with captured_warnings(report, state.log.progress):
        run_steps(ENGINE_STEPS, state)
    return _finish(state, output, options.force)


def _finish(state: State, output: Path, force: bool = True, unit: OutputUnit | None = None) -> ExportResult:
    """Status and exit code on the report, which is written beside ``output`` (with the unit's files, if any)."""
    from .report import to_json, write_report

    report, failed = state.report, state.failed
    # --no-verify: exit 0, but the report does not claim a parity it did not check.
    report.status = "FAILED" if failed else ("PASSED" if report.verification is not None else "UNVERIFIED")
    report.exit_code = EXIT_FAILED if failed else EXIT_OK
    report.steps = list(state.log.steps)
    path = report_path_for(output)
    report.report = str(path)
    if unit is None:
        write_report(report, path, force)
    else:  # the report joins the unit's files (the ONNX), then all land at once
        unit.write_bytes(path, (to_json(report) + "\n").encode("utf-8"))
        unit.commit()
    return ExportResult(report.exit_code, report, output, path, state.log.steps)


__all__ = ["ENGINE_STEPS", "INT8_STEPS", "ONNX_ENGINE_STEPS", "ONNX_STEPS", "PYTORCH_STEPS", "ExportResult", "Progress",
           "check_options", "graph_steps", "resolve_lowering", "resolve_target",
           "inspect_file", "run_export"]
