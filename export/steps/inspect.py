"""Inspect: what an export of a file would do, without exporting: the model, the plan, the blocks found in one run
of the model and the export hazards elsewhere in it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..load import load_model
from ..report import InspectReport
from .base import SEED, Progress
from .plan import default_output, resolve_lowering, resolve_target
from .prepare import DEFAULT_IMGSZ, export_imgsz, find_input_shape

if TYPE_CHECKING:
    from ..options import ExportOptions


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
        from ..onnx_file import read_onnx

        model = read_onnx(source)  # a corrupt, truncated or absurdly nested file: one line, exit 2
        info.ops = sorted({n.op_type for n in model.graph.node})
        info.lines.append(f"ONNX       | opset {[o.version for o in model.opset_import]} | "
                          f"{len(model.graph.node)} nodes | ops: {', '.join(info.ops)}")
    elif loaded.kind == "module":
        from blocks_export.blocks import inspect_model

        from ..inputs import make_input

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
