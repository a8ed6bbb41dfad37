"""Load and prepare: the model file read (``load.load_model``), the model adapter chosen, the export shape found
by running the model (its input channels probed when not given), or an ONNX input read and checked.

A shape the model cannot take is bad input, said in one line (exit 2) before anything is exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, UsageError, one_line
from .base import SEED, State, step

if TYPE_CHECKING:
    from ..load import LoadedModel
    from ..options import ExportOptions

DEFAULT_IMGSZ = 640


@step("load", writes=("loaded",))
def load(state: State) -> None:
    from ..load import load_model

    options = state.options
    with state.log.step("load") as s:
        loaded = load_model(state.source, trust_pickle=options.trust_pickle, arch=options.arch,
                            arch_kwargs=options.arch_kwargs)
        s.note = loaded.source
    state.loaded = loaded
    state.report.source_sha256 = loaded.sha256
    state.report.warnings += loaded.warnings


@step("prepare", reads=("loaded",), writes=("adapter", "original", "shape", "example", "graph_precision"))
def prepare(state: State) -> None:
    """The model adapter (``adapters.adapter_for``), the export shape and one run of the model at it."""
    from ..adapters import PLAIN, ModelAdapter, adapter_for
    from ..inputs import make_input

    loaded, options = state.loaded, state.options
    assert loaded is not None
    original: Any = loaded.model
    adapter: ModelAdapter = PLAIN
    h, w = export_imgsz(options, loaded)
    shape: tuple[int, ...] = (options.batch, options.channels or 3, h, w)
    if loaded.kind == "exported_program":  # its static dims are fixed; only its dynamic ones follow options
        shape = tuple(s if s > 0 else d for s, d in zip(program_input_shape(original), shape, strict=True))
    else:
        if loaded.kind == "module":
            original, adapter = adapter_for(original, imgsz=(h, w), batch=options.batch, dynamic=options.dynamic,
                                            half=options.fp16)
        shape = find_input_shape(original, options, (h, w), loaded.path)
    state.adapter, state.original, state.shape, state.example = adapter, original, shape, make_input(shape, SEED)
    state.graph_precision = state.precision
    state.report.export_shape = list(shape)


@step("read onnx", reads=("loaded",), writes=("proto", "onnx_path"))
def read_onnx(state: State) -> None:
    """An ``.onnx`` input (``to=trt``): a valid ONNX model, for a TensorRT target. torch is never imported on this
    path (a Jetson may have none)."""
    import onnx

    from blocks_export.plugins.plugin_node import plugin_trt_domain

    loaded = state.loaded
    assert loaded is not None
    try:
        model = onnx.load(str(loaded.path))
        # TensorRT plugin nodes (``ModulatedDeformConv2d``) sit in the parser's default domain, where the checker
        # has no schema for them; the copy with them in ``trt.plugins`` checks everything else.
        onnx.checker.check_model(plugin_trt_domain(model))
    except Exception as e:
        raise InputError(f"{loaded.path}: not a valid ONNX model ({one_line(e)})") from e
    state.report.onnx = str(loaded.path)
    if not state.target.is_tensorrt:
        raise UsageError(f"`to=trt` needs a TensorRT target; {state.target.name!r} is not one")
    state.proto, state.onnx_path = model, Path(loaded.path)


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

    from ..inputs import make_input, torch_outputs

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
    """``imgsz``, else the checkpoint's preprocess size, else ``DEFAULT_IMGSZ``."""
    if options.imgsz is not None:
        return options.imgsz
    size = loaded.metadata.get("preprocess", {}).get("size") if isinstance(loaded.metadata.get("preprocess"), dict) else None
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    return DEFAULT_IMGSZ, DEFAULT_IMGSZ


def probe_input(model: Any, shape: tuple[int, ...], path: Path, flags: str = "`imgsz`/`batch`") -> None:
    """Run the model once at the export shape; a shape it cannot take is bad input, said in one line."""
    from ..inputs import make_input, torch_outputs

    try:
        outs = torch_outputs(model, make_input(shape, SEED))
    except Exception as e:
        dims = "x".join(map(str, shape))
        raise InputError(f"{path}: the model cannot run on an input of shape {dims} ({one_line(e)}); "
                         f"choose another {flags}") from e
    if not outs:
        raise InputError(f"{path}: the model returns no tensor; nothing to export")


def program_input_shape(program: Any) -> tuple[int, ...]:
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return tuple(int(d) if not hasattr(d, "node") else -1 for d in node.meta["val"].shape)
