"""``to_onnx``: one model, one example input -> an ONNX ``ModelProto`` (not yet written anywhere).

Dynamo exporter (default): ``torch.export.export`` first, so that ``--dynamic`` constraints are derived
here: batch, H and W are traced as ``Dim.AUTO`` and the program's shape guards (every size condition the
trace relied on: H even before a space-to-depth, equal sizes at an upsample + concat, ...) are solved for
the valid sizes of each axis: a minimum, a maximum and a multiple (five stride-2 stages feeding a top-down
neck need H a multiple of 32), recorded with the export (https://pytorch.org/docs/stable/export.html,
"Dynamic shapes"). The program is then translated with ``torch.onnx.export(program, dynamo=True,
custom_translation_table=...)`` carrying the DeformConv lowering and the twins' translations (``BLOCKS``), inside
``torch_patches.exporter_patches`` (the same graph, faster). Graph helpers (LayerNorm decomposition, opset
conversion) are in ``graph`` and ``opset_down``.

TorchScript exporter (the jetpack5/jetpack6.0 targets' default, ``--exporter torchscript``, and always for
TorchScript archives): inside ``torchscript_symbolic(lowering, opset)``, with ``dynamic_axes`` for batch/H/W;
their ranges come from a ``torch.export`` trace of the same module, as above.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .dynamic import INPUT_NAME, derive_dynamic_ranges, dynamic_ranges, name_dims
from .errors import ExportFailed, UsageError, one_line
from .graph import decompose_layer_norm
from .opset_down import convert_opset
from .torch_patches import exporter_patches

STD_DEFORM_CONV_OPSET = 19  # ONNX DeformConv exists from opset 19 (https://onnx.ai/onnx/operators/onnx__DeformConv.html)
# The dynamo exporter's translation functions start at opset 18; lower opsets are reached by conversion.
DYNAMO_MIN_OPSET = 18
LAYER_NORM_OPSET = 17  # LayerNormalization exists from opset 17


@dataclass
class OnnxExport:
    """Result of ``to_onnx``: the graph and what the export decided.

    ``dynamic``: {input: {axis: {"min", "max", "multiple_of"}}} (axis as a string, max ``None`` = unbounded)
    or ``None`` for static shapes.
    """

    model: Any  # onnx.ModelProto
    input_name: str
    output_names: list[str]
    opset: int
    exporter: str
    uses_deform_conv: bool
    dynamic: dict[str, dict[str, dict[str, int | None]]] | None
    notes: list[str] = field(default_factory=list)


def _count_outputs(model: Any, example: Any) -> int:
    import torch
    import torch.utils._pytree as pytree

    with torch.no_grad():
        out = model(example)
    leaves = [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]
    if not leaves:
        raise ExportFailed("the model's forward returns no tensor; nothing to export")
    return len(leaves)


def translation_table(opset: int = DYNAMO_MIN_OPSET, deform_conv: str = "portable") -> dict[Any, Any]:
    """``custom_translation_table`` for exporting twins (``to_export``/``rewrite_model`` output) with
    ``torch.onnx.export(..., dynamo=True, opset_version=opset)`` yourself: the twins' own ops and torchvision's
    ``deform_conv2d`` in the ``deform_conv`` lowering (``std`` needs opset 19). Without it the exporter decomposes
    the twins' ops (``blocks/_ops.py``, a bigger graph) and writes torchlib's ``DeformConv`` (opset >= 19)."""
    from blocks_export.blocks import onnx_translations

    from . import deform_conv as dc

    if opset < DYNAMO_MIN_OPSET:
        raise ValueError(f"the dynamo exporter writes opset {DYNAMO_MIN_OPSET} or newer, got {opset}")
    try:
        deform = dc.dynamo_translation_table(deform_conv, opset)
    except ValueError as e:
        raise ValueError(f"deform_conv={deform_conv!r} at opset {opset}: {e}") from None
    return {**deform, **onnx_translations(opset)}


def _program_uses_deform_conv(program: Any) -> bool:
    import torch

    target = torch.ops.torchvision.deform_conv2d.default if hasattr(torch.ops.torchvision, "deform_conv2d") else None
    return target is not None and any(n.op == "call_function" and n.target == target for n in program.graph.nodes)


def _module_uses_deform_conv(model: Any) -> bool:
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        return "torchvision::deform_conv2d" in str(model.inlined_graph)
    from torchvision.ops import DeformConv2d

    return any(isinstance(m, DeformConv2d) for m in model.modules())


def resolve_opset(opset: int, opset_fixed: bool, lowering: str, uses_deform_conv: bool) -> tuple[int, list[str]]:
    """Raise the opset to 19 for ONNX ``DeformConv`` unless the user fixed it (then refuse)."""
    if uses_deform_conv and lowering == "std" and opset < STD_DEFORM_CONV_OPSET:
        if opset_fixed:
            raise UsageError(f"`opset={opset}`: the model has a deformable convolution and `deform_conv=std` "
                             f"emits ONNX DeformConv, which needs opset >= {STD_DEFORM_CONV_OPSET}; use `opset="
                             f"{STD_DEFORM_CONV_OPSET}` or `deform_conv=portable`")
        return STD_DEFORM_CONV_OPSET, [f"opset raised to {STD_DEFORM_CONV_OPSET} for ONNX DeformConv"]
    return opset, []


_NOISY_LOGGERS = ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo", "torch.fx", "torch._export",
                  "torch.utils._sympy", "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters print progress on stdout, warn and log freely (stack traces of conversions they then
    give up on); stdout is reserved for ``--json`` and failures are reported here, in one line."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_program(model: Any, example: Any, dynamic: bool,
                   batch_max: int | None = None) -> tuple[Any, dict[str, dict[str, int | None]] | None, list[str]]:
    """``torch.export.export``; with ``dynamic``, batch/H/W dynamic and their valid ranges derived.

    Returns (program, {axis: {"min", "max", "multiple_of"}} or ``None`` when static, notes).
    """
    import torch
    from torch.export import Dim

    from blocks_export.blocks import traced_as_ops  # the twins' ops, translated by ``onnx_translations``

    if not dynamic:
        try:
            with _quiet_exporter(), traced_as_ops():
                return torch.export.export(model, (example,), strict=False), None, []
        except Exception as e:
            raise ExportFailed(f"torch.export failed: {one_line(e)} (rerun with `debug=True` for the traceback)") from e
    if example.shape[0] == 1:
        # torch.export specialises dimensions of size 0 and 1 ("0/1 specialization"), so a dynamic batch is
        # traced with two samples; in eval mode samples do not interact, the graph is the same.
        example = torch.cat([example, example], 0)  # (2, C, H, W)
    # Dim.AUTO, not named Dims: with named Dims torch.export solves the guards itself and proposes "suggested
    # fixes", and its solver breaks on the guards of padded windows (ACmix: "Cannot create Dim with
    # inconsistent min=0, max=-oo" for the sample models). AUTO keeps every guard; they are solved below.
    batch = Dim.AUTO(min=1, max=batch_max) if batch_max else Dim.AUTO
    shapes = ({0: batch, 2: Dim.AUTO, 3: Dim.AUTO},)
    try:
        with _quiet_exporter(), traced_as_ops():
            program = torch.export.export(model, (example,), dynamic_shapes=shapes, strict=False)
    except Exception as e:
        raise ExportFailed(f"`dynamic=True`: torch.export failed: {one_line(e)} "
                           "(rerun with `debug=True` for the traceback)") from e
    ranges, notes = derive_dynamic_ranges(program, tuple(int(s) for s in example.shape), batch_max)
    return program, ranges, notes


def to_onnx(model: Any, example: Any, *, opset: int, opset_fixed: bool = False, lowering: str = "std",
            exporter: str = "dynamo", dynamic: bool = False, batch_max: int | None = None,
            decompose_layernorm: bool = False, derive_ranges: bool = True) -> OnnxExport:
    """Export ``model`` (``nn.Module``, ``ScriptModule`` or ``ExportedProgram``) at ``example`` [N, C, H, W].

    ``derive_ranges=False``: with the TorchScript exporter and ``dynamic``, no ``torch.export`` trace is made for
    the ranges (for a caller that finds them itself, as the pipeline does by probing the original model); the
    dynamic axes are then recorded without bounds.
    """
    import torch

    if exporter not in ("dynamo", "torchscript"):
        raise UsageError(f"`exporter={exporter!r}`: expected dynamo or torchscript")
    is_program = isinstance(model, torch.export.ExportedProgram)
    is_script = isinstance(model, torch.jit.ScriptModule)
    notes: list[str] = []
    if is_script and exporter == "dynamo":
        exporter = "torchscript"
        notes.append("TorchScript archive: exported with the TorchScript exporter")
    from blocks_export.blocks import onnx_translations

    from . import deform_conv as dc

    if exporter == "torchscript":
        if is_program:  # its module() does not trace under the TorchScript exporter ("Calling train()")
            raise UsageError("`exporter=torchscript`: a torch.export program (.pt2) exports with the dynamo "
                             "exporter only; use `exporter=dynamo`")
        ranges = None
        if dynamic and not is_script and derive_ranges:
            # The TorchScript exporter knows no shape constraints: torch.export traces the same module for
            # them (a dimension the model fixes is refused here, as with the dynamo exporter).
            try:
                _, ranges, more = export_program(model, example, True, batch_max)
                notes += more
            except ExportFailed as e:
                notes.append(f"dynamic ranges not derived ({e}); verified with multiples of 32")
        uses_dc = _module_uses_deform_conv(model)
        opset, more = resolve_opset(opset, opset_fixed, lowering, uses_dc)
        notes += more
        n_out = _count_outputs(model, example)
        return _torchscript_export(model, example, opset, lowering, dynamic, n_out, uses_dc, dc, notes, ranges,
                               derive_ranges)

    derived = None
    if is_program:
        program = model
        if dynamic:
            notes.append("torch.export program: its own shapes are kept (`dynamic=True` does not change them)")
    else:
        program, derived, more = export_program(model, example, dynamic, batch_max)
        notes += more
    uses_dc = _program_uses_deform_conv(program)
    opset, more = resolve_opset(opset, opset_fixed, lowering, uses_dc)
    notes += more
    n_out = len(program.graph_signature.user_outputs)
    output_names = [f"output{i}" for i in range(n_out)]
    table = None
    if uses_dc:
        try:
            dc.check_lowering(lowering, opset)
        except ValueError as e:
            raise UsageError(f"`deform_conv={lowering}`: {e}") from e
        table = dc.dynamo_translation_table(lowering, max(opset, DYNAMO_MIN_OPSET))
    table = {**(table or {}), **onnx_translations(max(opset, DYNAMO_MIN_OPSET))}
    # Read before translation: the ONNX exporter's decompositions rewrite the program's symbolic shapes.
    ranges = derived if derived is not None else (dynamic_ranges(program) if is_program else None)
    try:
        # A program traced here is ours to change; a user's (``.pt2``) goes through the exporter's own passes.
        with _quiet_exporter(), exporter_patches(program_traced_here=not is_program):
            onnx_program = torch.onnx.export(program, (example,), dynamo=True,
                                             opset_version=max(opset, DYNAMO_MIN_OPSET),
                                             input_names=[INPUT_NAME], output_names=output_names,
                                             custom_translation_table=table, verbose=False, optimize=True)
            assert onnx_program is not None  # dynamo=True always returns the program
            proto = onnx_program.model_proto
    except Exception as e:
        raise ExportFailed(f"ONNX translation failed: {one_line(e)} (rerun with `debug=True` for the traceback)") from e
    if decompose_layernorm or opset < LAYER_NORM_OPSET:
        if (n := decompose_layer_norm(proto)):
            notes.append(f"{n} LayerNormalization node(s) decomposed into standard ops")
    if opset < DYNAMO_MIN_OPSET:
        proto = convert_opset(proto, opset)
        notes.append(f"exported at opset {DYNAMO_MIN_OPSET} and converted to opset {opset}")
    if dynamic:
        name_dims(proto, INPUT_NAME)
    dyn = {INPUT_NAME: ranges} if ranges else None
    return OnnxExport(proto, INPUT_NAME, output_names, opset, "dynamo", uses_dc, dyn, notes)


def _torchscript_export(model: Any, example: Any, opset: int, lowering: str, dynamic: bool, n_out: int,
                        uses_dc: bool, dc: ModuleType, notes: list[str],
                        ranges: dict[str, dict[str, int | None]] | None = None,
                        derive_ranges: bool = True) -> OnnxExport:
    import onnx
    import torch

    output_names = [f"output{i}" for i in range(n_out)]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        if ranges is None and derive_ranges:
            notes.append("TorchScript exporter: dynamic ranges are not derived (constraints unknown)")
    ctx: Any = contextlib.nullcontext()
    try:
        dc.check_lowering(lowering, opset)
    except ValueError as e:
        if uses_dc:
            raise UsageError(f"`deform_conv={lowering}`: {e}") from e
    else:
        ctx = dc.torchscript_symbolic(lowering, opset)
    buf = io.BytesIO()
    try:
        with _quiet_exporter(), ctx:
            torch.onnx.export(model, (example,), buf, dynamo=False,  # type: ignore[arg-type]  # file objects work
                              opset_version=opset, input_names=[INPUT_NAME], output_names=output_names,
                              dynamic_axes=dynamic_axes)
    except Exception as e:
        raise ExportFailed(f"TorchScript exporter failed: {one_line(e)} (try `exporter=dynamo`; "
                           "rerun with `debug=True` for the traceback)") from e
    proto = onnx.load_from_string(buf.getvalue())
    dyn = None
    if dynamic:
        dyn = {INPUT_NAME: ranges or {str(a): {"min": 1, "max": None, "multiple_of": None} for a in (0, 2, 3)}}
    return OnnxExport(proto, INPUT_NAME, output_names, opset, "torchscript", uses_dc, dyn, notes)
