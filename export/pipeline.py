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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import (
    EXIT_FAILED,
    EXIT_OK,
    ExportFailed,
    InputError,
    OutputError,
    RuntimeMissing,
    UsageError,
)
from .io import atomic_folder_files, atomic_path, check_output_path
from .load import LoadedModel, load_model
from .options import ExportOptions

DEFAULT_IMGSZ = 640
EXTERNAL_DATA_BYTES = 2_000_000_000  # protobuf cannot serialise a message of 2 GiB or more
SEED = 0
TRT_DEFAULT_TARGET = "jetpack6"  # lowest TensorRT 10 profile: its ONNX also parses on newer TensorRT 10/11


@dataclass
class Step:
    name: str
    status: str = "ok"  # ok | skipped | failed | warning
    seconds: float = 0.0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3), "note": self.note}


class Progress:
    """Receives step events; the CLI renders them, the library default ignores them."""

    def start(self, name: str) -> None:  # noqa: B027 (optional hook)
        pass

    def done(self, step: Step) -> None:  # noqa: B027 (optional hook)
        pass

    def message(self, text: str) -> None:  # noqa: B027 (optional hook: progress inside a long step)
        pass


@dataclass
class ExportResult:
    """What one run produced. ``report`` is the JSON report (also written beside the output)."""

    exit_code: int
    report: dict[str, Any]
    output: Path | None = None
    report_path: Path | None = None
    steps: list[Step] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK


class _Runner:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress or Progress()
        self.steps: list[Step] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        s = Step(name)
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
        s = Step(name, "skipped", 0.0, why)
        self.steps.append(s)
        self.progress.done(s)


def resolve_target(options: ExportOptions) -> Any:
    from .targets import get_target

    name = options.target
    if name is None and options.to == "trt":
        name = TRT_DEFAULT_TARGET
    try:
        return get_target(name)
    except ValueError as e:
        raise UsageError(f"--target: {e}") from e


def resolve_lowering(options: ExportOptions, target: Any) -> str:
    return target.deform_conv if options.deform_conv == "auto" else options.deform_conv


def check_options(options: ExportOptions, target: Any, lowering: str) -> None:
    """Refuse contradictory options before anything is loaded."""
    if options.deform_conv != "auto" and options.opset is not None:
        try:
            from .deform_conv import check_lowering
        except ImportError:
            return
        try:
            check_lowering(lowering, options.opset)
        except ValueError as e:
            raise UsageError(f"--deform-conv {lowering} --opset {options.opset}: {e}") from e


def default_output(source: Path, options: ExportOptions) -> Path:
    if options.output is not None:
        return Path(options.output)
    return source.with_suffix(".engine" if options.to == "trt" else ".onnx")


def report_path_for(output: Path) -> Path:
    """``model.onnx`` -> ``model.report.json``."""
    return output.with_suffix(".report.json")


