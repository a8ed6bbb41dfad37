"""TensorRT engine build from an ONNX file, with the documented TensorRT Python API (imported lazily).

``build_engine`` writes three files beside each other, each complete or absent (temporary file + ``os.replace``,
all built in memory first):

- ``model.engine``: the plain serialized engine (no header; ``trtexec --loadEngine`` and any loader read it);
- ``model.engine.json``: what it was built from and for (format ``blocks-export-engine/1``);
- ``model_ctx.onnx``: the onnxruntime EPContext model (``epcontext``);

and keeps the builder's timing cache in ``model.timing.cache`` (read before, written after every build).

Steps (TensorRT Python API, https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):
the static target check (``check.check_model``), ``init_libnvinfer_plugins`` (DeformConv is imported as the
``ModulatedDeformConv2d`` plugin), ``Builder``, ``create_network`` (``EXPLICIT_BATCH`` on 8.x, where implicit
batch is still the default; ``STRONGLY_TYPED`` from 10.0 when the ONNX carries fp16), ``OnnxParser.parse``
(errors reported with node names), one optimization profile, ``set_memory_pool_limit(WORKSPACE)``, the timing
cache, ``BuilderFlag.FP16`` only where the target builds fp16 by weak typing and the flag exists (TensorRT 11
removed it: TensorRT 10.x -> 11.x migration guide) -- with the precision-sensitive layers (those ``fp16`` keeps
fp32 in the fp16 ONNX) asked to run in fp32 --, progress through ``IProgressMonitor`` (10.0+) or a periodic
line, ``build_serialized_network``.

Without TensorRT or without a GPU, ``TensorRTUnavailable`` says what is missing and the command to run on the
Jetson, before anything is written. On this project's development and CI machines (no GPU, no TensorRT
libraries) this module is exercised through a test double of the API and type-checked against
``tensorrt-stubs``; ``run_engine``/``engine_parity`` only run where TensorRT and a GPU exist, but their
sidecar check (``verify_engine``: SHA-256, TensorRT version, compute capability) runs before anything is
deserialized and is tested here.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from .check import check_model
from .epcontext import engine_reference, ep_context_model
from .errors import EXIT_MISSING_RUNTIME, ExportError, ExportFailed, RuntimeMissing
from .fp16 import float_types, fp32_nodes, name_nodes
from .io import write_files
from .targets import Target, get_target

if TYPE_CHECKING:
    import numpy as np
    import tensorrt as trt

    from ..runtime.parity import Comparison

ENGINE_FORMAT = "blocks-export-engine/1"
# (min, opt, max) shapes of one input, or {"min": [..], "opt": [..], "max": [..]} as the sidecar writes them.
ShapeRange = tuple[Sequence[int], Sequence[int], Sequence[int]] | Mapping[str, Sequence[int]]
Progress = Callable[[str], None]
# Seconds between two progress lines when the TensorRT version has no IProgressMonitor (8.x).
TICK_SECONDS = 15.0


class TensorRTUnavailable(RuntimeMissing):
    """TensorRT or a GPU is missing here; the message names what and the command to run on the Jetson."""


class EngineBuildError(ExportFailed):
    """TensorRT is there, but the target check, the parser or the builder failed on this model."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.7"


@dataclass(frozen=True)
class EngineResult:
    engine_path: Path
    sidecar_path: Path
    ctx_path: Path
    timing_cache_path: Path
    tensorrt_version: str
    precision: str
    strongly_typed: bool
    build_seconds: float
    sidecar: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"engine": str(self.engine_path), "sidecar": str(self.sidecar_path), "ep_context": str(self.ctx_path),
                "timing_cache": str(self.timing_cache_path), "tensorrt_version": self.tensorrt_version,
                "precision": self.precision, "strongly_typed": self.strongly_typed,
                "build_seconds": round(self.build_seconds, 3), "warnings": list(self.warnings)}


def _shape_range(value: ShapeRange) -> tuple[list[int], list[int], list[int]]:
    if isinstance(value, Mapping):
        lo, opt, hi = value["min"], value["opt"], value["max"]
    else:
        lo, opt, hi = value
    return [int(d) for d in lo], [int(d) for d in opt], [int(d) for d in hi]


