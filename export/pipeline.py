"""The export pipeline: load -> rewrite -> export -> simplify -> [fp16] -> verify -> write -> [check] -> [engine].

One function per step lives in its own module; this one only sequences them, times them and decides what
gets written. Nothing is written before the output path has been checked; the ONNX file, its report and the
engine are each written atomically (``export/io.py``). A refusal (bad input or options) raises an
``ExportError`` before anything is written; a failed verification or target check still writes the ONNX
file and a report that says FAILED (exit code 1).

torch is imported lazily: an ``.onnx`` input to ``--to trt`` never imports it (a Jetson may have none).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    EXIT_FAILED,
    EXIT_OK,
    ExportFailed,
    InputError,
    OutputError,
    UsageError,
    one_line,
)
from .io import OutputUnit, atomic_folder_files, atomic_path, check_output_path, output_unit
from .load import LoadedModel, load_model
from .options import ExportOptions
from .report import InspectReport, Report, StepRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from blocks_export.blocks.rewrite import RewriteReport

    from .diagnose import Divergence
    from .inputs import ReferenceSource
    from .int8 import CalibrationSet, Int8Result
    from .onnx_export import OnnxExport
    from .targets import Target
    from .trt.build import EngineResult
    from .ultralytics import UltralyticsInfo
    from .verify import VerifyResult

DEFAULT_IMGSZ = 640
EXTERNAL_DATA_BYTES = 2_000_000_000  # protobuf cannot serialise a message of 2 GiB or more
SEED = 0
TRT_DEFAULT_TARGET = "jetpack6"  # lowest TensorRT 10 profile: its ONNX also parses on newer TensorRT 10/11


class Progress:
    """Receives step events; the CLI renders them, the library default ignores them."""

    def start(self, name: str) -> None:  # noqa: B027 (optional hook)
        pass

    def done(self, step: StepRecord) -> None:  # noqa: B027 (optional hook)
        pass

    def message(self, text: str) -> None:  # noqa: B027 (optional hook: progress inside a long step)
        pass

    def count(self, done: int, total: int) -> None:  # noqa: B027 (optional hook: a long step's items done)
        pass


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


class _Runner:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress or Progress()
        self.steps: list[StepRecord] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        s = StepRecord(name)
        self.progress.start(name)
        t0 = time.perf_counter()
        try:
            yield s
        except BaseException:
            s.status, s.seconds = "failed", time.perf_counter() - t0
            self.steps.append(s)
            self.progress.done(s)
            raise
        s.seconds = time.perf_counter() - t0
        self.steps.append(s)
        self.progress.done(s)

    def skip(self, name: str, why: str) -> None:
        s = StepRecord(name, "skipped", 0.0, why)
        self.steps.append(s)
        self.progress.done(s)


def resolve_target(options: ExportOptions) -> Target:
    from .targets import get_target

    name = options.target
    if name is None and options.to == "trt":
        name = TRT_DEFAULT_TARGET
    try:
        return get_target(name)
    except ValueError as e:
        raise UsageError(f"`target`: {e}") from e


def resolve_lowering(options: ExportOptions, target: Target) -> str:
    return target.deform_conv if options.deform_conv == "auto" else options.deform_conv


def check_options(options: ExportOptions, target: Target, lowering: str) -> None:
    """Refuse contradictory options before anything is loaded."""
    if options.deform_conv != "auto" and target.is_tensorrt and target.max_opset:
        from .deform_conv import MIN_OPSET

        if MIN_OPSET.get(lowering, 0) > target.max_opset:  # the written graph could only fail the target check
            raise UsageError(f"`deform_conv={lowering}` `target={target.name}`: TensorRT {target.trt_version}'s ONNX "
                             f"parser reads opsets up to {target.max_opset}, this lowering needs opset "
                             f"{MIN_OPSET[lowering]}; use `deform_conv={target.deform_conv}` (the target's)")
        from .trt_ops import BUILTIN_PLUGINS

        if lowering == "plugin" and not BUILTIN_PLUGINS["ModulatedDeformConv2d"].get(target.parser_table, {"?"}):
            raise UsageError(f"`deform_conv=plugin` `target={target.name}`: TensorRT {target.trt_version} ships no "
                             f"ModulatedDeformConv2d plugin; use `deform_conv={target.deform_conv}` (the target's)")
    if options.deform_conv != "auto" and options.opset is not None:
        from .deform_conv import check_lowering

        try:
            check_lowering(lowering, options.opset)
        except ValueError as e:
            raise UsageError(f"`deform_conv={lowering}` `opset={options.opset}`: {e}") from e
    if options.int8 and lowering == "plugin":
        raise UsageError(f"`int8=True` with `target={target.name}` (DeformConv as the TensorRT plugin node): "
                         "calibration runs onnxruntime, which has no kernel for it; add `deform_conv=std` or "
                         "`deform_conv=portable`")


def default_output(source: Path, options: ExportOptions) -> Path:
    if options.output is not None:
        return Path(options.output)
    return source.with_suffix(".engine" if options.to == "trt" else ".onnx")


def report_path_for(output: Path) -> Path:
    """``model.onnx`` -> ``model.report.json``."""
    return output.with_suffix(".report.json")


def channel_candidates(model: Any) -> list[int]:
    """Input channels to try, best guess first: the first convolution's ``in_channels``, divided by the
    space-to-depth factor where a ``PixelUnshuffle``/space_to_depth comes first (``r*r``, or 4 for the sliced
    ``x[..., ::2, ::2]`` form, which no module announces), then 3, then 1."""
    import torch

    from blocks_export.blocks import channel_factor

    first, factors = None, []
    for m in model.modules():
        if isinstance(m, torch.nn.PixelUnshuffle):
            factors.append(int(m.downscale_factor) ** 2)
        elif (factor := channel_factor(m)) > 1:  # a space-to-depth block, by class or recogniser
            factors.append(factor)
        elif isinstance(m, torch.nn.modules.conv._ConvNd):
            first = int(m.in_channels)
            break
    out: list[int] = []
    if first is not None:
        out += [first // f for f in factors if first % f == 0] + [first]
        out += [first // f for f in (4, 16) if first % f == 0]
    seen: list[int] = []
    for c in [*out, 3, 1]:
        if c >= 1 and c not in seen:
            seen.append(c)
    return seen


PLAIN_HW = (128, 128)  # a size most image models take: tells a channel problem from a size problem


def find_input_shape(model: Any, options: ExportOptions, hw: tuple[int, int], path: Path) -> tuple[int, ...]:
    """``(batch, C, H, W)`` the model runs on: ``--channels`` when given, else the first of
    ``channel_candidates`` that the model takes (one run each)."""
    import torch

    from .inputs import make_input, torch_outputs

    if options.channels is not None or not isinstance(model, torch.nn.Module):
        shape = (options.batch, options.channels or 3, *hw)
        probe_input(model, shape, path, "`channels`/`imgsz`/`batch`" if options.channels else "`imgsz`/`batch`")
        return shape
    candidates = channel_candidates(model)
    errors: list[str] = []
    for c in candidates:
        shape = (options.batch, c, *hw)
        try:
            if torch_outputs(model, make_input(shape, SEED)):
                return shape
        except Exception as e:
            errors.append(one_line(e))
        else:
            raise InputError(f"{path}: the model returns no tensor; nothing to export")
    # Nothing ran at this size: if the best guess runs at a plain size the size is at fault, else the channels.
    try:
        runs_elsewhere = bool(torch_outputs(model, make_input((options.batch, candidates[0], *PLAIN_HW), SEED)))
    except Exception:
        runs_elsewhere = False
    if runs_elsewhere:
        probe_input(model, (options.batch, candidates[0], *hw), path)
    chans = ", ".join(map(str, candidates))
    raise InputError(f"{path}: found no input channels the model runs on (tried {chans}; first error: "
                     f"{errors[0]}); give the input channels with `channels=N`")


def export_imgsz(options: ExportOptions, loaded: LoadedModel) -> tuple[int, int]:
    if options.imgsz is not None:
        return options.imgsz
    size = loaded.metadata.get("preprocess", {}).get("size") if isinstance(loaded.metadata.get("preprocess"), dict) else None
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    return DEFAULT_IMGSZ, DEFAULT_IMGSZ


def probe_input(model: Any, shape: tuple[int, ...], path: Path, flags: str = "`imgsz`/`batch`") -> None:
    """Run the model once at the export shape; a shape it cannot take is bad input, said in one line."""
    import torch

    from .inputs import make_input, torch_outputs

    try:
        outs = torch_outputs(model, make_input(shape, SEED))
    except Exception as e:
        dims = "x".join(map(str, shape))
        raise InputError(f"{path}: the model cannot run on an input of shape {dims} ({one_line(e)}); "
                         f"choose another {flags}") from e
    if not outs:
        raise InputError(f"{path}: the model returns no tensor; nothing to export")
    del torch


def rewrite(model: Any, example: Any) -> tuple[Any, RewriteReport]:
    """``blocks.rewrite_model``; the rewritten copy and its report."""
    from blocks_export.blocks import rewrite_model

    return rewrite_model(model, example)


def save_onnx(model: Any, path: Path, force: bool = True, unit: OutputUnit | None = None) -> list[Path]:
    """Write ``model`` atomically; over 2 GB its tensors go to ``<name>.data`` beside it (external data).
    With ``unit``, the files are only staged in it: they land when the unit is committed (with the report)."""
    import onnx

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    data_name = path.name + ".data"
    if unit is not None:
        if size < EXTERNAL_DATA_BYTES:
            onnx.save_model(model, str(unit.stage(path)))
            return [path]
        tmpdir = unit.stage_folder(path.parent, [data_name, path.name])
        onnx.save_model(model, str(tmpdir / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        return [path, path.parent / data_name]
    if size < EXTERNAL_DATA_BYTES:
        with atomic_path(path, force) as tmp:
            onnx.save_model(model, str(tmp))
        return [path]
    with atomic_folder_files(path.parent, [data_name, path.name], force) as tmpdir:
        onnx.save_model(model, str(tmpdir / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    return [path, path.parent / data_name]


def run_export(source: Path, options: ExportOptions, progress: Progress | None = None) -> ExportResult:
    """Run every step for ``source``; ``ExportError`` for refusals, an ``ExportResult`` otherwise."""
    source = Path(source)
    target = resolve_target(options)
    lowering = resolve_lowering(options, target)
    check_options(options, target, lowering)
    if options.val is not None and source.suffix.lower() == ".onnx":
        raise UsageError(f"`val` scores the graphs an export makes from a PyTorch model; {source} is a graph "
                         "already: score it with the `blocks-export val` command")
    if options.to == "onnx" and source.suffix.lower() == ".onnx":
        raise UsageError(f"{source} is already ONNX; use `to=trt` to build an engine, or `blocks-export check`")
    output = default_output(source, options)
    if output.resolve() == source.resolve():
        raise OutputError(f"output {output} is the input file; choose another `output`")
    onnx_out = output if options.to == "onnx" else output.with_suffix(".onnx")
    check_output_path(output, options.force, derived=True)
    # A user's file named like the report is an output too; the report of the ONNX input that this run
    # continues (m.onnx -> m.engine share m.report.json) is replaced with the run's own, as before.
    check_output_path(report_path_for(output), _report_force(options, source, output))
    if options.to == "trt" and source.suffix.lower() != ".onnx":
        check_output_path(onnx_out, options.force, derived=True)
        check_output_path(report_path_for(onnx_out), options.force)
    if options.to == "trt":  # the engine's sidecar and EPContext model are outputs too (the cache is not)
        from .trt.sidecar import default_paths

        for path in default_paths(output)[:2]:
            if path.resolve() != source.resolve():  # an EPContext input: the check step decides on it
                check_output_path(path, options.force)

    if options.val is not None:  # the data's layout, before the model is loaded; its labels once the model is
        from .val.step import check_val_path, figure_path

        check_val_path(options.val)
        check_output_path(figure_path(output), options.force)
    if options.verify:  # a missing runtime is refused (exit 3) before anything is loaded or written
        from .runners import require

        for runtime in options.verify_with:
            require(runtime)
    runner = _Runner(progress)
    report = Report(source=str(source), output=str(output), target=target.name, deform_conv=lowering,
                    precision=("int8+fp16" if options.fp16 else "int8") if options.int8 else
                    "fp16" if options.fp16 else "fp32")
    with runner.step("load") as s:
        loaded = load_model(source, trust_pickle=options.trust_pickle, arch=options.arch,
                            arch_kwargs=options.arch_kwargs)
        s.note = loaded.source
    report.source_sha256 = loaded.sha256
    report.warnings += loaded.warnings
    if loaded.kind == "onnx":
        if options.int8:
            raise UsageError(f"{source} is already ONNX: `int8=True` quantizes while exporting a PyTorch model")
        return _onnx_to_engine(loaded, options, target, output, runner, report)
    ctx = _Context(loaded, options, target, lowering, output, onnx_out, runner, report)
    # The ONNX file (+ external data) and its report land together or not at all (io.OutputUnit).
    with output_unit(options.force) as ctx.unit:
        with captured_warnings(report, runner.progress):
            for step in (_prepare, _calibration, _val_data, _rewrite, _export, _simplify, _fp16, _verify, _int8,
                         _write, _check, _val):
                step(ctx)
        if ctx.failed or options.to == "onnx":
            return _finish(report, output if options.to == "onnx" else onnx_out, runner, ctx.failed, options.force,
                           ctx.unit)
        ctx.unit.commit()  # the engine is built from the ONNX file: it is in place first
    with captured_warnings(report, runner.progress):
        _engine_step(onnx_out, output, options, target, runner, report)
        failed = _engine_parity_step(options, runner, report, lambda engine: _torch_reference(ctx, engine))
    return _finish(report, output, runner, failed, options.force)


@contextlib.contextmanager
def captured_warnings(report: Report, progress: Progress) -> Iterator[None]:
    """Python warnings of the libraries the steps call (torch.onnx, onnxconverter-common's fp16 conversion, ...)
    go into ``report.library_warnings`` (each distinct one once), not onto stderr; one progress line counts them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # each warning once per place it is raised from
        try:
            yield
        finally:
            seen = dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())[:300]}" for w in caught)
            report.library_warnings += [w for w in seen if w not in report.library_warnings]
            if seen:
                progress.message(f"{len(seen)} warning(s) from libraries, recorded in the report "
                                 "(library_warnings)")