def input_channels(model: Any) -> int:
    """Channels of the first convolution (or 3): the image input of a CNN."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return 3


def export_imgsz(options: ExportOptions, loaded: LoadedModel) -> tuple[int, int]:
    if options.imgsz is not None:
        return options.imgsz
    size = loaded.metadata.get("preprocess", {}).get("size") if isinstance(loaded.metadata.get("preprocess"), dict) else None
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    return DEFAULT_IMGSZ, DEFAULT_IMGSZ


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def probe_input(model: Any, shape: tuple[int, ...], path: Path) -> None:
    """Run the model once at the export shape; a shape it cannot take is bad input, said in one line."""
    import torch

    from .verify import make_input, torch_outputs

    try:
        outs = torch_outputs(model, make_input(shape, SEED))
    except Exception as e:
        dims = "x".join(map(str, shape))
        raise InputError(f"{path}: the model cannot run on an input of shape {dims} ({_one_line(e)}); "
                         "choose another --imgsz/--batch") from e
    if not outs:
        raise InputError(f"{path}: the model returns no tensor; nothing to export")
    del torch


def rewrite(model: Any, example: Any) -> tuple[Any, Any]:
    """``blocks.rewrite_model``; the rewritten copy and its report."""
    from blocks_export.blocks.rewrite import rewrite_model

    return rewrite_model(model, example)


def replaced_paths(report: Any, original: Any, rewritten: Any) -> list[str]:
    """Module paths of the swapped blocks: from the report, else where the module class changed."""
    names = [str(n) for r in getattr(report, "replaced", ()) if (n := getattr(r, "name", None))]
    if names:
        return names
    before = {n: type(m) for n, m in original.named_modules()}
    changed = [n for n, m in rewritten.named_modules() if n and n in before and before[n] is not type(m)]
    return [n for n in changed if not any(n.startswith(p + ".") for p in changed)]


def save_onnx(model: Any, path: Path) -> list[Path]:
    """Write ``model`` atomically; over 2 GB its tensors go to ``<name>.data`` beside it (external data)."""
    import onnx

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size < EXTERNAL_DATA_BYTES:
        with atomic_path(path) as tmp:
            onnx.save_model(model, str(tmp))
        return [path]
    data_name = path.name + ".data"
    with atomic_folder_files(path.parent, [data_name, path.name]) as tmpdir:
        onnx.save_model(model, str(tmpdir / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    return [path, path.parent / data_name]


def run_export(source: Path, options: ExportOptions, progress: Progress | None = None) -> ExportResult:
    """Run every step for ``source``; ``ExportError`` for refusals, an ``ExportResult`` otherwise."""
    source = Path(source)
    target = resolve_target(options)
    lowering = resolve_lowering(options, target)
    check_options(options, target, lowering)
    if options.to == "onnx" and source.suffix.lower() == ".onnx":
        raise UsageError(f"{source} is already ONNX; use --to trt to build an engine, or `blocks-export check`")
    output = default_output(source, options)
    if output.resolve() == source.resolve():
        raise OutputError(f"output {output} is the input file; choose another -o/--output")
    onnx_out = output if options.to == "onnx" else output.with_suffix(".onnx")
    check_output_path(output, options.force)
    if options.to == "trt" and source.suffix.lower() != ".onnx":
        check_output_path(onnx_out, options.force)

    runner = _Runner(progress)
    report: dict[str, Any] = {
        "format": "blocks-export-report/1", "source": str(source), "output": str(output),
        "target": target.name, "deform_conv": lowering, "precision": "fp16" if options.fp16 else "fp32",
        "warnings": [],
    }
    with runner.step("load") as s:
        loaded = load_model(source, trust_pickle=options.trust_pickle, arch=options.arch)
        s.note = loaded.source
    report["source_sha256"] = loaded.sha256
    report["warnings"] += loaded.warnings
    if loaded.kind == "onnx":
        return _onnx_to_engine(loaded, options, target, output, runner, report)
    return _torch_export(loaded, options, target, lowering, output, onnx_out, runner, report)


def _torch_export(loaded: LoadedModel, options: ExportOptions, target: Any, lowering: str, output: Path,
                  onnx_out: Path, runner: _Runner, report: dict[str, Any]) -> ExportResult:
    import torch

    from .onnx_export import to_onnx
    from .verify import locate_divergence, make_input, verification_shapes, verify

    original = loaded.model
    h, w = export_imgsz(options, loaded)
    channels = input_channels(original) if isinstance(original, torch.nn.Module) else 3
    shape: tuple[int, ...] = (options.batch, channels, h, w)
    if loaded.kind == "exported_program":  # its static dims are fixed; only its dynamic ones can follow options
        shape = tuple(s if s > 0 else d for s, d in zip(_program_input_shape(original), shape, strict=True))
    ultra = None
    if loaded.kind == "module":
        from . import ultralytics

        if ultralytics.task_of(original) is not None:  # exported as `yolo export format=onnx` writes it
            original, ultra = ultralytics.prepare(original, imgsz=(h, w), batch=options.batch,
                                                  dynamic=options.dynamic, half=options.fp16)
    if loaded.kind != "exported_program":
        probe_input(original, shape, loaded.path)
    example = make_input(shape, SEED)
    report["export_shape"] = list(shape)

    model = original
    rewrite_report = None
    replaced: list[str] = []
    if loaded.kind == "module":
        with runner.step("rewrite") as s:
            try:
                model, rewrite_report = rewrite(original, example)
            except ImportError as e:
                s.status, s.note = "warning", f"block rewriter unavailable ({_one_line(e)}); exported as loaded"
                report["warnings"].append(s.note)
            except Exception as e:
                raise ExportFailed(f"block rewriting failed: {_one_line(e)} (rerun with --debug)") from e
            else:
                replaced = replaced_paths(rewrite_report, original, model)
                s.note = f"{len(replaced)} block(s) replaced"
                report["warnings"] += [f"{h.name}: {h.kind}: {h.detail}" for h in getattr(rewrite_report, "hazards", ())]
    else:
        runner.skip("rewrite", "block rewrites cannot apply to a TorchScript or torch.export input")
    report["blocks"] = (rewrite_report.as_dict() if rewrite_report is not None and hasattr(rewrite_report, "as_dict")
                        else {"replaced": replaced})

    # The target's exporter unless the user chose one; a torch.export program only has the dynamo one.
    exporter = options.exporter or ("dynamo" if loaded.kind == "exported_program" else target.exporter)
    with runner.step("export") as s:
        exported = to_onnx(model, example, opset=options.opset or target.opset, opset_fixed=options.opset is not None,
                           lowering=lowering, exporter=exporter, dynamic=options.dynamic,
                           decompose_layernorm=target.layernorm == "decompose")
        if ultra is not None:
            exported = ultralytics.name_io(exported, ultra)
        s.note = f"{exported.exporter}, opset {exported.opset}, {len(exported.model.graph.node)} nodes"
    report["opset"] = exported.opset
    report["exporter"] = exported.exporter
    report["dynamic"] = exported.dynamic
    report["notes"] = list(exported.notes)
    unsimplified = exported.model
    proto = exported.model
    large = sum(len(t.raw_data) for t in proto.graph.initializer) >= EXTERNAL_DATA_BYTES

    if not options.simplify:
        runner.skip("simplify", "--no-simplify")
    elif large:
        runner.skip("simplify", "model over 2 GB: simplification skipped")
    else:
        with runner.step("simplify") as s:
            from .simplify import simplify

            proto, s.note = simplify(proto)
            if proto is unsimplified:
                s.status = "warning"
                report["warnings"].append(s.note)

    if options.fp16:
        with runner.step("fp16") as s:
            try:
                from .fp16 import to_fp16
            except ImportError as e:
                raise RuntimeMissing("--fp16: mixed-precision conversion (blocks_export.export.fp16) is not "
                                     "installed in this build") from e
            proto = to_fp16(proto, keep_io_types=not options.fp16_io)
            s.note = "keep fp32 IO" if not options.fp16_io else "fp16 IO"

    precision = "fp16" if options.fp16 else "fp32"
    verification = None
    if options.verify:
        with runner.step("verify") as s:
            dyn = (exported.dynamic or {}).get(exported.input_name)
            shapes = verification_shapes(shape, dyn)
            verification = verify(original, proto, shapes, precision=precision, fp16_io=options.fp16_io, seed=SEED)
            if not verification:
                failing = next(r for r in verification.runs if not r.comparison)
                from .verify import has_scopes

                graph = proto if has_scopes(proto) else unsimplified
                try:
                    verification.divergence = locate_divergence(
                        original, graph, replaced, failing.shape, precision=precision, fp16_io=options.fp16_io,
                        seed=SEED)
                except Exception as e:  # localisation is a diagnostic: its failure must not hide the verdict
                    verification.divergence = {"block": None, "why": f"localisation failed: {_one_line(e)}"}
                s.status = "failed"
                s.note = f"FAILED at {'x'.join(map(str, failing.shape))}"
            else:
                s.note = f"{len(shapes)} shape(s) passed"
            if ultra is not None and ultra.task == "detect" and verification:
                agreement = ultralytics.box_agreement(original, proto, ultralytics.sample_images(shape),
                                                      precision=precision, fp16_io=options.fp16_io)
                report["detections"] = agreement.as_dict()
                s.note = f"{s.note}; {agreement.line()}"
                if not agreement and verification:
                    s.status = "failed"
        report["verification"] = verification.as_dict()
    else:
        runner.skip("verify", "--no-verify")
        report["verification"] = None

    from .metadata import build_metadata, set_metadata

    blocks_meta = [dict(r) if isinstance(r, dict) else r for r in report["blocks"].get("replaced", [])]
    set_metadata(proto, build_metadata(
        source_sha256=loaded.sha256, input_name=exported.input_name, export_shape=shape,
        dynamic=exported.dynamic, model_info=loaded.metadata, blocks=blocks_meta, precision=precision,
        target=target.name, deform_conv=lowering, parity=verification.summary() if verification else None,
        graph=proto.graph))
    if ultra is not None:
        ultralytics.finish_graph(proto, ultra, exported.opset)
    with runner.step("write") as s:
        written = save_onnx(proto, onnx_out)
        s.note = str(onnx_out) + (" (+ external data)" if len(written) > 1 else "")
    report["onnx"] = str(onnx_out)

    failed = verification is not None and not verification
    failed = failed or report.get("detections", {}).get("passed") is False
    if target.is_tensorrt:
        ok = _check_step(proto, target, runner, report)
        failed = failed or not ok
    if failed or options.to == "onnx":
        return _finish(report, output if options.to == "onnx" else onnx_out, runner, failed)
    _engine_step(onnx_out, output, options, target, runner, report)
    return _finish(report, output, runner, False)


def _program_input_shape(program: Any) -> tuple[int, ...]:
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return tuple(int(d) if not hasattr(d, "node") else -1 for d in node.meta["val"].shape)


def _check_step(model: Any, target: Any, runner: _Runner, report: dict[str, Any]) -> bool:
    with runner.step("check") as s:
        try:
            from .check import check_model
        except ImportError as e:
            raise RuntimeMissing("the static TensorRT check (blocks_export.export.check) is not installed in this "
                                 "build") from e
        result = check_model(model, target.name)
        report["check"] = {**result.as_dict(), "lines": result.lines()}
        s.note = "passed" if result else f"{len(result.issues)} issue(s) for {target.name}"
        if not result:
            s.status = "failed"
    return bool(result)


def _engine_profile(onnx_path: Path, options: ExportOptions) -> dict[str, dict[str, list[int]]] | None:
    """One optimisation profile {input: {"min", "opt", "max"}} for graphs with dynamic input dims."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    given = (options.min_shape, options.opt_shape, options.max_shape)
    if any(given):
        if not all(given):
            raise UsageError("--min-shape, --opt-shape and --max-shape go together; give all three")
        for flag, sh in zip(("--min-shape", "--opt-shape", "--max-shape"), given, strict=True):
            assert sh is not None
            if len(sh) != len(dims) or any(d is not None and d != v for d, v in zip(dims, sh, strict=True)):
                raise UsageError(f"{flag} {'x'.join(map(str, sh))} does not fit input {inp.name} "
                                 f"{['?' if d is None else d for d in dims]}")
        lo, opt, hi = (list(g or ()) for g in given)
        return {inp.name: {"min": lo, "opt": opt, "max": hi}}
    if all(d is not None for d in dims):
        return None
    h, w = options.imgsz or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
    meta = {p.key: p.value for p in model.metadata_props}
    if options.imgsz is None and "blocks_export.export_shape" in meta:
        import json

        shape = next(iter(json.loads(meta["blocks_export.export_shape"]).values()))
        h, w = int(shape[2]), int(shape[3])
    c = dims[1] or 3
    return {inp.name: {"min": [1, c, h, w], "opt": [options.batch, c, h, w], "max": [options.batch, c, h, w]}}