def jetson_command(onnx_path: Path, target: str, fp16: bool, profile: Mapping[str, ShapeRange] | None = None,
                   workspace_mb: int | None = None) -> str:
    """The ``blocks-export`` command that builds the same engine on the device, its options in the library's
    words (``errors.OPTION_REF``; the CLI spells them as its flags)."""
    parts = ["blocks-export", Path(onnx_path).name, "`to=trt`", f"`target={target}`"]
    if fp16:
        parts.append("`fp16=True`")
    if profile and len(profile) == 1:
        lo, opt, hi = _shape_range(next(iter(profile.values())))
        for name, shape in (("min_shape", lo), ("opt_shape", opt), ("max_shape", hi)):
            parts.append(f"`{name}={','.join(str(int(d)) for d in shape)}`")
    if workspace_mb:
        parts.append(f"`workspace_mb={workspace_mb}`")
    return " ".join(parts)


def load_tensorrt(command: str) -> None:
    """Check that the real ``tensorrt`` module imports, else ``TensorRTUnavailable`` (one line ending with
    ``command``). Callers then ``import tensorrt`` themselves, so type checkers see the documented API."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the bindings are there but libnvinfer is not
        raise TensorRTUnavailable(f"TensorRT's Python package is not installed here ({e}); "
                                  f"on the Jetson run: {command}") from None
    # The type stubs (tensorrt-stubs) install a `tensorrt` folder without the library: a namespace package.
    if not hasattr(tensorrt, "Builder"):
        raise TensorRTUnavailable("TensorRT's libraries are not installed here (the `tensorrt` package found "
                                  f"holds only type stubs); on the Jetson run: {command}")


# CUdevice_attribute values of the CUDA driver API (cuda.h; https://docs.nvidia.com/cuda/cuda-driver-api/).
_CU_COMPUTE_CAPABILITY_MAJOR = 75
_CU_COMPUTE_CAPABILITY_MINOR = 76


def cuda_device(command: str, index: int = 0) -> DeviceInfo:
    """Name and compute capability of GPU ``index`` through the CUDA driver (``libcuda``), no CUDA toolkit."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1" if os.name != "nt" else "nvcuda.dll")
    except OSError:
        raise TensorRTUnavailable(f"no NVIDIA GPU driver here (libcuda not found); on the Jetson run: {command}") \
            from None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= index:
        raise TensorRTUnavailable(f"no usable CUDA GPU here (driver found, device {index} not available); "
                                  f"on the Jetson run: {command}")
    dev = ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(dev), index)
    cuda.cuDeviceGetName(name, 256, dev)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_COMPUTE_CAPABILITY_MAJOR, dev)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_COMPUTE_CAPABILITY_MINOR, dev)
    return DeviceInfo(name.value.decode(errors="replace"), f"{major.value}.{minor.value}")


def _major(version: str) -> int:
    return int(version.split(".")[0])


@dataclass(frozen=True)
class _Plan:
    network_flags: int
    fp16_flag: bool
    strongly_typed: bool
    precision: str


def _plan(tgt: Target, fp16: bool, graph_fp16: bool) -> _Plan:
    """Network creation flags and precision switches for this TensorRT, target and ONNX."""
    import tensorrt as trt

    major = _major(trt.__version__)
    if tgt.trt_major is not None and major != tgt.trt_major:
        fits = {8: "jetpack5 (8.5) or jetpack6.0 (8.6)", 10: "jetpack6 or trt10", 11: "trt11"}.get(major, "none")
        raise EngineBuildError(f"target {tgt.name} is TensorRT {tgt.trt_version}, this machine has TensorRT "
                               f"{trt.__version__}; export and build with a matching target ({fits})")
    creation = trt.NetworkDefinitionCreationFlag
    flags = 0
    if major < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    fp16_flag = False
    if tgt.fp16 == "builder_flag":
        # Weak typing (8.x): fp16 kernels need the flag, whether the graph is fp32 or already mixed precision.
        if fp16 or graph_fp16:
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise EngineBuildError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (weak typing was "
                                       "removed in 11.x); build with `target=trt11` from the fp16 ONNX (`fp16=True`)")
            fp16_flag = True
    elif fp16 and not graph_fp16:
        raise EngineBuildError(f"`fp16=True` for target {tgt.name} needs the mixed-precision fp16 ONNX (precision "
                               "lives in the graph there); export with `fp16=True` and build from that file")
    strongly = False
    if graph_fp16 and tgt.fp16 != "builder_flag":
        if hasattr(creation, "STRONGLY_TYPED"):
            flags |= 1 << int(creation.STRONGLY_TYPED)
            strongly = True
        elif major >= 11:
            strongly = True  # 11.x: every network is strongly typed; the flag is accepted or absent
        else:
            raise EngineBuildError(f"TensorRT {trt.__version__} cannot build strongly typed networks "
                                   "(10.0+ can); use `target=jetpack5`/`target=jetpack6.0` with the fp32 ONNX")
    elif major >= 11:
        strongly = True
    precision = "fp16" if (fp16_flag or graph_fp16) else "fp32"
    return _Plan(flags, fp16_flag, strongly, precision)


