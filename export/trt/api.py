"""The TensorRT Python API as this package uses it: typed against ``tensorrt-stubs`` (``.ci/mypy-trt``) and
imported lazily, so nothing here needs TensorRT until a function is called.

What is missing is said before anything is written (``TensorRTUnavailable``, with the facts of the build to
run on the Jetson instead; the CLI spells them as its command line): ``load_tensorrt`` (the ``tensorrt`` module with its
libraries, not the type stubs alone), ``cuda_device`` (a GPU through the CUDA driver). The rest wraps the
documented classes (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/): an ``ILogger``
that keeps the messages, an ``IProgressMonitor`` (10.0+) or a periodic line, the parser's errors with node
names, and the network's IO tensors as plain data.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ExportFailed, RuntimeMissing

if TYPE_CHECKING:
    import onnx
    import tensorrt as trt

Progress = Callable[[str], None]
# Seconds between two progress lines when the TensorRT version has no IProgressMonitor (8.x).
TICK_SECONDS = 15.0


@dataclass(frozen=True)
class Rebuild:
    """What builds the same engine on the device, as facts (the CLI spells them as its command line)."""

    onnx: str  # the ONNX file's name
    target: str
    fp16: bool
    shapes: tuple[list[int], list[int], list[int]] | None  # (min, opt, max) of a one-input profile
    workspace_mb: int | None

    def options(self) -> list[tuple[str, str]]:
        """The build's options as ``(name, value)``, named as ``ExportOptions`` fields."""
        opts = [("to", "trt"), ("target", self.target)]
        if self.fp16:
            opts.append(("fp16", "True"))
        if self.shapes is not None:
            opts += [(name, ",".join(str(int(d)) for d in shape))
                     for name, shape in zip(("min_shape", "opt_shape", "max_shape"), self.shapes, strict=True)]
        if self.workspace_mb:
            opts.append(("workspace_mb", str(self.workspace_mb)))
        return opts


class TensorRTUnavailable(RuntimeMissing):
    """TensorRT or a GPU is missing here: ``reason`` says what; ``rebuild`` (when a build was asked for) holds
    the facts of the same build to run on the Jetson."""

    def __init__(self, reason: str, rebuild: Rebuild | None = None) -> None:
        self.reason, self.rebuild = reason, rebuild
        if rebuild is None:
            where = "run it on the Jetson (or any machine with TensorRT and a GPU)"
        else:
            words = " ".join(f"`{name}={value}`" for name, value in rebuild.options())
            where = f"on the Jetson build {rebuild.onnx} with {words}"
        super().__init__(f"{reason}; {where}")


class EngineBuildError(ExportFailed):
    """TensorRT is there, but the target check, the parser or the builder failed on this model."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.7"


def load_tensorrt(rebuild: Rebuild | None = None) -> None:
    """Check that the real ``tensorrt`` module imports, else ``TensorRTUnavailable`` (carrying ``rebuild``).
    Callers then ``import tensorrt`` themselves, so type checkers see the documented API."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the bindings are there but libnvinfer is not
        raise TensorRTUnavailable(f"TensorRT's Python package is not installed here ({e})", rebuild) from None
    # The type stubs (tensorrt-stubs) install a `tensorrt` folder without the library: a namespace package.
    if not hasattr(tensorrt, "Builder"):
        raise TensorRTUnavailable("TensorRT's libraries are not installed here (the `tensorrt` package found "
                                  "holds only type stubs)", rebuild)


# CUdevice_attribute values of the CUDA driver API (cuda.h; https://docs.nvidia.com/cuda/cuda-driver-api/).
_CU_COMPUTE_CAPABILITY_MAJOR = 75
_CU_COMPUTE_CAPABILITY_MINOR = 76