def _engine_step(onnx_path: Path, engine_path: Path, options: ExportOptions, target: Any, runner: _Runner,
                 report: dict[str, Any]) -> None:
    """Build the engine; the builder also writes its sidecar JSON and the EPContext model (``*_ctx.onnx``)."""
    try:
        from .engine import EngineBuildError, TensorRTUnavailable, build_engine
    except ImportError as e:
        raise RuntimeMissing("the TensorRT engine builder (blocks_export.export.engine) is not installed in this "
                             "build") from e
    profile = _engine_profile(onnx_path, options)
    with runner.step("engine") as s:
        try:
            result = build_engine(onnx_path, engine_path, fp16=options.fp16, target=target.name, profile=profile,
                                  workspace_mb=options.workspace_mb, progress=runner.progress.message)
        except TensorRTUnavailable as e:
            raise RuntimeMissing(str(e)) from e
        except EngineBuildError as e:
            raise ExportFailed(str(e)) from e
        except ValueError as e:
            raise UsageError(str(e)) from e
        report["engine"] = result.as_dict() if hasattr(result, "as_dict") else {
            "engine": str(result.engine_path), "sidecar": str(result.sidecar_path), "ep_context": str(result.ctx_path)}
        s.note = str(engine_path)


def _onnx_to_engine(loaded: LoadedModel, options: ExportOptions, target: Any, output: Path, runner: _Runner,
                    report: dict[str, Any]) -> ExportResult:
    """``.onnx`` input, ``--to trt``: check and build; torch is never imported on this path."""
    import onnx

    from blocks_export.plugins.plugin_node import plugin_trt_domain

    try:
        model = onnx.load(str(loaded.path))
        # TensorRT plugin nodes (``ModulatedDeformConv2d``) sit in the parser's default domain, where the checker
        # has no schema for them; the copy with them in ``trt.plugins`` checks everything else.
        onnx.checker.check_model(plugin_trt_domain(model))
    except Exception as e:
        raise InputError(f"{loaded.path}: not a valid ONNX model ({_one_line(e)})") from e
    report["onnx"] = str(loaded.path)
    report["verification"] = None
    if target.is_tensorrt and not _check_step(model, target, runner, report):
        return _finish(report, output, runner, True)
    if not target.is_tensorrt:
        raise UsageError(f"--to trt needs a TensorRT target; {target.name!r} is not one")
    _engine_step(loaded.path, output, options, target, runner, report)
    return _finish(report, output, runner, False)


