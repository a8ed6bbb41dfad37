"""Exception types of the export pipeline, each carrying the process exit code the CLI returns for it.

Exit codes (documented in README): 0 ok; 1 export, verification or target check failed; 2 bad usage or bad
input; 3 a runtime is missing (TensorRT, a GPU, an optional component); 130/143 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MISSING_RUNTIME = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def one_line(e: BaseException) -> str:
    """``e`` as ``Type: first line`` (at most 200 characters): how a foreign failure appears in a refusal."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


#: How library text names an export option: ```name``` or ```name=value```, ``name`` an
#: ``ExportOptions`` field (```fp16=True```, ```simplify=False```, ```deform_conv=portable```). Only the CLI
#: turns these into its flag words (``export/cli.py``); a library caller reads them as keyword arguments.
OPTION_REF = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")


def option_refs(text: str) -> list[tuple[str, str | None]]:
    """The options ``text`` names, in order, as ``(name, value)`` (``value`` None for a bare reference)."""
    return [(m.group(1), m.group(2)) for m in OPTION_REF.finditer(text)]


class ExportError(Exception):
    """Base class: ``str(error)`` is one line saying what is wrong and what to do.

    The options it concerns are structured facts: ``option`` is the one the message is about (the reference it
    opens with, e.g. ```imgsz='0'`: expected ...``), ``value`` the value given, ``options`` every option it names
    (the one at fault and those the hint suggests).
    """

    exit_code: int = EXIT_FAILED

    @property
    def options(self) -> list[tuple[str, str | None]]:
        return option_refs(str(self))

    @property
    def option(self) -> str | None:
        m = OPTION_REF.match(str(self))
        return m.group(1) if m else None

    @property
    def value(self) -> str | None:
        m = OPTION_REF.match(str(self))
        return m.group(2) if m else None


class UsageError(ExportError, ValueError):
    """An option or a combination of options that cannot work (e.g. ``deform_conv='std'`` with ``opset=17``)."""

    exit_code = EXIT_USAGE


class InputError(ExportError, ValueError):
    """The model file (or ONNX file) cannot be used: missing, corrupted, holds no model, needs trust."""

    exit_code = EXIT_USAGE


class OutputError(ExportError):
    """The output path cannot be written (exists and ``force`` is off, folder missing or read-only, ...)."""

    exit_code = EXIT_USAGE


class OutputWriteError(OutputError, OSError):
    """Writing the output failed for a reason of the disk or the folder (full, read-only, permissions).

    Also an ``OSError``, so callers that handle filesystem errors still catch it.
    """


class ExportFailed(ExportError, RuntimeError):
    """The exporter, the simplifier or another conversion step failed on a model that loaded fine."""

    exit_code = EXIT_FAILED


class RuntimeMissing(ExportError, RuntimeError):
    """A runtime or optional component needed for the requested step is not installed here."""

    exit_code = EXIT_MISSING_RUNTIME


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so that ``finally`` blocks remove temporary files.

    A ``BaseException`` like ``KeyboardInterrupt`` (SIGINT), so ordinary ``except Exception`` handlers in
    libraries do not swallow it.
    """

    exit_code = EXIT_SIGTERM
