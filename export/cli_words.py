"""The command line's words: the library's option names (``errors.OPTION_REF``) spelled as flags, and text made
safe for the terminal (``shown``). Pure text; writes nothing.
"""

from __future__ import annotations

from typing import Any

from .errors import OPTION_REF, ExportError
from .trt.api import Rebuild, TensorRTUnavailable  # light: tensorrt is imported when a build starts

#: Option names of the library's words (``errors.OPTION_REF``) that are not spelled ``--name-with-dashes`` here.
_FLAG_SPELLING = {"output": "-o/--output"}
#: Names the CLI has a flag for: the ``ExportOptions`` fields and the CLI's own switches.
_FLAGS = frozenset({"to", "output", "imgsz", "batch", "dynamic", "opset", "target", "deform_conv", "fp16", "fp16_io",
                    "exporter", "simplify", "verify", "trust_pickle", "arch", "arch_kwargs", "force", "quiet", "json",
                    "min_shape", "opt_shape", "max_shape", "workspace_mb", "verify_with", "debug", "channels",
                    "int8", "calib", "calib_count", "int8_budget", "int8_budget_metric", "rtol", "atol", "data", "runs",
                    "warmup", "threads", "val", "images"})


def flag_words(text: str) -> str:
    """Library words to the CLI's: ```fp16=True``` -> ``--fp16``, ```simplify=False``` -> ``--no-simplify``,
    ```deform_conv=portable``` -> ``--deform-conv portable``, ```output``` -> ``-o/--output``."""
    def spell(m: Any) -> str:
        name, value = m.group(1), m.group(2)
        if name not in _FLAGS:
            return str(m.group(0))
        flag = _FLAG_SPELLING.get(name, "--" + name.replace("_", "-"))
        if value is None or value == "True":
            return flag
        if value == "False":
            return "--no-" + name.replace("_", "-")
        return f"{flag} {value}"

    return OPTION_REF.sub(spell, text)


def jetson_command(rebuild: Rebuild) -> str:
    """The ``blocks-export`` command line that builds the same engine on the device."""
    return " ".join(["blocks-export", rebuild.onnx, *(flag_words(f"`{name}={value}`") for name, value in
                                                      rebuild.options())])


def shown(text: str) -> str:
    """``text`` for the terminal: in the CLI's words, control and bidi characters of file names, node names,
    labels and doc strings escaped (no escape sequence is acted on, a newline does not split a line), rich
    markup characters literal."""
    from rich.markup import escape

    from blocks_export.runtime.infer import printable

    return str(escape(printable(flag_words(text))))


def error_text(e: ExportError) -> str:
    """A library error in the CLI's words; TensorRT or a GPU missing ends with the command to run on the Jetson."""
    if isinstance(e, TensorRTUnavailable) and e.rebuild is not None:
        return flag_words(f"{e.reason}; on the Jetson run: {jetson_command(e.rebuild)}")
    return flag_words(str(e))


class InFlagWords:
    """A console whose printed strings are in the CLI's words (see ``flag_words``)."""

    def __init__(self, console: Any) -> None:
        self._console = console

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self._console.print(*(flag_words(o) if isinstance(o, str) else o for o in objects), **kwargs)
