"""SIGINT / SIGTERM for the ``blocks-export`` program: at any moment, exit 130 / 143 with one line.

Why not Python's default ``KeyboardInterrupt``: an exception raised while a C extension imports a module is
turned into an ``ImportError`` by that extension. onnxruntime's ``_pybind_state`` and torch's ``_C`` import
numpy from their init; a SIGINT landing inside numpy's import then comes out as "ImportError: import numpy
failed" (numpy's ``_import_array``), which callers read as "onnxruntime is not installed", or which a library's
``except ImportError`` fallback swallows and the run goes on, half-imported, to a later ``RecursionError``.

So the handler here never raises inside an import: it records the signal and polls (``SIGALRM`` every 20 ms)
until the import machinery is off the stack, then raises ``KeyboardInterrupt`` (SIGINT) or ``Interrupted``
(SIGTERM) from ordinary code, where ``finally`` blocks and the atomic writers clean up. It raises once: a
second signal during that cleanup is recorded, not raised again inside a ``finally``. Before ``main`` runs
(while ``cli.py`` itself is imported) a signal is only recorded, and ``arm`` raises it as ``main`` starts.

The handlers are installed when this module is imported by the ``blocks-export`` program itself (the console
script, or ``python -m blocks_export.export.cli``), never in a process that merely imports the library (a test
runner, a notebook). A signal before this module is imported (interpreter start-up) gets Python's default:
nothing has been written then.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

from .errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted

POLL_S = 0.02
_IMPORT_FRAMES = ("<frozen importlib._bootstrap", "<frozen importlib._bootstrap_external")


class _State:
    installed = False
    armed = False
    raised = False
    reported = False
    received: int | None = None


_state = _State()


def _in_extension_init(frame: FrameType | None) -> bool:
    """Is a C extension module being created or initialised below ``frame``?

    importlib runs an extension's ``PyInit_*`` (create) and its multi-phase exec through
    ``_call_with_frames_removed(_imp.create_dynamic | _imp.exec_dynamic, ...)``; Python code that init calls
    (an ``import numpy``) has that frame below it on the stack.
    """
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_call_with_frames_removed" and code.co_filename.startswith(_IMPORT_FRAMES):
            called = frame.f_locals.get("f")
            if getattr(called, "__name__", "") in ("create_dynamic", "exec_dynamic"):
                return True
        frame = frame.f_back
    return False


def exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted()


def exit_code_for(signum: int) -> int:
    return EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM


def message_for(signum: int) -> str:
    """The one line for ``signum`` (the program prints it once: see ``reported``)."""
    _state.reported = True
    name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
    return f"interrupted ({name}); nothing was left half-written"


def _raise_when_outside_imports(frame: FrameType | None) -> None:
    assert _state.received is not None
    if _state.raised or not _state.armed:
        return
    if _in_extension_init(frame) and hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, POLL_S)  # inside an extension's init: look again shortly
        return
    _state.raised = True
    raise exception_for(_state.received)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state.received is None:
        _state.received = signum
    _raise_when_outside_imports(frame)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _state.received is not None:
        _raise_when_outside_imports(frame)


def received() -> int | None:
    """The first SIGINT/SIGTERM this program received, if any."""
    return _state.received


def reported() -> bool:
    """Has the line for the signal been made (``message_for``)?"""
    return _state.reported


def installed() -> bool:
    return _state.installed


def install() -> None:
    """Install the handlers (main thread only; elsewhere Python cannot, and nothing changes)."""
    if _state.installed:
        return
    try:
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        if hasattr(signal, "SIGALRM"):
            signal.signal(signal.SIGALRM, _on_alarm)
    except ValueError:  # not the main thread
        return
    _state.installed = True


def arm() -> None:
    """From now on a signal raises (outside imports); one received before is raised here."""
    install()
    _state.armed = True
    if _state.received is not None and not _state.raised:
        _state.raised = True
        raise exception_for(_state.received)


def _is_the_program() -> bool:
    main: Any = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", "") == "blocks_export.export.cli":
        return True  # python -m blocks_export.export.cli
    return os.path.basename(sys.argv[0] if sys.argv else "").removesuffix(".exe") == "blocks-export"


if _is_the_program():
    install()