def _logger(errors: list[str], warnings: list[str]) -> trt.ILogger:
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


def _progress_monitor(progress: Progress) -> trt.IProgressMonitor:
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


class _Ticker:
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

    def __enter__(self) -> _Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# Layer types kept in fp32 in weakly typed fp16 builds (8.x), as ``fp16.BLOCKED_OPS`` keeps their ops fp32 in the
# fp16 ONNX: softmax, normalisations, reductions, grid sampling and plugins (the DeformConv plugin computes its
# sampling coordinates in half precision in fp16, DESIGN.md).
PINNED_LAYER_TYPES = ("SOFTMAX", "NORMALIZATION", "REDUCE", "GRID_SAMPLE", "PLUGIN_V2", "PLUGIN_V3")


def _pin_fp32(network: trt.INetworkDefinition, fp32_names: set[str]) -> list[str]:
    """Weak typing: ask for fp32 in the precision-sensitive layers (type, or name of an fp32 ONNX node).

    ``BuilderFlag.PREFER_PRECISION_CONSTRAINTS`` makes the builder honour it where it can (TensorRT developer
    guide, "Reduced Precision"). Returns the pinned layer names.
    """
    import tensorrt as trt

    types = {getattr(trt.LayerType, name) for name in PINNED_LAYER_TYPES if hasattr(trt.LayerType, name)}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in types or layer.name in fp32_names:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output_type(j) in (trt.float16, trt.float32):
                    layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    return pinned


def _parser_errors(parser: trt.OnnxParser, model: onnx.ModelProto) -> list[str]:
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


def _dims(shape: Any) -> list[int]:
    return [int(d) for d in shape]


def _dtype_name(dtype: Any) -> str:
    names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
             "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8"}
    key = getattr(dtype, "name", str(dtype).split(".")[-1])
    return names.get(key, key.lower())


def _set_profile(builder: trt.Builder, config: trt.IBuilderConfig, network: trt.INetworkDefinition,
                 profile: Mapping[str, ShapeRange] | None) -> list[dict[str, dict[str, list[int]]]]:
    """One optimization profile: ``profile`` for dynamic inputs (static inputs: their shape)."""
    import tensorrt as trt

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = {t.name for t in inputs}
    unknown = sorted(set(profile or {}) - names)
    if unknown:
        raise ValueError(f"profile names input(s) {unknown} that the network does not have ({sorted(names)})")
    ranges: dict[str, dict[str, list[int]]] = {}
    for t in inputs:
        shape = _dims(t.shape)
        if profile and t.name in profile:
            lo, opt, hi = _shape_range(profile[t.name])
            for label, s in (("min", lo), ("opt", opt), ("max", hi)):
                if len(s) != len(shape) or any(d >= 0 and d != v for d, v in zip(shape, s, strict=True)):
                    raise ValueError(f"profile {label} shape {s} for input {t.name!r} does not fit its shape {shape}")
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
                raise ValueError(f"profile for input {t.name!r}: need min <= opt <= max, got {lo}, {opt}, {hi}")
            ranges[t.name] = {"min": lo, "opt": opt, "max": hi}
        elif any(d < 0 for d in shape):
            raise ValueError(f"input {t.name!r} has dynamic shape {shape}: give `min_shape`/`opt_shape`/`max_shape` "
                             "(or export at static shapes)")
        else:
            ranges[t.name] = {"min": shape, "opt": shape, "max": shape}
    if any(any(d < 0 for d in _dims(t.shape)) for t in inputs):
        opt_profile = builder.create_optimization_profile()
        for name, r in ranges.items():
            opt_profile.set_shape(name, trt.Dims(r["min"]), trt.Dims(r["opt"]), trt.Dims(r["max"]))
        config.add_optimization_profile(opt_profile)
    return [ranges]