@dataclass
class _Context:
    """What the steps of a PyTorch export share; each step reads what earlier ones set."""

    loaded: LoadedModel
    options: ExportOptions
    target: Target
    lowering: str
    output: Path
    onnx_out: Path
    runner: _Runner
    report: Report
    shape: tuple[int, ...] = ()
    example: Any = None  # torch.Tensor [N, C, H, W]
    model: Any = None  # the model to export: the rewritten copy, or the loaded model
    rewrite_report: RewriteReport | None = None
    exported: OnnxExport | None = None
    proto: Any = None  # onnx.ModelProto being built
    unsimplified: Any = None  # the graph before onnxslim, when it changed it (the fallback of ``_verify``)
    float_proto: Any = None  # ``fp16=True``: the graph the fp16 pass converted (the fp16 fallback's source)
    verification: VerifyResult | None = None
    ultra: UltralyticsInfo | None = None  # an Ultralytics model, exported in Ultralytics' ONNX layout
    calibration: CalibrationSet | None = None  # ``int8=True``: calibration and held-out images
    int8: Int8Result | None = None
    failed: bool = False
    unit: OutputUnit | None = None  # where _write stages the ONNX file; _finish adds the report and commits
    float_graph: Any = None  # the graph before the fp16 / INT8 passes (``val=DATA`` scores it too)
    val_data: Any = None  # ``val=DATA``: the validation set, read and checked before the export

    @property
    def precision(self) -> str:
        return "fp16" if self.options.fp16 else "fp32"


