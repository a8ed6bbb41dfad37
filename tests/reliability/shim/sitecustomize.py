"""Loaded at start-up by the interrupt and concurrency tests' subprocesses (``PYTHONPATH``).

``BLOCKS_EXPORT_TEST_SLOW=<step>`` makes that step of the export slow (it prints ``SLOW-STEP <step>`` on stderr,
then sleeps), so the test can send a signal while it runs: ``export`` (the ONNX exporter), ``simplify``
(onnxslim), ``engine`` (the TensorRT build, through the tensorrt test double ``trt_double.py`` on a fake GPU).
``BLOCKS_EXPORT_TEST_TRT=1`` installs the tensorrt double without slowing anything down.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

STEP = os.environ.get("BLOCKS_EXPORT_TEST_SLOW", "")
SLEEP_S = 60.0


def _announce_and_sleep() -> None:
    print(f"SLOW-STEP {STEP}", file=sys.stderr, flush=True)
    time.sleep(SLEEP_S)


def _slow(module: object, name: str) -> None:
    original = getattr(module, name)

    def slow(*args: object, **kwargs: object) -> object:
        _announce_and_sleep()
        return original(*args, **kwargs)

    setattr(module, name, slow)


if STEP == "export":
    from blocks_export.export import onnx_export

    _slow(onnx_export, "to_onnx")
elif STEP == "simplify":
    from blocks_export.export import simplify

    _slow(simplify, "simplify")
if STEP == "engine" or os.environ.get("BLOCKS_EXPORT_TEST_TRT") == "1":
    import trt_double

    from blocks_export.export.trt import api

    knobs = trt_double.Knobs()
    trt = trt_double.make_tensorrt("10", knobs)
    sys.modules["tensorrt"] = trt
    api.cuda_device = lambda command, index=0: api.DeviceInfo("Orin (double)", "8.7")
    if STEP == "engine":
        builder = trt.Builder
        build = builder.build_serialized_network

        def slow_build(self: object, network: object, config: object) -> object:
            _announce_and_sleep()
            return build(self, network, config)

        builder.build_serialized_network = slow_build


# ``BLOCKS_EXPORT_TEST_SIGNAL_AT=<point>``: stop at a known point of start-up, print ``SIGNAL-POINT <point> ...``
# on stderr and wait there (up to 60 s) until the program has received the test's signal, then go on:
#   interpreter   here, in sitecustomize, before any blocks-export code (Python's own signal handling)
#   cli-import    while export/cli.py imports typer (before ``main`` runs)
#   numpy         when numpy is first imported
#   torch         when ``import torch`` starts (the load step)
#   torch-C-init  inside the C extension torch._C's init, as it imports a Python module
#   ort-C-init    inside onnxruntime's pybind11 extension init (its first object.__setattr__ audit event): an
#                 exception raised there comes out as "ImportError: initialization failed", which onnxruntime
#                 re-raises and the --verify runtime check read as "onnxruntime is not installed" (exit 3)
POINT = os.environ.get("BLOCKS_EXPORT_TEST_SIGNAL_AT", "")


def _extension_being_initialised() -> str | None:
    """The C extension whose init (``_imp.create_dynamic`` / ``exec_dynamic``) is on the stack, if any."""
    frame: Any = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "_call_with_frames_removed":
            called = frame.f_locals.get("f")
            if getattr(called, "__name__", "") in ("create_dynamic", "exec_dynamic"):
                arg = (frame.f_locals.get("args") or (None,))[0]
                return str(getattr(arg, "name", None) or getattr(arg, "__name__", "?"))
        frame = frame.f_back
    return None


def _wait_for_the_signal(point: str) -> None:
    print(f"SIGNAL-POINT {point} in-extension-init={_extension_being_initialised()}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + SLEEP_S
    while time.monotonic() < deadline:  # ends early by the signal: KeyboardInterrupt / Interrupted / death
        handled = sys.modules.get("blocks_export.export.interrupts")
        if handled is not None and handled.received() is not None:
            return  # the program recorded it (and raises it where it is safe to)
        time.sleep(0.01)


class _StopAtImport:
    """A meta-path finder that finds nothing: it only stops the first import matching the point."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if POINT == "torch-C-init":
            hit = _extension_being_initialised() == "torch._C"
        else:
            hit = fullname == {"cli-import": "typer", "numpy": "numpy", "torch": "torch"}[POINT]
        if hit:
            sys.meta_path.remove(self)
            _wait_for_the_signal(POINT)
        return None


_ORT_EXTENSION = "onnxruntime.capi.onnxruntime_pybind11_state"
_busy: list[str] = []  # the hook's own audited calls (sys._getframe) must not re-enter it


def _stop_in_ort_init(event: str, args: object) -> None:
    if _busy or event != "object.__setattr__":  # pybind11 setting a class attribute: inside PyInit_*
        return
    _busy.append(event)  # stays: stop once
    if _extension_being_initialised() == _ORT_EXTENSION:
        _wait_for_the_signal(POINT)
    else:
        _busy.clear()


if POINT == "interpreter":
    _wait_for_the_signal(POINT)
elif POINT == "ort-C-init":
    sys.addaudithook(_stop_in_ort_init)
elif POINT:
    sys.meta_path.insert(0, _StopAtImport())