def _io(tensors: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"name": t.name, "shape": _dims(t.shape), "dtype": _dtype_name(t.dtype)} for t in tensors]


def _toolkit_version() -> str:
    try:
        return metadata.version("blocks-export")
    except metadata.PackageNotFoundError:
        return "unknown"


def _commit(files: Mapping[Path, bytes], force: bool = True, replace: Sequence[Path] = ()) -> None:
    """Write the files of one build as one unit through ``io.write_files``: all new or all as they were, no
    temporary file left; without ``force`` no existing file is replaced (except ``replace``: the timing cache)."""
    write_files(files, force, replace)


def default_paths(engine_path: Path) -> tuple[Path, Path, Path]:
    """Sidecar, EPContext model and timing cache paths beside ``engine_path``."""
    engine_path = Path(engine_path)
    return (engine_path.with_name(engine_path.name + ".json"),
            engine_path.with_name(f"{engine_path.stem}_ctx.onnx"),
            engine_path.with_name(f"{engine_path.stem}.timing.cache"))


def build_engine(onnx_path: Path, engine_path: Path, *, fp16: bool, target: str,
                 profile: Mapping[str, ShapeRange] | None = None, workspace_mb: int | None = None,
                 progress: Progress | None = None, ctx_path: Path | None = None,
                 checked: bool = False, force: bool = True) -> EngineResult:
    """Build ``engine_path`` (+ sidecar JSON, EPContext model, timing cache) from ``onnx_path`` for ``target``.

    ``profile``: {input name: (min, opt, max) shapes} for the dynamic inputs. ``fp16``: on weak-typing targets
    (TensorRT 8.x) sets ``BuilderFlag.FP16``; elsewhere the ONNX must already be the fp16 ONNX (``to_fp16``).
    Raises ``TensorRTUnavailable`` (nothing written) when TensorRT or a GPU is missing, ``EngineBuildError``
    when the check, parser or builder fails, ``ValueError`` for a bad profile. ``checked``: the caller has
    already run the static target check on this file (the pipeline's check step), so it is not run twice.
    ``force=False``: an engine, sidecar or EPContext file already there is never replaced (``OutputError``).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    tgt = get_target(target)
    if not tgt.is_tensorrt:
        raise ValueError(f"target {target!r} is not a TensorRT target; choose one of jetpack5, jetpack6.0, "
                         "jetpack6, trt10, trt11")
    if workspace_mb is not None and workspace_mb <= 0:
        raise ValueError(f"workspace_mb={workspace_mb} must be a positive number of MiB")
    if not engine_path.parent.is_dir():
        raise ValueError(f"engine folder {engine_path.parent} does not exist")
    sidecar_path, default_ctx, cache_path = default_paths(engine_path)
    ctx_path = Path(ctx_path) if ctx_path is not None else default_ctx
    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    if not checked:
        report = check_model(model, tgt.name)
        if not report:
            raise EngineBuildError(f"{onnx_path.name} fails the {tgt.name} target check: "
                                   + "; ".join(f"{i.node_name} ({i.op_type}): {i.why} -> {i.fix}"
                                               for i in report.issues))
    graph_fp16 = onnx.TensorProto.FLOAT16 in float_types(model)
    command = jetson_command(onnx_path, tgt.name, fp16, profile, workspace_mb)
    load_tensorrt(command)
    device = cuda_device(command)
    import tensorrt as trt

    plan = _plan(tgt, fp16, graph_fp16)

    errors: list[str] = []
    warnings: list[str] = []
    logger = _logger(errors, warnings)
    # Built-in plugins (ModulatedDeformConv2d for DeformConv, ...) must be registered before parsing.
    if not trt.init_libnvinfer_plugins(logger, ""):
        raise EngineBuildError("TensorRT's plugin library (libnvinfer_plugin) could not be initialised: "
                               + ("; ".join(errors) or "no message") + "; check the TensorRT installation")
    builder = trt.Builder(logger)
    network = builder.create_network(plan.network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), os.fspath(onnx_path)):
        lines = _parser_errors(parser, model) or errors or ["no parser error recorded"]
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}: " + "; ".join(lines))
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    pinned: list[str] = []
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        if not graph_fp16:
            named = onnx.ModelProto()
            named.CopyFrom(model)
            name_nodes(named)
            pinned = _pin_fp32(network, fp32_nodes(named))
            if pinned:
                config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    profiles = _set_profile(builder, config, network, profile)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, False)
    ticker: _Ticker | None = None
    if progress is not None:
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = _progress_monitor(progress)
        else:
            ticker = _Ticker(progress)
        progress(f"building TensorRT {trt.__version__} engine for {device.name} (sm {device.compute_capability}), "
                 f"{plan.precision}{', strongly typed' if plan.strongly_typed else ''}")
    start = time.monotonic()
    if ticker is not None:
        with ticker:
            serialized = builder.build_serialized_network(network, config)
    else:
        serialized = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - start
    if serialized is None:
        raise EngineBuildError(f"TensorRT's builder returned no engine for {onnx_path.name}: "
                               + ("; ".join(errors[-5:]) or "no error message; rerun with a larger `workspace_mb`"))
    engine_bytes = bytes(memoryview(serialized))
    new_cache = bytes(memoryview(config.get_timing_cache().serialize()))

    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    has_plugin = any(n.op_type in ("DeformConv", "ModulatedDeformConv2d") for n in model.graph.node)
    sidecar = {
        "format": ENGINE_FORMAT,
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "tensorrt_version": str(trt.__version__),
        "device_name": device.name,
        "compute_capability": device.compute_capability,
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "inputs": _io([network.get_input(i) for i in range(network.num_inputs)]),
        "outputs": _io(outputs),
        "profiles": profiles,
        "toolkit_version": _toolkit_version(),
        "target": tgt.name,
        "source_onnx": onnx_path.name,
        "source_onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "plugins": ["ModulatedDeformConv2d"] if has_plugin else [],
        "build_seconds": round(seconds, 3),
        "fp32_layers": pinned,
    }
    ctx = ep_context_model(model, engine_reference(engine_path, ctx_path), tensorrt_version=str(trt.__version__),
                           compute_capability=device.compute_capability, onnx_model_filename=onnx_path.name)
    _commit({engine_path: engine_bytes, cache_path: new_cache,
             sidecar_path: (json.dumps(sidecar, indent=2) + "\n").encode(), ctx_path: ctx.SerializeToString()},
            force, replace=(cache_path,))
    return EngineResult(engine_path, sidecar_path, ctx_path, cache_path, str(trt.__version__), plan.precision,
                        plan.strongly_typed, seconds, sidecar, tuple(warnings))


class EngineRefused(ExportError):
    """An engine that does not match its sidecar (hash, TensorRT version, GPU): never deserialized."""

    exit_code = EXIT_MISSING_RUNTIME  # as the runtime script: 3 = engine unavailable or refused here


class EngineNotVerifiedWarning(UserWarning):
    """An engine loaded with ``verify=False``: what was not checked, or what would have been refused."""


def _version_key(text: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0): a plan file only deserializes with the TensorRT major.minor.patch that built
    it (TensorRT developer guide, "Version Compatibility"; the toolkit does not build version-compatible)."""
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:3])