def _prepare(ctx: _Context) -> None:
    """The export shape, and one run of the model at it (a shape the model cannot take is bad input)."""
    from .inputs import make_input

    original = ctx.loaded.model
    h, w = export_imgsz(ctx.options, ctx.loaded)
    shape: tuple[int, ...] = (ctx.options.batch, ctx.options.channels or 3, h, w)
    if ctx.loaded.kind == "exported_program":  # its static dims are fixed; only its dynamic ones follow options
        shape = tuple(s if s > 0 else d for s, d in zip(_program_input_shape(original), shape, strict=True))
    else:
        if ctx.loaded.kind == "module":
            from . import ultralytics

            if ultralytics.task_of(original) is not None:  # exported as `yolo export format=onnx` writes it
                original, ctx.ultra = ultralytics.prepare(original, imgsz=(h, w), batch=ctx.options.batch,
                                                          dynamic=ctx.options.dynamic, half=ctx.options.fp16)
                ctx.loaded.model = original
        shape = find_input_shape(original, ctx.options, (h, w), ctx.loaded.path)
    ctx.shape, ctx.example, ctx.model = shape, make_input(shape, SEED), original
    ctx.report.export_shape = list(shape)


def _rewrite(ctx: _Context) -> None:
    from blocks_export.blocks import RewriteReport
    from blocks_export.blocks.hazards import SIZE_KINDS

    if ctx.loaded.kind != "module":
        ctx.runner.skip("rewrite", "block rewrites cannot apply to a TorchScript or torch.export input")
        ctx.report.blocks = RewriteReport()
        return
    with ctx.runner.step("rewrite") as s:
        try:
            ctx.model, ctx.rewrite_report = rewrite(ctx.loaded.model, ctx.example)
        except Exception as e:
            raise ExportFailed(f"block rewriting failed: {one_line(e)}") from e
        s.note = f"{len(ctx.rewrite_report.replaced)} block(s) replaced"
    # A size hazard makes a graph wrong at other input sizes: a warning only where the graph takes other sizes.
    ctx.report.warnings += [f"{h.name}: {h.kind}: {h.detail}" for h in ctx.rewrite_report.hazards
                            if ctx.options.dynamic or h.kind not in SIZE_KINDS]
    ctx.report.blocks = ctx.rewrite_report


