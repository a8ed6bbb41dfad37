"""How one command body runs: the consoles it prints on, SIGTERM raised as an exception, and every failure turned
into one line on stderr (with ``--json``, the error document on stdout) and the documented exit code (``errors.py``).
Writes only to stdout and stderr.
"""

from __future__ import annotations

import contextlib
import signal
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import typer

from . import interrupts
from .cli_words import error_text, flag_words, shown
from .errors import EXIT_FAILED, EXIT_SIGINT, ExportError, Interrupted

PROG = "blocks-export"


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


#: Console width when stdout is not a terminal: rich would cut tables at 80 columns (shapes become ``1x3x1…``);
#: a table takes only the width it needs, so a wide console means never cut.
PIPE_WIDTH = 1000


def stdout_console() -> Any:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH)
    return console


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """SIGTERM raises ``Interrupted`` so that atomic writes clean up, as SIGINT does with KeyboardInterrupt
    (in-process callers; the program itself has ``interrupts``' handlers)."""
    if interrupts.installed():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error_json(message: str, code: int) -> str:
    import json

    return json.dumps({"format": "blocks-export-report/1", "status": "ERROR", "exit_code": code, "error": message})


def _print_notices(err: Any) -> None:
    """Say which temporaries of other runs were found beside the outputs and left (see ``io.take_notices``)."""
    from .io import take_notices

    for note in take_notices():
        err.print(f"{PROG}: note: {shown(note)}")


def run_command(fn: Callable[[], int], *, debug: bool, json_out: bool) -> None:
    """Run a command body; map exceptions to one line on stderr and the documented exit code."""
    err = stderr_console()
    try:
        with _sigterm_as_exception():
            try:
                code = fn()
            finally:
                _print_notices(err)
    except ExportError as e:
        if debug:
            traceback.print_exc()
        code = e.exit_code
        _refuse(error_text(e), code, json_out, err)
    except KeyboardInterrupt:
        code = EXIT_SIGINT
        _refuse(interrupts.message_for(signal.SIGINT), code, json_out, err)
    except Interrupted as e:
        code = e.exit_code
        _refuse(interrupts.message_for(signal.SIGTERM), code, json_out, err)
    except Exception as e:
        signum = interrupts.received()
        if signum is not None:  # a consequence of the signal (a library turned it into another error)
            code = interrupts.exit_code_for(signum)
            _refuse(interrupts.message_for(signum), code, json_out, err)
            raise typer.Exit(code) from None
        # an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        code = EXIT_FAILED
        first = (str(e).strip().splitlines() or [""])[0][:200]
        _refuse(f"unexpected error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", code,
                json_out, err)
    raise typer.Exit(code)


def _refuse(message: str, code: int, json_out: bool, err: Any) -> None:
    from rich.markup import escape

    from blocks_export.runtime.infer import printable

    message = printable(flag_words(message))  # one line, no escape sequence of a file or model name acted on
    err.print(f"{PROG}: error: {escape(message)}")
    if json_out:
        print(_error_json(message, code))