def verify_engine(engine_path: Path, *, tensorrt_version: str | None, compute_capability: str | None,
                  verify: bool = True) -> list[str]:
    """Check ``engine_path`` against its sidecar (``<engine>.json``) before anything deserializes it.

    SHA-256 always; TensorRT version and compute capability where given (``None``: not determinable here).
    ``EngineRefused`` (one line) on a missing or unreadable sidecar or any mismatch; with ``verify=False`` the
    same findings are returned (and warned as ``EngineNotVerifiedWarning``) instead.
    """
    engine_path = Path(engine_path)
    sidecar_path = default_paths(engine_path)[0]
    problems: list[str] = []
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        if not isinstance(sidecar, dict) or sidecar.get("format") != ENGINE_FORMAT:
            raise ValueError(f"not a {ENGINE_FORMAT} sidecar")
    except (OSError, ValueError) as e:
        problems.append(f"its sidecar {sidecar_path.name} is missing or unreadable ({e})")
        sidecar = {}
    if sidecar:
        digest = hashlib.sha256(engine_path.read_bytes()).hexdigest()
        if digest != str(sidecar.get("engine_sha256", "")).lower():
            problems.append(f"SHA-256 {digest[:12]}... does not match the sidecar's "
                            f"{str(sidecar.get('engine_sha256'))[:12]}... (modified, or another engine)")
        built = sidecar.get("tensorrt_version")
        if tensorrt_version and built and _version_key(built) != _version_key(tensorrt_version):
            problems.append(f"built with TensorRT {built}, this machine has TensorRT {tensorrt_version}")
        cc = sidecar.get("compute_capability")
        if compute_capability and cc and str(cc).replace(".", "") != str(compute_capability).replace(".", ""):
            problems.append(f"built for compute capability {cc}, this GPU is {compute_capability}")
    if problems and verify:
        raise EngineRefused(f"refused engine {engine_path.name}: {'; '.join(problems)}; rebuild it here "
                            "(blocks-export MODEL.onnx `to=trt`) or load it with verify=False")
    if not verify:
        import warnings

        found = "; ".join(problems) if problems else "no mismatch found"
        warnings.warn(f"engine {engine_path.name} loaded WITHOUT verification (verify=False): {found}",
                      EngineNotVerifiedWarning, stacklevel=3)
    return problems