def _export(ctx: _Context) -> None:
    import torch

    from .onnx_export import to_onnx

    options, target = ctx.options, ctx.target
    # The target's exporter unless the user chose one; a torch.export program only has the dynamo one.
    exporter = options.exporter or ("dynamo" if ctx.loaded.kind == "exported_program" else target.exporter)
    # With --dynamic the ranges are probed on the original module below: the TorchScript exporter then needs no
    # torch.export trace of its own for them (about half its export time).
    probed = options.dynamic and isinstance(ctx.loaded.model, torch.nn.Module)
    with ctx.runner.step("export") as s:
        exported = to_onnx(ctx.model, ctx.example, opset=options.opset or target.opset,
                           opset_fixed=options.opset is not None, lowering=ctx.lowering, exporter=exporter,
                           dynamic=options.dynamic, decompose_layernorm=target.layernorm == "decompose",
                           derive_ranges=not probed)
        if ctx.ultra is not None:
            from . import ultralytics

            exported = ultralytics.name_io(exported, ctx.ultra)
        s.note = f"{exported.exporter}, opset {exported.opset}, {len(exported.model.graph.node)} nodes"
    if probed and exported.dynamic:
        from .dynamic import probe_note, probe_ranges

        # The ranges the ORIGINAL model accepts (probed), not torch.export's guards on the twins.
        exported.dynamic = {exported.input_name: probe_ranges(ctx.loaded.model, ctx.shape)}
        exported.notes = [n for n in exported.notes if not n.startswith("dynamic sizes from")]
        exported.notes.append(probe_note(exported.dynamic[exported.input_name]))
    ctx.exported, ctx.proto = exported, exported.model
    ctx.report.opset, ctx.report.exporter, ctx.report.dynamic = exported.opset, exported.exporter, exported.dynamic
    ctx.report.notes = list(exported.notes)


def _simplify(ctx: _Context) -> None:
    from .simplify import simplify

    if not ctx.options.simplify:
        ctx.runner.skip("simplify", "`simplify=False`")
    elif sum(len(t.raw_data) for t in ctx.proto.graph.initializer) >= EXTERNAL_DATA_BYTES:
        ctx.runner.skip("simplify", "model over 2 GB: simplification skipped")
    else:
        with ctx.runner.step("simplify") as s:
            unsimplified = ctx.proto
            ctx.proto, s.note = simplify(unsimplified)
            if ctx.proto is unsimplified:
                s.status = "warning"
                ctx.report.warnings.append(s.note)
            else:
                ctx.unsimplified = unsimplified


def _fp16(ctx: _Context) -> None:
    from .fp16 import to_fp16

    ctx.float_graph = ctx.proto
    if ctx.options.fp16 and ctx.options.int8:
        ctx.runner.skip("fp16", "with `int8=True` the fp16 pass runs on the INT8 graph (int8 step)")
    elif ctx.options.fp16:
        with ctx.runner.step("fp16") as s:
            ctx.float_proto, ctx.proto = ctx.proto, to_fp16(ctx.proto, keep_io_types=not ctx.options.fp16_io, target=ctx.target)
            s.note = "keep fp32 IO" if not ctx.options.fp16_io else "fp16 IO"


