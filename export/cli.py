"""``blocks-export``: the command line. Parse, build ``ExportOptions``, call the library, print, set the exit code.

``blocks-export MODEL --to onnx`` works as written: ``export`` is the default subcommand (``main`` inserts it
when the first argument is not a subcommand). Exit codes: ``errors.py``. torch is imported only by the steps
that need it, so ``blocks-export model.onnx --to trt`` runs where torch is absent.
"""

from __future__ import annotations

# First, before the slow imports below: the program's signal handlers (see interrupts.py).
from . import interrupts  # isort: skip

import contextlib
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_args import (
    ArchKwargsOpt,
    ArchOpt,
    BatchOpt,
    DebugOpt,
    DeformConvOpt,
    InspectModelArg,
    InspectTargetOpt,
    JsonOpt,
    ModelArg,
    TargetOpt,
    TrustPickleOpt,
    parse_arch_kwargs,
)
from .cli_profile import print_profile, profile_chart, profile_written, with_profile
from .cli_run import PROG, run_command, stderr_console, stdout_console
from .cli_words import InFlagWords, error_text, flag_words, shown
from .errors import EXIT_FAILED, EXIT_SIGINT, EXIT_USAGE, Interrupted, UsageError
from .pipeline import Progress  # light: torch and onnx are imported by the steps, not here

COMMANDS = ("export", "inspect", "check", "val", "profile")
_TOP_LEVEL_FLAGS = ("--help", "-h")

app = typer.Typer(name=PROG, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Export PyTorch models with ACmix, GCNet, Coordinate Attention, SPD and DCN blocks to "
                       "ONNX and TensorRT, with parity checks.")


def with_default_command(argv: list[str]) -> list[str]:
    """Insert ``export`` unless the first argument names a subcommand or asks for top-level help."""
    if not argv or argv[0] in COMMANDS or argv[0] in _TOP_LEVEL_FLAGS:
        return argv
    return ["export", *argv]


class RichProgress(Progress):
    """Step progress on stderr: a spinner while a step runs, one line with its time when it ends."""

    _MARK = {"ok": "[green]✓[/]", "failed": "[red]✗[/]", "warning": "[yellow]![/]", "skipped": "[dim]-[/]"}

    def __init__(self, console: Any) -> None:
        self.console = console
        self._status: Any = None
        self._name = ""

    def start(self, name: str) -> None:
        self._stop()
        self._name = name
        self._status = self.console.status(f"{name} ...")
        self._status.start()

    def count(self, done: int, total: int) -> None:
        """A bar in place of the spinner while a step counts its items (``val``: images)."""
        if not isinstance(self._status, tuple):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._stop()
            bar = Progress(self._name, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=self.console, transient=True)
            bar.start()
            self._status = (bar, bar.add_task(self._name, total=total))
        bar, task = self._status
        bar.update(task, completed=done, total=total)

    def done(self, step: Any) -> None:
        self._stop()
        note = f"  [dim]{shown(step.note)}[/]" if step.note else ""
        self.console.print(f"{self._MARK.get(step.status, '?')} {step.name:<9} {step.seconds:7.2f}s{note}")

    def message(self, text: str) -> None:
        self.console.print(f"  [dim]{shown(text)}[/]")

    def _stop(self) -> None:
        if self._status is not None:
            (self._status[0] if isinstance(self._status, tuple) else self._status).stop()
            self._status = None