def _finish(report: dict[str, Any], output: Path, runner: _Runner, failed: bool) -> ExportResult:
    from .report import write_report

    # --no-verify: exit 0, but the report does not claim a parity it did not check.
    report["status"] = "FAILED" if failed else ("PASSED" if report.get("verification") else "UNVERIFIED")
    report["exit_code"] = EXIT_FAILED if failed else EXIT_OK
    report["steps"] = [s.as_dict() for s in runner.steps]
    path = report_path_for(output)
    report["report"] = str(path)
    write_report(report, path)
    return ExportResult(report["exit_code"], report, output, path, runner.steps)



def inspect_file(source: Path, options: ExportOptions) -> dict[str, Any]:
    """What ``run_export`` would do with ``source``, without exporting: blocks, hazards, the plan.

    Returns {"lines": [...], ...} (the lines are for the terminal, the rest for ``--json``).
    """
    source = Path(source)
    target = resolve_target(options)
    lowering = resolve_lowering(options, target)
    loaded = load_model(source, trust_pickle=options.trust_pickle, arch=options.arch)
    if loaded.kind == "onnx":
        options = replace(options, to="trt")  # an ONNX file goes on to an engine
    info: dict[str, Any] = {"source": str(source), "kind": loaded.kind, "loaded_as": loaded.source,
                            "source_sha256": loaded.sha256, "target": target.name, "deform_conv": lowering,
                            "opset": options.opset or target.opset, "warnings": list(loaded.warnings)}
    lines = [f"MODEL      | {source} | {loaded.source}",
             f"PLAN       | target {target.name} ({target.description}) | opset {info['opset']} | "
             f"DeformConv lowering {lowering} | output {default_output(source, options)}"]
    if loaded.kind == "onnx":
        import onnx

        model = onnx.load(str(source), load_external_data=False)
        ops = sorted({n.op_type for n in model.graph.node})
        info["ops"] = ops
        lines.append(f"ONNX       | opset {[o.version for o in model.opset_import]} | {len(model.graph.node)} nodes "
                     f"| ops: {', '.join(ops)}")
    elif loaded.kind == "module":
        from .verify import make_input

        h, w = export_imgsz(options, loaded)
        shape = (options.batch, input_channels(loaded.model), h, w)
        probe_input(loaded.model, shape, loaded.path)
        info["export_shape"] = list(shape)
        try:
            from blocks_export.blocks.rewrite import inspect_model
        except ImportError as e:
            raise RuntimeMissing("inspect needs the block rewriter (blocks_export.blocks.rewrite), not installed "
                                 "in this build") from e
        rep = inspect_model(loaded.model, make_input(shape, SEED))
        info["blocks"] = rep.as_dict()
        lines += rep.lines() or ["BLOCKS     | none of the known blocks found"]
    lines += [f"WARNING    | {w}" for w in loaded.warnings]
    info["lines"] = lines
    return info