def cuda_device(rebuild: Rebuild | None = None, index: int = 0) -> DeviceInfo:
    """Name and compute capability of GPU ``index`` through the CUDA driver (``libcuda``), no CUDA toolkit;
    ``TensorRTUnavailable`` (carrying ``rebuild``) without one."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1" if os.name != "nt" else "nvcuda.dll")
    except OSError:
        raise TensorRTUnavailable("no NVIDIA GPU driver here (libcuda not found)", rebuild) from None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= index:
        raise TensorRTUnavailable(f"no usable CUDA GPU here (driver found, device {index} not available)", rebuild)
    dev = ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(dev), index)
    cuda.cuDeviceGetName(name, 256, dev)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_COMPUTE_CAPABILITY_MAJOR, dev)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_COMPUTE_CAPABILITY_MINOR, dev)
    return DeviceInfo(name.value.decode(errors="replace"), f"{major.value}.{minor.value}")


def major(version: str) -> int:
    """'10.3.0.26' -> 10."""
    return int(version.split(".")[0])


def logger(errors: list[str], warnings: list[str]) -> trt.ILogger:
    """An ``ILogger`` that keeps error and warning messages (for the exceptions and the result)."""
    import tensorrt as trt

    severity = trt.ILogger.Severity

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: trt.ILogger.Severity, msg: str) -> None:
            if level in (severity.ERROR, severity.INTERNAL_ERROR):
                errors.append(msg)
            elif level == severity.WARNING:
                warnings.append(msg)

    return _Logger()


def init_plugins(log: trt.ILogger, errors: list[str]) -> None:
    """Register the built-in plugins (``ModulatedDeformConv2d`` for DeformConv, ...): needed before parsing and
    before deserializing an engine that uses them; ``EngineBuildError`` when the plugin library fails."""
    import tensorrt as trt

    if not trt.init_libnvinfer_plugins(log, ""):
        raise EngineBuildError("TensorRT's plugin library (libnvinfer_plugin) could not be initialised: "
                               + ("; ".join(errors) or "no message") + "; check the TensorRT installation")


def progress_monitor(progress: Progress) -> trt.IProgressMonitor:
    """An ``IProgressMonitor`` (TensorRT 10.0+) reporting top-level phases and their steps."""
    import tensorrt as trt

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.top: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self.top[phase_name] = num_steps
                progress(f"TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self.top:
                progress(f"TensorRT: {phase_name} {step + 1}/{self.top[phase_name]}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.top.pop(phase_name, None)

    return _Monitor()


class Ticker:
    """A progress line every ``TICK_SECONDS`` while the build runs (TensorRT without IProgressMonitor)."""

    def __init__(self, progress: Progress, interval: float | None = None) -> None:
        self.progress = progress
        self.interval = TICK_SECONDS if interval is None else interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.start = time.monotonic()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.progress(f"building TensorRT engine... {time.monotonic() - self.start:.0f} s")

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def parser_errors(parser: trt.OnnxParser, model: onnx.ModelProto) -> list[str]:
    """One line per parser error: node name (``node_name()`` on 10.x, else looked up by index), op, text."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        index = int(err.node())
        node = model.graph.node[index] if 0 <= index < len(model.graph.node) else None
        name = err.node_name() if hasattr(err, "node_name") else ""
        name = name or (node.name if node is not None else "") or f"<node {index}>"
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        op = op or (node.op_type if node is not None else "?")
        lines.append(f"node {name!r} ({op}): {err.desc()}")
    return lines


def dims(shape: Any) -> list[int]:
    return [int(d) for d in shape]


def dtype_name(dtype: Any) -> str:
    names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
             "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8"}
    key = getattr(dtype, "name", str(dtype).split(".")[-1])
    return names.get(key, key.lower())


def network_io(network: trt.INetworkDefinition) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The network's inputs and outputs as ``{"name", "shape", "dtype"}`` records (the sidecar's form)."""
    def records(tensors: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "shape": dims(t.shape), "dtype": dtype_name(t.dtype)} for t in tensors]

    return (records([network.get_input(i) for i in range(network.num_inputs)]),
            records([network.get_output(i) for i in range(network.num_outputs)]))