def _verify(ctx: _Context) -> None:
    from ..runtime.parity import user_rule
    from .inputs import ModelReference, verification_shapes
    from .verify import verify_on

    if not ctx.options.verify:
        ctx.runner.skip("verify", "`verify=False`")
        return
    assert ctx.exported is not None
    with ctx.runner.step("verify") as s:
        dyn = (ctx.exported.dynamic or {}).get(ctx.exported.input_name)
        shapes = verification_shapes(ctx.shape, dyn)
        options, target = ctx.options, ctx.target
        exporter = options.exporter or ("dynamo" if ctx.loaded.kind == "exported_program" else target.exporter)
        large = sum(len(t.raw_data) for t in ctx.exported.model.graph.initializer) >= EXTERNAL_DATA_BYTES
        rule = user_rule(ctx.precision, options.rtol, options.atol)
        reference = ModelReference(ctx.loaded.model, fp16_io=options.fp16_io, fp16_floor=ctx.precision == "fp16",
                                   seed=SEED)

        def run(graph: Any, precision: str = ctx.precision) -> VerifyResult:
            fp16 = precision == "fp16"  # the fp16 fallback verifies the float graph at fp32 (fp32 IO) first
            return verify_on(
                options.verify_with, reference if fp16 == options.fp16 else ModelReference(ctx.loaded.model),
                graph, shapes, precision=precision, rule=user_rule(precision, options.rtol, options.atol),
                portable_twin=lambda: _portable_twin(
                    ctx.model, ctx.example, opset=options.opset or target.opset,
                    opset_fixed=options.opset is not None, exporter=exporter, dynamic=options.dynamic,
                    decompose_layernorm=target.layernorm == "decompose", simplify=options.simplify and not large,
                    fp16=fp16, fp16_io=options.fp16_io and fp16))

        verification = run(ctx.proto)
        if not verification and ctx.unsimplified is not None:
            # No step may break parity silently: if the graph before onnxslim passes, that one is written.
            plain = ctx.unsimplified
            if options.fp16:
                from .fp16 import to_fp16

                plain = to_fp16(plain, keep_io_types=not options.fp16_io, target=target)
            retry = run(plain)
            if retry:
                why = ("the simplified graph failed verification, the unsimplified one passes: kept the "
                       f"unsimplified graph ({_failure_summary(verification)})")
                ctx.report.warnings.append(why)
                ctx.proto, verification = plain, replace(retry, notes=(*retry.notes, why))
                s.status = "warning"
        if not verification and options.fp16 and ctx.float_proto is not None:  # blocks kept fp32 until it passes
            from .fallback import fp16_fallback
            from .fp16 import to_fp16

            ctx.report.fp16, kept_graph, kept_verdict = fp16_fallback(
                ctx.float_proto, [r.name for r in ctx.rewrite_report.replaced] if ctx.rewrite_report else [],
                convert=lambda g, keep: to_fp16(g, keep_io_types=not options.fp16_io, target=target, keep=keep),
                verify=run, scoped=ctx.exported.model, progress=ctx.runner.progress.message)
            if kept_graph is not None:
                ctx.proto, verification = kept_graph, kept_verdict
        if not verification:
            failing = next(r for r in verification.runs if not r.comparison)
            verification = replace(verification, divergence=_diagnose(ctx, verification, ctx.proto, failing.shape,
                                                                      rule))
            s.status = "failed"
            s.note = f"FAILED at {'x'.join(map(str, failing.shape))} on {failing.runtime}"
            ctx.failed = True
        else:
            kept = "; kept the unsimplified graph" if s.status == "warning" else ""
            s.note = f"{len(shapes)} shape(s) passed on {', '.join(ctx.options.verify_with)}{kept}"
        if ctx.ultra is not None and ctx.ultra.task == "detect" and verification:
            from . import ultralytics

            agreement = ultralytics.box_agreement(ctx.loaded.model, ctx.proto, ultralytics.sample_images(ctx.shape),
                                                  precision=ctx.precision, fp16_io=options.fp16_io)
            ctx.report.detections = agreement
            s.note = f"{s.note}; {agreement.line()}"
            if not agreement:
                s.status = "failed"
                ctx.failed = True
    ctx.verification = ctx.report.verification = verification


def _calibration(ctx: _Context) -> None:
    """``int8=True``: read the calibration folder before the export, so that bad images cost no export."""
    from .int8 import image_preprocess, metadata_for, read_calibration
    from .metadata import preprocess_for

    if not ctx.options.int8:
        return
    assert ctx.options.calib is not None
    with ctx.runner.step("calibration images") as s:
        info = ctx.loaded.metadata
        # The settings the written graph's metadata will carry (size = the export's H/W).
        if ctx.ultra is not None:
            from .ultralytics import runtime_metadata

            meta = runtime_metadata(ctx.ultra)
            labels: list[Any] | tuple[Any, ...] | None = json.loads(meta["blocks_export.labels"])
        else:
            meta = metadata_for(preprocess_for(info, ctx.shape), info.get("task"))
            labels = info.get("labels") if isinstance(info.get("labels"), list | tuple) else None
        prep = image_preprocess(meta, ctx.shape)
        ctx.calibration = read_calibration(Path(ctx.options.calib), prep, ctx.shape[1], ctx.options.calib_count,
                                           [str(x) for x in labels] if labels else None)
        s.note = (f"{len(ctx.calibration.calibration)} for calibration, {len(ctx.calibration.held_out)} held out "
                  f"for verification ({ctx.options.calib})")
        if ctx.options.int8_budget_metric is not None:  # refused before the export when the images have no labels
            from .int8 import held_out_metric

            held_out_metric(ctx.calibration, ctx.options.int8_budget_metric)


