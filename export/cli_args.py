"""The command line's shared arguments and options (``typer`` annotations of the commands' parameters) and the
parsing of ``--arch-kwargs``. Reads nothing but the arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import UsageError
from .targets import TARGETS  # light: plain data

ModelArg = Annotated[Path, typer.Argument(help="model file: .pt/.pth (module, checkpoint or state_dict), "
                                               "TorchScript, torch.export .pt2, or .onnx (with --to trt)",
                                          show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print only the JSON report on stdout")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]
InspectModelArg = Annotated[Path, typer.Argument(help="model file: .pt/.pth (module, checkpoint or state_dict), "
                                                      "TorchScript, torch.export .pt2, or .onnx",
                                                 show_default=False)]
BatchOpt = Annotated[int, typer.Option("--batch", help="batch size of the export shape")]
DeformConvOpt = Annotated[str, typer.Option("--deform-conv", help="DeformConv lowering: auto (the target's), std, "
                                                                  "portable or plugin")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="allow unpickling that runs code from the "
                                                                     "file (only for files you trust)")]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="MODULE:CALLABLE building the model for a "
                                                            "state_dict file")]
ArchKwargsOpt = Annotated[str | None, typer.Option("--arch-kwargs", help="keyword arguments for the --arch "
                                                                         "callable, as a JSON object, e.g. "
                                                                         "'{\"num_classes\": 10}'")]
TargetOpt = Annotated[str | None, typer.Option("--target", help=f"{', '.join(TARGETS)} "
                                                                "(default: ort; jetpack6 with --to trt)")]

InspectTargetOpt = Annotated[str | None, typer.Option("--target", help=f"{', '.join(TARGETS)} (default: ort)")]


def parse_arch_kwargs(text: str | None, arch: str | None) -> dict[str, object]:
    """``--arch-kwargs`` as a JSON object (parsed, never evaluated)."""
    import json

    if arch is not None:
        from .load import parse_arch

        parse_arch(arch)  # a malformed MODULE:CALLABLE is refused before anything is loaded
    if text is None:
        return {}
    if arch is None:
        raise UsageError("--arch-kwargs needs --arch MODULE:CALLABLE (the callable it is passed to)")
    shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} characters)"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--arch-kwargs {shown}: not JSON ({e.msg} at character {e.pos}); "
                         "expected an object such as '{\"num_classes\": 10}'") from None
    except (ValueError, RecursionError) as e:  # a number past Python's digit limit, nesting past the stack
        why = "nested too deeply" if isinstance(e, RecursionError) else (str(e).split(";")[0] or "bad number")
        raise UsageError(f"--arch-kwargs {shown}: cannot be read ({why}); pass a flat JSON object such as "
                         "'{\"num_classes\": 10}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"--arch-kwargs {shown}: expected a JSON object of keyword arguments, "
                         f"not a {type(value).__name__}")
    return value
