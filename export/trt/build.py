"""Build a TensorRT engine from an ONNX file.

``build_engine`` writes, beside each other and as one unit (``io.write_files``: all new or all as they
were, built in memory first): ``model.engine`` (the plain serialized engine, no header), ``model.engine.json`` (the
sidecar, ``sidecar.py``), ``model_ctx.onnx`` (the onnxruntime EPContext model, ``epcontext``), and keeps the
builder's timing cache in ``model.timing.cache`` (read before, written after every build).

Its steps, in order (TensorRT Python API, https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):
``_request`` (arguments and paths), the static target check (``check.check_model``), TensorRT and a GPU
(``api.load_tensorrt``, ``api.cuda_device``: what is missing is said before anything is written), ``_plan``
(``EXPLICIT_BATCH`` on 8.x, where implicit batch is still the default; ``STRONGLY_TYPED`` from 10.0 when the
ONNX carries fp16; ``BuilderFlag.FP16`` only where the target builds fp16 by weak typing and the flag exists --
TensorRT 11 removed it: TensorRT 10.x -> 11.x migration guide), ``_parse`` (built-in plugins registered first:
DeformConv is imported as the ``ModulatedDeformConv2d`` plugin; errors with node names), ``_configure``
(workspace, fp16 with the precision-sensitive layers asked to run in fp32, one optimization profile, timing
cache), ``_serialize`` (progress through ``IProgressMonitor`` on 10.0+ or a periodic line), ``_write``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from ..check import check_model
from ..epcontext import engine_reference, ep_context_model
from ..fp16 import BLOCKED_OPS, float_types, fp32_nodes, name_nodes
from ..io import write_files
from ..targets import Target, get_target, tensorrt_targets
from . import api
from .api import EngineBuildError, Progress
from .sidecar import Built, Sidecar, default_paths, encode, record

if TYPE_CHECKING:
    import tensorrt as trt

# (min, opt, max) shapes of one input, or {"min": [..], "opt": [..], "max": [..]} as the sidecar writes them.
ShapeRange = tuple[Sequence[int], Sequence[int], Sequence[int]] | Mapping[str, Sequence[int]]
Profiles = list[dict[str, dict[str, list[int]]]]


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
    sidecar: Sidecar
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"engine": str(self.engine_path), "sidecar": str(self.sidecar_path), "ep_context": str(self.ctx_path),
                "timing_cache": str(self.timing_cache_path), "tensorrt_version": self.tensorrt_version,
                "precision": self.precision, "strongly_typed": self.strongly_typed,
                "build_seconds": round(self.build_seconds, 3), "warnings": list(self.warnings)}


def shape_range(value: ShapeRange) -> tuple[list[int], list[int], list[int]]:
    if isinstance(value, Mapping):
        lo, opt, hi = value["min"], value["opt"], value["max"]
    else:
        lo, opt, hi = value
    return [int(d) for d in lo], [int(d) for d in opt], [int(d) for d in hi]


def _rebuild(req: _Request) -> api.Rebuild:
    """The facts of this build, to run where TensorRT and a GPU are."""
    shapes = shape_range(next(iter(req.profile.values()))) if req.profile and len(req.profile) == 1 else None
    return api.Rebuild(req.onnx_path.name, req.target.name, req.fp16, shapes, req.workspace_mb)


@dataclass(frozen=True)
class _Plan:
    network_flags: int
    fp16_flag: bool
    strongly_typed: bool
    precision: str
    int8_flag: bool = False  # 8.x: explicit quantization (Q/DQ in the graph) still needs ``BuilderFlag.INT8``


def _plan(tgt: Target, fp16: bool, graph_fp16: bool, graph_int8: bool = False) -> _Plan:
    """Network creation flags and precision switches for this TensorRT, target and ONNX."""
    import tensorrt as trt

    if graph_int8:
        return _plan_int8(tgt, fp16)

    major = api.major(trt.__version__)
    if not tgt.builds_with(major):
        fits = ", ".join(tensorrt_targets(major)) or "none"
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


def _plan_int8(tgt: Target, fp16: bool) -> _Plan:
    """A Q/DQ graph (explicit quantization; TensorRT developer guide, "Explicit Quantization": "use explicit
    quantization with strong typing; precision-control build flags are not required"). From 10.0 the network is
    strongly typed and takes every precision from the graph; 8.x has no strong typing and runs the Q/DQ layers in
    INT8 only with ``BuilderFlag.INT8`` set (the explicit precision of that line), fp16 elsewhere with ``fp16``."""
    import tensorrt as trt

    major = api.major(trt.__version__)
    if not tgt.builds_with(major):
        raise EngineBuildError(f"target {tgt.name} is TensorRT {tgt.trt_version}, this machine has TensorRT "
                               f"{trt.__version__}; export and build with a matching target "
                               f"({', '.join(tensorrt_targets(major)) or 'none'})")
    creation = trt.NetworkDefinitionCreationFlag
    if major < 10:
        if not hasattr(trt.BuilderFlag, "INT8"):
            raise EngineBuildError(f"TensorRT {trt.__version__} has no BuilderFlag.INT8 for a Q/DQ graph")
        flags = 1 << int(creation.EXPLICIT_BATCH) if hasattr(creation, "EXPLICIT_BATCH") else 0
        return _Plan(flags, fp16 and hasattr(trt.BuilderFlag, "FP16"), False, "int8", int8_flag=True)
    if hasattr(creation, "STRONGLY_TYPED"):
        return _Plan(1 << int(creation.STRONGLY_TYPED), False, True, "int8")
    if major >= 11:
        return _Plan(0, False, True, "int8")  # 11.x: every network is strongly typed
    raise EngineBuildError(f"TensorRT {trt.__version__} cannot build strongly typed networks (10.0+ can); build the "
                           "Q/DQ graph with `target=jetpack5`/`target=jetpack6.0` (explicit INT8) or a newer TensorRT")


def graph_is_int8(model: onnx.ModelProto) -> bool:
    """Does ``model`` carry Q/DQ pairs (an explicitly quantized graph)?"""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


# The TensorRT layer types the parser makes of the ops that ``fp16.BLOCKED_OPS`` keeps in fp32 (the fp32 op policy:
# the fp16 pass's sensitive ops and the blocks' ``BlockSpec.fp32_ops``, read there): a weakly typed fp16 build (8.x) pins these
# layer types, and every layer named after a node that ``fp16.fp32_nodes`` keeps fp32 (the nodes of those ops,
# softmax logits, large reductions, coordinate arithmetic), so an op without an entry here is still pinned by
# name. The DeformConv plugin computes its sampling coordinates in half precision in fp16 (DESIGN.md).
LAYER_TYPES_OF_OP = {
    "Softmax": ("SOFTMAX",), "LogSoftmax": ("SOFTMAX",), "LayerNormalization": ("NORMALIZATION",),
    "GroupNormalization": ("NORMALIZATION",), "InstanceNormalization": ("NORMALIZATION",),
    "GridSample": ("GRID_SAMPLE",), "DeformConv": ("PLUGIN_V2", "PLUGIN_V3"),
    "ModulatedDeformConv2d": ("PLUGIN_V2", "PLUGIN_V3"),
}
PINNED_LAYER_TYPES = tuple(sorted({t for op in BLOCKED_OPS for t in LAYER_TYPES_OF_OP.get(op, ())}))


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


def _set_profile(builder: trt.Builder, config: trt.IBuilderConfig, network: trt.INetworkDefinition,
                 profile: Mapping[str, ShapeRange] | None) -> Profiles:
    """One optimization profile: ``profile`` for dynamic inputs (static inputs: their shape)."""
    import tensorrt as trt

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = {t.name for t in inputs}
    unknown = sorted(set(profile or {}) - names)
    if unknown:
        raise ValueError(f"profile names input(s) {unknown} that the network does not have ({sorted(names)})")
    ranges: dict[str, dict[str, list[int]]] = {}
    for t in inputs:
        shape = api.dims(t.shape)
        if profile and t.name in profile:
            lo, opt, hi = shape_range(profile[t.name])
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
    if any(any(d < 0 for d in api.dims(t.shape)) for t in inputs):
        opt_profile = builder.create_optimization_profile()
        for name, r in ranges.items():
            opt_profile.set_shape(name, trt.Dims(r["min"]), trt.Dims(r["opt"]), trt.Dims(r["max"]))
        config.add_optimization_profile(opt_profile)
    return [ranges]


@dataclass(frozen=True)
class _Request:
    """One build's arguments, checked, and the paths it reads and writes."""

    onnx_path: Path
    engine_path: Path
    sidecar_path: Path
    ctx_path: Path
    cache_path: Path
    target: Target
    fp16: bool
    profile: Mapping[str, ShapeRange] | None
    workspace_mb: int | None


def _request(onnx_path: Path, engine_path: Path, fp16: bool, target: str, profile: Mapping[str, ShapeRange] | None,
             workspace_mb: int | None, ctx_path: Path | None) -> _Request:
    """The arguments checked (``ValueError``) before anything is read or imported."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    tgt = get_target(target)
    if not tgt.is_tensorrt:
        raise ValueError(f"target {target!r} is not a TensorRT target; choose one of "
                         f"{', '.join(tensorrt_targets())}")
    if workspace_mb is not None and workspace_mb <= 0:
        raise ValueError(f"workspace_mb={workspace_mb} must be a positive number of MiB")
    if not engine_path.parent.is_dir():
        raise ValueError(f"engine folder {engine_path.parent} does not exist")
    sidecar_path, default_ctx, cache_path = default_paths(engine_path)
    return _Request(onnx_path, engine_path, sidecar_path, Path(ctx_path) if ctx_path is not None else default_ctx,
                    cache_path, tgt, fp16, profile, workspace_mb)


def _target_check(model: onnx.ModelProto, req: _Request) -> None:
    report = check_model(model, req.target.name)
    if not report:
        raise EngineBuildError(f"{req.onnx_path.name} fails the {req.target.name} target check: "
                               + "; ".join(f"{i.node_name} ({i.op_type}): {i.why} -> {i.fix}" for i in report.issues))


def _parse(req: _Request, model: onnx.ModelProto, plan: _Plan,
           logger: trt.ILogger, errors: list[str]) -> tuple[trt.Builder, trt.INetworkDefinition]:
    """Plugins registered, then the ONNX parsed into a network created with the plan's flags."""
    import tensorrt as trt

    api.init_plugins(logger, errors)
    builder = trt.Builder(logger)
    network = builder.create_network(plan.network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(req.onnx_path.read_bytes(), os.fspath(req.onnx_path)):
        lines = api.parser_errors(parser, model) or errors or ["no parser error recorded"]
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {req.onnx_path.name}: "
                               + "; ".join(lines))
    return builder, network


def _configure(req: _Request, model: onnx.ModelProto, plan: _Plan, graph_fp16: bool, builder: trt.Builder,
               network: trt.INetworkDefinition) -> tuple[trt.IBuilderConfig, list[str], Profiles]:
    """Builder config: workspace, fp16 (and the layers pinned to fp32), the profile, the timing cache."""
    import tensorrt as trt

    config = builder.create_builder_config()
    if req.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(req.workspace_mb) << 20)
    pinned: list[str] = []
    if plan.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        if not graph_fp16 and not plan.int8_flag:
            named = onnx.ModelProto()
            named.CopyFrom(model)
            name_nodes(named)
            pinned = _pin_fp32(network, fp32_nodes(named))
            if pinned:
                config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    profiles = _set_profile(builder, config, network, req.profile)
    cache_bytes = req.cache_path.read_bytes() if req.cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    return config, pinned, profiles