def _int8(ctx: _Context) -> None:
    """``int8=True``: the block-aware Q/DQ graph, verified against the original model on held-out images."""
    from blocks_export.runtime.parity import RULES

    from .int8 import held_out_metric, quantize_model

    if ctx.calibration is None:
        return
    if ctx.failed:  # the floating-point graph already failed its verification: quantizing it proves nothing
        ctx.runner.skip("int8", "the floating-point graph failed verification")
        return
    budget = ctx.options.int8_budget or RULES["int8"].rel_l2
    blocks = [r.name for r in ctx.rewrite_report.replaced] if ctx.rewrite_report is not None else []
    scoped = ctx.exported.model if ctx.exported is not None else None
    with ctx.runner.step("int8") as s:
        try:
            ctx.proto, result = quantize_model(ctx.proto, ctx.loaded.model, ctx.calibration, ctx.shape[0],
                                               budget=budget, blocks=blocks, scoped=scoped, fp16=ctx.options.fp16,
                                               metric=None if ctx.options.int8_budget_metric is None else
                                               held_out_metric(ctx.calibration, ctx.options.int8_budget_metric),
                                               progress=ctx.runner.progress.message)
        except (ValueError, RuntimeError) as e:
            raise ExportFailed(f"INT8 quantization failed: {one_line(e)}") from e
        ctx.int8 = ctx.report.int8 = result
        s.note = result.line()
        if not result:
            s.status = "failed"
            ctx.failed = True


def _val_data(ctx: _Context) -> None:
    """``val=DATA``: the validation set checked against the model's classes before any export work."""
    from .inputs import torch_outputs
    from .val.step import model_classes, val_data

    if ctx.options.val is not None:
        with ctx.runner.step("val data") as s:
            ctx.val_data = val_data(ctx.options.val, *model_classes(ctx.loaded.metadata, ctx.ultra),
                                    outputs=torch_outputs(ctx.model, ctx.example))
            s.note = f"{len(ctx.val_data.images)} images ({ctx.options.val})"


def _val(ctx: _Context) -> None:
    """``val=DATA``: the original model and every graph of the run in the user's metric (``val/step.py``)."""
    from .val.step import figure_path, graphs_of_run, sensitivity_rows, validate_export

    if ctx.val_data is None:
        return
    assert ctx.unit is not None
    with ctx.runner.step("val") as s:
        graphs = graphs_of_run(ctx.proto, ctx.onnx_out, float_graph=ctx.float_graph,
                               fp16_target=ctx.target if ctx.options.fp16 and ctx.int8 is not None else None)
        ctx.report.val = validate_export(ctx.val_data, ctx.loaded.model, graphs,
                                         progress=ctx.runner.progress.count, figure=figure_path(ctx.output),
                                         sensitivity=sensitivity_rows(ctx.report.as_dict()), write=ctx.unit.write_bytes)
        s.note = ctx.report.val.line()


def _portable_twin(model: Any, example: Any, *, opset: int, opset_fixed: bool, exporter: str, dynamic: bool,
                   decompose_layernorm: bool, simplify: bool, fp16: bool, fp16_io: bool) -> Any:
    """The same model exported as the pipeline does, with the ``portable`` DeformConv lowering (a ``ModelProto``)."""
    from .onnx_export import to_onnx

    proto = to_onnx(model, example, opset=opset, opset_fixed=opset_fixed, lowering="portable", exporter=exporter,
                    dynamic=dynamic, decompose_layernorm=decompose_layernorm).model
    if simplify:
        from .simplify import simplify as slim

        proto, _ = slim(proto)
    if fp16:
        from .fp16 import to_fp16

        proto = to_fp16(proto, keep_io_types=not fp16_io)
    return proto


def _failure_summary(verification: VerifyResult) -> str:
    run = next((r for r in verification.runs if not r.comparison), None)
    if run is None:
        return "failed"
    at = "x".join(map(str, run.shape))
    if run.comparison.errors:
        return f"at {at}: {run.comparison.errors[0]}"
    return f"at {at}: rel_l2={run.comparison.worst_rel_l2:.3e}"


def _diagnose(ctx: _Context, verification: VerifyResult, graph: Any, shape: tuple[int, ...],
              rule: Any) -> Divergence:
    """Where the failing graph goes wrong: the node the runtime failed in and its block, or else the first block
    whose output diverges, localised on ``graph`` itself (the one that failed)."""
    from .diagnose import Divergence, has_scopes, locate_divergence

    classes = {n: type(m).__name__ for n, m in ctx.loaded.model.named_modules()} \
        if hasattr(ctx.loaded.model, "named_modules") else {}
    replaced = [r.name for r in ctx.rewrite_report.replaced] if ctx.rewrite_report is not None else []
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
        return locate_divergence(ctx.loaded.model, graph, replaced, shape, precision=ctx.precision,
                                 fp16_io=ctx.options.fp16_io, seed=SEED, rule=rule)
    except Exception as e:  # localisation is a diagnostic: its failure must not hide the verdict
        return Divergence.none(f"localisation failed: {one_line(e)}")


def _write(ctx: _Context) -> None:
    from .metadata import build_metadata, set_metadata

    assert ctx.exported is not None
    blocks_meta = [asdict(r) for r in ctx.rewrite_report.replaced] if ctx.rewrite_report is not None else []
    set_metadata(ctx.proto, build_metadata(
        source_sha256=ctx.loaded.sha256, input_name=ctx.exported.input_name, export_shape=ctx.shape,
        dynamic=ctx.exported.dynamic, model_info=ctx.loaded.metadata, blocks=blocks_meta,
        precision="int8" if ctx.int8 is not None else ctx.precision,
        target=ctx.target.name, deform_conv=ctx.lowering,
        parity=ctx.verification.summary() if ctx.verification else None, graph=ctx.proto.graph))
    if ctx.ultra is not None:
        from . import ultralytics

        ultralytics.finish_graph(ctx.proto, ctx.ultra, ctx.exported.opset)
    with ctx.runner.step("write") as s:
        written = save_onnx(ctx.proto, ctx.onnx_out, ctx.options.force, ctx.unit)
        s.note = str(ctx.onnx_out) + (" (+ external data)" if len(written) > 1 else "")
    ctx.report.onnx = str(ctx.onnx_out)


