"""What a run will do, decided from the options before anything is loaded: the target, the DeformConv lowering,
the output paths, and the refusal of contradictory options (one line, exit 2, nothing written)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OutputError, UsageError
from ..io import check_output_path

if TYPE_CHECKING:
    from ..options import ExportOptions
    from ..targets import Target

TRT_DEFAULT_TARGET = "jetpack6"  # lowest TensorRT 10 profile: its ONNX also parses on newer TensorRT 10/11


def resolve_target(options: ExportOptions) -> Target:
    from ..targets import get_target

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
        from ..deform_conv import MIN_OPSET

        if MIN_OPSET.get(lowering, 0) > target.max_opset:  # the written graph could only fail the target check
            raise UsageError(f"`deform_conv={lowering}` `target={target.name}`: TensorRT {target.trt_version}'s ONNX "
                             f"parser reads opsets up to {target.max_opset}, this lowering needs opset "
                             f"{MIN_OPSET[lowering]}; use `deform_conv={target.deform_conv}` (the target's)")
        from ..trt_ops import BUILTIN_PLUGINS

        if lowering == "plugin" and not BUILTIN_PLUGINS["ModulatedDeformConv2d"].get(target.parser_table, {"?"}):
            raise UsageError(f"`deform_conv=plugin` `target={target.name}`: TensorRT {target.trt_version} ships no "
                             f"ModulatedDeformConv2d plugin; use `deform_conv={target.deform_conv}` (the target's)")
    if options.deform_conv != "auto" and options.opset is not None:
        from ..deform_conv import check_lowering

        try:
            check_lowering(lowering, options.opset)
        except ValueError as e:
            raise UsageError(f"`deform_conv={lowering}` `opset={options.opset}`: {e}") from e


def default_output(source: Path, options: ExportOptions) -> Path:
    if options.output is not None:
        return Path(options.output)
    return source.with_suffix(".engine" if options.to == "trt" else ".onnx")


def report_path_for(output: Path) -> Path:
    """``model.onnx`` -> ``model.report.json``."""
    return output.with_suffix(".report.json")


def check_outputs(source: Path, output: Path, onnx_out: Path, options: ExportOptions) -> None:
    """Refuse an output that is the input, or a file there without ``force`` (every file the run writes)."""
    if output.resolve() == source.resolve():
        raise OutputError(f"output {output} is the input file; choose another `output`")
    check_output_path(output, options.force, derived=True)
    # A user's file named like the report is an output too; the report of the ONNX input that this run
    # continues (m.onnx -> m.engine share m.report.json) is replaced with the run's own, as before.
    check_output_path(report_path_for(output), report_force(options, source, output))
    if options.to == "trt" and source.suffix.lower() != ".onnx":
        check_output_path(onnx_out, options.force, derived=True)
        check_output_path(report_path_for(onnx_out), options.force)
    if options.to == "trt":  # the engine's sidecar and EPContext model are outputs too (the cache is not)
        from ..trt.sidecar import default_paths

        for path in default_paths(output)[:2]:
            if path.resolve() != source.resolve():  # an EPContext input: the check step decides on it
                check_output_path(path, options.force)
    if options.images is not None:  # the box check's pictures: a missing or empty folder costs no export
        from ..boxes import box_image_files

        box_image_files(options.images)
    if options.val is not None:  # the data's layout, before the model is loaded; its labels once the model is
        from ..val.step import check_val_path, figure_path

        check_val_path(options.val)
        check_output_path(figure_path(output), options.force)


def report_force(options: ExportOptions, source: Path, output: Path) -> bool:
    """May this run replace an existing report of ``output``? With --force, or when it is its input's report."""
    return options.force or (source.suffix.lower() == ".onnx" and report_path_for(output) == report_path_for(source))
