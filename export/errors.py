"""Exception types of the export pipeline, each carrying the process exit code the CLI returns for it.

Exit codes (documented in README): 0 ok; 1 export, verification or target check failed; 2 bad usage or bad
input; 3 a runtime is missing (TensorRT, a GPU, an optional component); 130/143 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

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


class ExportError(Exception):
    """Base class: ``str(error)`` is one line saying what is wrong and what to do."""

    exit_code: int = EXIT_FAILED


class UsageError(ExportError, ValueError):
    """An option or a combination of options that cannot work (e.g. ``--deform-conv std --opset 17``)."""

    exit_code = EXIT_USAGE


class InputError(ExportError, ValueError):
    """The model file (or ONNX file) cannot be used: missing, corrupted, holds no model, needs trust."""

    exit_code = EXIT_USAGE


class OutputError(ExportError):
    """The output path cannot be written (exists without ``--force``, folder missing or read-only, ...)."""

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