def _check(ctx: _Context) -> None:
    if ctx.target.is_tensorrt and not _check_step(ctx.proto, ctx.target, ctx.runner, ctx.report):
        ctx.failed = True


def _program_input_shape(program: Any) -> tuple[int, ...]:
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return tuple(int(d) if not hasattr(d, "node") else -1 for d in node.meta["val"].shape)


def _check_step(model: Any, target: Target, runner: _Runner, report: Report) -> bool:
    from .check import check_model

    with runner.step("check") as s:
        result = check_model(model, target.name)
        report.check = result
        s.note = "passed" if result else f"{len(result.issues)} issue(s) for {target.name}"
        if not result:
            s.status = "failed"
    return bool(result)
def _engine_profile(onnx_path: Path, options: ExportOptions) -> dict[str, dict[str, list[int]]] | None:
    """One optimisation profile {input: {"min", "opt", "max"}} for graphs with dynamic input dims."""
    import onnx

    from .metadata import read_metadata

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


def _engine_step(onnx_path: Path, engine_path: Path, options: ExportOptions, target: Target, runner: _Runner,
                 report: Report) -> None:
    """Build the engine; the builder also writes its sidecar JSON and the EPContext model (``*_ctx.onnx``)."""
    from .trt.api import EngineBuildError
    from .trt.build import build_engine

    profile = _engine_profile(onnx_path, options)
    with runner.step("engine") as s:
        try:
            # TensorRTUnavailable (a RuntimeMissing) goes up as it is: the CLI spells its rebuild facts.
            report.engine = build_engine(onnx_path, engine_path, fp16=options.fp16, target=target.name,
                                         profile=profile, workspace_mb=options.workspace_mb,
                                         progress=runner.progress.message, checked=report.check is not None,
                                         force=options.force)
        except EngineBuildError as e:
            raise ExportFailed(str(e)) from e
        except ValueError as e:
            raise UsageError(str(e)) from e
        s.note = str(engine_path)


def _engine_parity_step(options: ExportOptions, runner: _Runner, report: Report,
                        reference_for: Callable[[EngineResult], tuple[ReferenceSource, list[tuple[int, ...]]]]) -> bool:
    """Run the built engine on the verification inputs and compare it with ``reference_for(engine)`` (the original
    model, or onnxruntime on the ONNX input) at its shapes; skipped where the engine cannot run here. True when it
    fails."""
    from .runners import EngineRunner
    from .trt.api import TensorRTUnavailable
    from .verify import verify

    if not options.verify:
        runner.skip("engine parity", "`verify=False`")
        return False
    engine = report.engine
    assert engine is not None
    with runner.step("engine parity") as s:
        reference, shapes = reference_for(engine)
        run = EngineRunner(engine.engine_path, [str(i["name"]) for i in engine.sidecar.inputs],
                           [str(o["name"]) for o in engine.sidecar.outputs])
        try:
            result = verify(reference, run, shapes, precision=engine.precision)
        except TensorRTUnavailable as e:
            s.status, s.note = "skipped", e.reason
            return False
        report.engine_parity = result
        s.note = f"{sum(bool(r.comparison) for r in result.runs)}/{len(result.runs)} shape(s) match {reference.name}"
        if not result:
            s.status = "failed"
    return not result


def _engine_profile_fits(engine: EngineResult) -> Callable[[tuple[int, ...]], bool]:
    first = next(iter(engine.sidecar.profiles[0].values()))
    return lambda shape: len(shape) == len(first["min"]) and all(
        a <= d <= b for a, d, b in zip(first["min"], shape, first["max"], strict=True))


def _torch_reference(ctx: _Context, engine: EngineResult) -> tuple[ReferenceSource, list[tuple[int, ...]]]:
    """The original model (fp32, the precision's rule) at the verification shapes that the engine's profile takes
    (else its opt shape)."""
    from .inputs import ModelReference

    fits = _engine_profile_fits(engine)
    runs = ctx.report.verification.runs if ctx.report.verification is not None else ()
    shapes = [s for s in dict.fromkeys(tuple(r.shape) for r in runs) if fits(s)]
    shapes = shapes or [tuple(next(iter(engine.sidecar.profiles[0].values()))["opt"])]
    return ModelReference(ctx.loaded.model, float64=False, fp16_io=ctx.options.fp16_io, seed=SEED), shapes


def _onnx_reference(onnx_path: Path, engine: EngineResult) -> tuple[ReferenceSource, list[tuple[int, ...]]]:
    """onnxruntime on the ONNX the engine was built from, at the profile's opt shapes."""
    from .inputs import GraphReference

    profile = engine.sidecar.profiles[0]
    inputs = [(str(i["name"]), str(i["dtype"]), profile[i["name"]]["opt"]) for i in engine.sidecar.inputs]
    return GraphReference(onnx_path, inputs, seed=SEED), [tuple(inputs[0][2])]


