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