def _serialize(req: _Request, builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
               plan: _Plan, device: api.DeviceInfo, progress: Progress | None,
               errors: list[str]) -> tuple[bytes, float]:
    """``build_serialized_network`` with progress; the engine's bytes and the seconds it took."""
    import tensorrt as trt

    ticker: api.Ticker | None = None
    if progress is not None:
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = api.progress_monitor(progress)
        else:
            ticker = api.Ticker(progress)
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
        raise EngineBuildError(f"TensorRT's builder returned no engine for {req.onnx_path.name}: "
                               + ("; ".join(errors[-5:]) or "no error message; rerun with a larger `workspace_mb`"))
    return bytes(memoryview(serialized)), seconds


def _write(files: Mapping[Path, bytes], force: bool = True, replace: Sequence[Path] = ()) -> None:
    """Write the files of one build as one unit through ``io.write_files``: all new or all as they were, no
    temporary file left; without ``force`` no existing file is replaced (except ``replace``: the timing cache)."""
    write_files(files, force, replace)


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
    req = _request(onnx_path, engine_path, fp16, target, profile, workspace_mb, ctx_path)
    model = onnx.load(os.fspath(req.onnx_path), load_external_data=False)
    if not checked:
        _target_check(model, req)
    graph_fp16 = onnx.TensorProto.FLOAT16 in float_types(model)
    rebuild = _rebuild(req)
    api.load_tensorrt(rebuild)
    device = api.cuda_device(rebuild)
    import tensorrt as trt

    plan = _plan(req.target, fp16, graph_fp16, graph_is_int8(model))
    errors: list[str] = []
    warnings: list[str] = []
    logger = api.logger(errors, warnings)
    builder, network = _parse(req, model, plan, logger, errors)
    config, pinned, profiles = _configure(req, model, plan, graph_fp16, builder, network)
    engine_bytes, seconds = _serialize(req, builder, network, config, plan, device, progress, errors)
    new_cache = bytes(memoryview(config.get_timing_cache().serialize()))

    inputs, outputs = api.network_io(network)
    has_plugin = any(n.op_type in ("DeformConv", "ModulatedDeformConv2d") for n in model.graph.node)
    version = str(trt.__version__)
    sidecar = record(Built(engine_bytes, version, device.name, device.compute_capability, plan.precision,
                           plan.strongly_typed, inputs, outputs, profiles, req.target.name, req.onnx_path.name,
                           req.onnx_path.read_bytes(), ["ModulatedDeformConv2d"] if has_plugin else [], seconds,
                           pinned))
    ctx = ep_context_model(model, engine_reference(req.engine_path, req.ctx_path), tensorrt_version=version,
                           compute_capability=device.compute_capability, onnx_model_filename=req.onnx_path.name)
    _write({req.engine_path: engine_bytes, req.cache_path: new_cache, req.sidecar_path: encode(sidecar),
            req.ctx_path: ctx.SerializeToString()}, force, replace=(req.cache_path,))
    return EngineResult(req.engine_path, req.sidecar_path, req.ctx_path, req.cache_path, version, plan.precision,
                        plan.strongly_typed, seconds, sidecar, tuple(warnings))