@app.command("export")
def export_command(
    model: ModelArg,
    to: Annotated[str, typer.Option("--to", help="onnx or trt")] = "onnx",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="output file (default: beside the input)")] = None,
    imgsz: Annotated[str | None, typer.Option("--imgsz", help="N or H,W (default: the model's own, else 640)")] = None,
    batch: BatchOpt = 1,
    channels: Annotated[int | None, typer.Option("--channels", help="input channels (default: found by running "
                                                 "the model: its first convolution's, else 3, else 1)")] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="dynamic batch, H and W")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default: the target's)")] = None,
    target: TargetOpt = None,
    deform_conv: DeformConvOpt = "auto",
    fp16: Annotated[bool, typer.Option("--fp16", help="mixed-precision fp16 graph")] = False,
    fp16_io: Annotated[bool, typer.Option("--fp16-io", help="with --fp16: fp16 inputs and outputs too")] = False,
    exporter: Annotated[str | None, typer.Option("--exporter", help="dynamo or torchscript (default: the "
                                                                   "target's: torchscript for jetpack5 and "
                                                                   "jetpack6.0, dynamo otherwise)")] = None,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="skip onnxslim")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the parity check (exit 0 proves less)")] = False,
    trust_pickle: TrustPickleOpt = False,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress or tables")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output")] = False,
    debug: DebugOpt = False,
    min_shape: Annotated[str | None, typer.Option("--min-shape", help="engine profile, e.g. 1x3x320x320")] = None,
    opt_shape: Annotated[str | None, typer.Option("--opt-shape", help="engine profile, e.g. 1x3x640x640")] = None,
    max_shape: Annotated[str | None, typer.Option("--max-shape", help="engine profile, e.g. 4x3x1280x1280")] = None,
    workspace_mb: Annotated[int | None, typer.Option("--workspace-mb", help="TensorRT workspace limit")] = None,
    verify_with: Annotated[list[str] | None, typer.Option(
        "--verify-with", help="runtime that verifies the graph: onnxruntime or openvino; repeat for both "
                              "(default: onnxruntime). OpenVINO verifies a DeformConv/plugin graph through the same "
                              "model exported with the portable lowering")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 Q/DQ graph (explicit quantization), calibrated on "
                                                      "--calib; the blocks' sensitive parts stay floating point")] = False,
    calib: Annotated[Path | None, typer.Option("--calib", help="with --int8: folder of calibration images like the "
                                                               "deployment's (some are held out to verify)")] = None,
    calib_count: Annotated[int | None, typer.Option("--calib-count", help="with --int8: images used to calibrate "
                                                                          "(default: 128, at most 80 %; the rest "
                                                                          "verify)")] = None,
    int8_budget: Annotated[float | None, typer.Option("--int8-budget", help="with --int8: largest output rel L2 vs "
                                                                            "the original; blocks over it stay "
                                                                            "floating point (default 0.05)")] = None,
    int8_budget_metric: Annotated[float | None, typer.Option(
        "--int8-budget-metric", help="with --int8: points of top-1 (mAP50-95 for a detector) the INT8 graph may "
                                     "lose against the original on the labelled held-out images (label-named "
                                     "subfolders in --calib); blocks stay floating point until it holds")] = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="your own parity tolerance: pass where |onnx - ref| "
                                               "<= atol + rtol*|ref| everywhere (default: the precision's rule; the "
                                               "model's own fp32 noise floor passes too)")] = None,
    atol: Annotated[float | None, typer.Option("--atol", help="absolute part of your own tolerance (see "
                                               "--rtol)")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="after a successful export, time each block of the "
                                                           "written ONNX on onnxruntime CPU (see `profile`)")] = False,
    val: Annotated[Path | None, typer.Option("--val", help="labelled images (class folders, or a YOLO dataset yaml "
                                                           "or images/ + labels/): top-1 / mAP of the original and "
                                                           "of every graph, and MODEL.val.png (see `val`)",
                                             show_default=False)] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Ultralytics detectors: folder of pictures the box "
                                                                 "check compares boxes on (its first 8 by name; "
                                                                 "default: synthetic images)",
                                                 show_default=False)] = None,
) -> None:
    """Export MODEL to ONNX (and a TensorRT engine with --to trt), then prove parity with the original."""
    def body() -> int:
        from .options import ExportOptions, parse_imgsz, parse_shape
        from .pipeline import run_export
        from .report import render, to_json

        options = ExportOptions(
            to=to, output=output, imgsz=parse_imgsz(imgsz) if imgsz else None, batch=batch, channels=channels, dynamic=dynamic,
            opset=opset, target=target, deform_conv=deform_conv, fp16=fp16, fp16_io=fp16_io, exporter=exporter,
            simplify=not no_simplify, verify=not no_verify, trust_pickle=trust_pickle, arch=arch,
            arch_kwargs=parse_arch_kwargs(arch_kwargs, arch), force=force,
            quiet=quiet, json=json_out,
            min_shape=parse_shape("--min-shape", min_shape) if min_shape else None,
            opt_shape=parse_shape("--opt-shape", opt_shape) if opt_shape else None,
            max_shape=parse_shape("--max-shape", max_shape) if max_shape else None, workspace_mb=workspace_mb,
            int8=int8, calib=calib, calib_count=calib_count, int8_budget=int8_budget,
            int8_budget_metric=int8_budget_metric,
            rtol=rtol, atol=atol, val=val, images=images,
            **({"verify_with": tuple(verify_with)} if verify_with else {}))
        progress = None if quiet else RichProgress(stderr_console())
        # Anything the model or a library prints goes to stderr: stdout carries only the report.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_export(model, options, progress)
        costs = profile_written(result, quiet=quiet or json_out) if profile and result.passed else None
        if json_out:
            text = to_json(result.report)  # the report file's document, in the library's words
            print(text if costs is None else with_profile(text, costs))
        elif not quiet:
            render(result.report, InFlagWords(stdout_console()))
        if costs is not None and not json_out:
            print_profile(costs, stdout_console())
        return result.exit_code

    run_command(body, debug=debug, json_out=json_out)