def _onnx_to_engine(loaded: LoadedModel, options: ExportOptions, target: Target, output: Path, runner: _Runner,
                    report: Report) -> ExportResult:
    """``.onnx`` input, ``--to trt``: check and build; torch is never imported on this path."""
    import onnx

    from blocks_export.plugins.plugin_node import plugin_trt_domain

    try:
        model = onnx.load(str(loaded.path))
        # TensorRT plugin nodes (``ModulatedDeformConv2d``) sit in the parser's default domain, where the checker
        # has no schema for them; the copy with them in ``trt.plugins`` checks everything else.
        onnx.checker.check_model(plugin_trt_domain(model))
    except Exception as e:
        raise InputError(f"{loaded.path}: not a valid ONNX model ({one_line(e)})") from e
    report.onnx = str(loaded.path)
    if not target.is_tensorrt:
        raise UsageError(f"`to=trt` needs a TensorRT target; {target.name!r} is not one")
    if not _check_step(model, target, runner, report):
        return _finish(report, output, runner, True, _report_force(options, loaded.path, output))
    _engine_step(loaded.path, output, options, target, runner, report)
    failed = _engine_parity_step(options, runner, report, lambda engine: _onnx_reference(loaded.path, engine))
    return _finish(report, output, runner, failed, _report_force(options, loaded.path, output))


def _report_force(options: ExportOptions, source: Path, output: Path) -> bool:
    """May this run replace an existing report of ``output``? With --force, or when it is its input's report."""
    return options.force or (source.suffix.lower() == ".onnx" and report_path_for(output) == report_path_for(source))


def _finish(report: Report, output: Path, runner: _Runner, failed: bool, force: bool = True,
            unit: OutputUnit | None = None) -> ExportResult:
    from .report import to_json, write_report

    # --no-verify: exit 0, but the report does not claim a parity it did not check.
    report.status = "FAILED" if failed else ("PASSED" if report.verification is not None else "UNVERIFIED")
    report.exit_code = EXIT_FAILED if failed else EXIT_OK
    report.steps = list(runner.steps)
    path = report_path_for(output)
    report.report = str(path)
    if unit is None:
        write_report(report, path, force)
    else:  # the report joins the unit's files (the ONNX), then all land at once
        unit.write_bytes(path, (to_json(report) + "\n").encode("utf-8"))
        unit.commit()
    return ExportResult(report.exit_code, report, output, path, runner.steps)


#: Sizes ``inspect`` tries, smallest first, when neither ``imgsz`` nor the checkpoint gives one.
PROBE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 416, 448, 512, 640)


def own_size(model: Any, options: ExportOptions, path: Path) -> tuple[tuple[int, ...], str]:
    """The smallest square input of ``PROBE_SIZES`` the model runs at, and how it was found."""
    for size in PROBE_SIZES:
        try:
            return find_input_shape(model, options, (size, size), path), "the smallest size the model runs at"
        except InputError:
            continue
    return find_input_shape(model, options, (DEFAULT_IMGSZ, DEFAULT_IMGSZ), path), "the default"


def inspect_file(source: Path, options: ExportOptions, progress: Progress | None = None) -> InspectReport:
    """What ``run_export`` would do with ``source``, without exporting: blocks, hazards, the plan.

    The blocks are found by one run of the model: at ``imgsz``, else the checkpoint's size, else the smallest
    size of ``PROBE_SIZES`` the model runs at (a 64-px model is not run at 640)."""
    progress = progress or Progress()
    source = Path(source)
    target = resolve_target(options)
    lowering = resolve_lowering(options, target)
    loaded = load_model(source, trust_pickle=options.trust_pickle, arch=options.arch,
                        arch_kwargs=options.arch_kwargs)
    if loaded.kind == "onnx":
        options = replace(options, to="trt")  # an ONNX file goes on to an engine
    info = InspectReport(str(source), loaded.kind, loaded.source, loaded.sha256, target.name, lowering,
                         options.opset or target.opset, list(loaded.warnings))
    info.lines = [f"MODEL      | {source} | {loaded.source}",
                  f"PLAN       | target {target.name} ({target.description}) | opset {info.opset} | "
                  f"DeformConv lowering {lowering} | output {default_output(source, options)}"]
    if loaded.kind == "onnx":
        from .check import read_onnx

        model = read_onnx(source)  # a corrupt, truncated or absurdly nested file: one line, exit 2
        info.ops = sorted({n.op_type for n in model.graph.node})
        info.lines.append(f"ONNX       | opset {[o.version for o in model.opset_import]} | "
                          f"{len(model.graph.node)} nodes | ops: {', '.join(info.ops)}")
    elif loaded.kind == "module":
        from blocks_export.blocks import inspect_model

        from .inputs import make_input

        if options.imgsz is not None or export_imgsz(options, loaded) != (DEFAULT_IMGSZ, DEFAULT_IMGSZ):
            shape = find_input_shape(loaded.model, options, export_imgsz(options, loaded), loaded.path)
            how = "`imgsz`" if options.imgsz is not None else "the checkpoint's size"
        else:
            progress.message("no `imgsz` given: finding the smallest input size the model runs at")
            shape, how = own_size(loaded.model, options, loaded.path)
        info.export_shape, info.probed_with = list(shape), how
        progress.message(f"running the model at {'x'.join(map(str, shape))} to find its blocks and hazards")
        info.lines.append(f"SHAPE      | {'x'.join(map(str, shape))} ({how})")
        info.blocks = inspect_model(loaded.model, make_input(shape, SEED))
        info.lines += info.blocks.lines() or ["BLOCKS     | none of the known blocks found"]
    info.lines += [f"WARNING    | {w}" for w in loaded.warnings]
    return info