def run_engine(engine_path: Path, feeds: Mapping[str, np.ndarray], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Run a serialized engine once on GPU 0 (TensorRT runtime, torch CUDA tensors as buffers).

    The engine is first checked against its sidecar (``verify_engine``). Untested on this project's CPU-only
    development and CI machines; needs TensorRT 8.5+ (named IO tensors, ``execute_async_v3``) and torch with
    CUDA.
    """
    import numpy as np
    import torch

    load_tensorrt("(run_engine needs TensorRT)")
    import tensorrt as trt

    verify_engine(engine_path, tensorrt_version=str(trt.__version__),
                  compute_capability=cuda_device("(run_engine needs a GPU)").compute_capability, verify=verify)
    errors: list[str] = []
    logger = _logger(errors, [])
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EngineBuildError(f"could not deserialize {engine_path}: " + "; ".join(errors))
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    buffers: dict[str, torch.Tensor] = {}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            buffers[name] = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            context.set_input_shape(name, tuple(buffers[name].shape))
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            shape = context.get_tensor_shape(name)
            buffers[name] = torch.empty([shape[i] for i in range(len(shape))], dtype=dtype, device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    if not context.execute_async_v3(stream.cuda_stream):
        raise EngineBuildError(f"TensorRT could not run {engine_path}: " + "; ".join(errors))
    stream.synchronize()
    return {n: buffers[n].cpu().numpy() for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}


def engine_parity(engine_path: Path, feeds: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                  precision: str, *, verify: bool = True) -> Comparison:
    """Engine outputs against ``reference`` outputs (by name) under ``parity.RULES[precision]``; the engine is
    verified against its sidecar first (``verify_engine``). Untested here."""
    from ..runtime.parity import compare

    return compare(dict(reference), run_engine(engine_path, feeds, verify=verify), precision=precision,
                   label="tensorrt")


__all__ = ["DeviceInfo", "EngineBuildError", "EngineNotVerifiedWarning", "EngineRefused", "EngineResult",
           "TensorRTUnavailable", "build_engine", "cuda_device", "default_paths", "engine_parity", "jetson_command",
           "load_tensorrt", "run_engine", "verify_engine"]