@app.command("inspect")
def inspect_command(
    model: InspectModelArg,
    imgsz: Annotated[str | None, typer.Option("--imgsz", help="N or H,W (default: the model's own, else 640)")] = None,
    batch: BatchOpt = 1,
    target: InspectTargetOpt = None,
    deform_conv: DeformConvOpt = "auto",
    trust_pickle: TrustPickleOpt = False,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the blocks and export hazards of MODEL and what export would do, without exporting."""
    def body() -> int:
        from .options import ExportOptions, parse_imgsz
        from .pipeline import inspect_file

        options = ExportOptions(imgsz=parse_imgsz(imgsz) if imgsz else None, batch=batch, target=target,
                                deform_conv=deform_conv, trust_pickle=trust_pickle, arch=arch,
                                arch_kwargs=parse_arch_kwargs(arch_kwargs, arch))
        with contextlib.redirect_stdout(sys.stderr):
            info = inspect_file(model, options, None if json_out else RichProgress(stderr_console()))
        if json_out:
            from .report import to_json

            print(to_json(info))
        else:
            out = stdout_console()

            for line in info.lines:
                out.print(shown(line))
        return 0

    run_command(body, debug=debug, json_out=json_out)


@app.command("check")
def check_command(
    model: Annotated[Path, typer.Argument(help="ONNX file to check", show_default=False)],
    target: Annotated[str, typer.Option("--target", help="TensorRT target profile to check against")] = "jetpack6",
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check every node of an ONNX file against a TensorRT version's ONNX parser support."""
    def body() -> int:
        from .check import check_model
        from .errors import InputError

        if not model.is_file():
            raise InputError(f"{model}: no such file; check the path")
        try:
            result = check_model(model, target)
        except ValueError as e:
            raise UsageError(str(e)) from e
        if json_out:
            from .report import to_json

            print(to_json({**result.as_dict(), "lines": result.lines()}))
        else:

            out = stdout_console()
            for line in result.lines():
                out.print(shown(line))
        return 0 if result else EXIT_FAILED

    run_command(body, debug=debug, json_out=json_out)


@app.command("val")
def val_command(
    graphs: Annotated[list[Path], typer.Argument(help="ONNX graphs to validate (fp32, fp16, INT8, ...)",
                                                 show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="a folder of class-named image folders (classification), a "
                                                      "YOLO dataset yaml, or a folder with images/ and labels/ "
                                                      "(detection)", show_default=False)],
    original: Annotated[Path | None, typer.Option("--model", help="the original PyTorch model: run on the same "
                                                                  "images, the reference of the change column")] = None,
    trust_pickle: TrustPickleOpt = False,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    batch: Annotated[int, typer.Option("--batch", help="images per run (a static-batch graph runs its own)")] = 1,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the metric per graph as a bar chart (PNG; "
                                                             "needs matplotlib)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --plot file")] = False,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress or table")] = False,
    debug: DebugOpt = False,
) -> None:
    """Top-1 (classifiers) or COCO mAP50-95 (detectors) of ONNX graphs, and of the original model with --model,
    on the same images through the runtime's preprocessing: one table, or --json."""
    def body() -> int:
        from .io import check_output_path
        from .report import to_json
        from .val import render, validate

        if plot is not None:
            from .val.plot import check_matplotlib

            check_output_path(plot, force)
            check_matplotlib()
        progress, bar = None, None
        if not (quiet or json_out):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            bar = Progress("validating", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=stderr_console(), transient=True)
            task = bar.add_task("val", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

        with contextlib.redirect_stdout(sys.stderr), (bar or contextlib.nullcontext()):
            report = validate(graphs, data, original=original, trust_pickle=trust_pickle, arch=arch,
                              arch_kwargs=parse_arch_kwargs(arch_kwargs, arch), batch=batch, progress=progress)
        if plot is not None:
            from .val.plot import metric_figure

            metric_figure(report, plot, force)
        if json_out:
            print(to_json({**report.as_dict(), "plot": str(plot) if plot is not None else None}))
        elif not quiet:
            out = stdout_console()
            render(report, out)
            if plot is not None:
                from rich.markup import escape

                out.print(f"figure: {escape(str(plot))}")
        return 0

    run_command(body, debug=debug, json_out=json_out)


@app.command("profile")
def profile_command(
    model: Annotated[Path, typer.Argument(help="ONNX file (written by blocks-export: its blocks are named)",
                                          show_default=False)],
    runs: Annotated[int, typer.Option("--runs", help="timed runs (after the warm-up)")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", help="untimed runs first")] = 3,
    threads: Annotated[int | None, typer.Option("--threads", help="onnxruntime intra-op threads (default: "
                                                                 "onnxruntime's)")] = None,
    shape: Annotated[str | None, typer.Option("--shape", help="input shape, e.g. 1x3x640x640 (default: the export "
                                                             "shape recorded in the graph)")] = None,
    engine: Annotated[Path | None, typer.Option("--engine", help="profile this TensorRT engine built from MODEL "
                                                                "(needs TensorRT and a GPU)")] = None,
    trt_profile: Annotated[Path | None, typer.Option("--trt-profile", help="a `trtexec --exportProfile` JSON of an "
                                                                          "engine built from MODEL: map it to "
                                                                          "blocks (no TensorRT needed)")] = None,
    trt_layer_info: Annotated[Path | None, typer.Option("--trt-layer-info", help="with --trt-profile: `trtexec "
                                                                                "--exportLayerInfo` JSON (the "
                                                                                "layers' ONNX node lists)")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="bar chart MODEL.profile.png beside MODEL (needs "
                                                               "matplotlib: extra `plot`)")] = True,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Time each block instance of MODEL (and the model outside blocks) with the runtime's profiler."""
    def body() -> int:
        from .errors import InputError
        from .options import parse_shape
        from .profile import ShapeNeeded, chart_path, profile_engine, profile_onnx, read_trtexec_profile

        for path in (model, engine, trt_profile, trt_layer_info):
            if path is not None and not path.is_file():
                raise InputError(f"{path}: no such file; check the path")
        if engine is not None and trt_profile is not None:
            raise UsageError("--engine and --trt-profile are two sources of one table; give one")
        if trt_layer_info is not None and trt_profile is None:
            raise UsageError("--trt-layer-info goes with --trt-profile (the profile it describes)")
        dims = parse_shape("--shape", shape) if shape else None
        try:
            if trt_profile is not None:
                costs = read_trtexec_profile(model, trt_profile, trt_layer_info)
            elif engine is not None:
                costs = profile_engine(engine, model, runs=runs, warmup=warmup, shape=dims)
            else:
                with contextlib.redirect_stdout(sys.stderr):
                    costs = profile_onnx(model, runs=runs, warmup=warmup, threads=threads, shape=dims)
        except ShapeNeeded as e:
            raise UsageError(f"{e}: give it with --shape, e.g. --shape 1x3x640x640") from e
        except ValueError as e:
            raise UsageError(str(e)) from e
        if plot:
            profile_chart(costs, chart_path(model))
        if json_out:
            import json

            print(json.dumps(costs.as_dict(), indent=2))
        else:
            print_profile(costs, stdout_console())
        return 0

    run_command(body, debug=debug, json_out=json_out)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``blocks-export``)."""
    # typer >= 0.20 vendors click and exports no public name for click's UsageError; earlier releases use click.
    try:
        from typer._click.exceptions import UsageError as ClickUsageError
    except ImportError:
        from click.exceptions import UsageError as ClickUsageError  # type: ignore[no-redef]

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        interrupts.arm()  # a signal that came while this module was imported ends the run here
        # Without standalone mode, click returns the code of a typer.Exit instead of exiting.
        rc = app(args=with_default_command(args), prog_name=PROG, standalone_mode=False)
    except ClickUsageError as e:
        # click would print a usage block; a refusal here is one line, like every other one.
        command = e.ctx.info_name if e.ctx is not None and e.ctx.info_name != PROG else "export"
        print(f"{PROG}: error: {e.format_message()} (see {PROG} {command} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except (typer.Abort, KeyboardInterrupt, Interrupted):  # a signal before a command body runs (parsing)
        signum = interrupts.received() or signal.SIGINT
        print(f"{PROG}: error: {interrupts.message_for(signum)}", file=sys.stderr)
        raise SystemExit(interrupts.exit_code_for(signum)) from None
    pending = interrupts.received()
    if pending is not None and rc == EXIT_SIGINT and not interrupts.reported():  # typer's silent exit 130
        print(f"{PROG}: error: {interrupts.message_for(pending)}", file=sys.stderr)
        raise SystemExit(interrupts.exit_code_for(pending))
    raise SystemExit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()

__all__ = ["EXIT_USAGE", "app", "error_text", "flag_words", "main", "with_default_command"]
