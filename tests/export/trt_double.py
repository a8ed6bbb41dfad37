"""A test double of the ``tensorrt`` Python module: just the documented API surface ``export/trt/`` uses.

It verifies the builder's ORCHESTRATION only — which calls are made, in which order, with which flags, and how
every error path is reported. It does not parse ONNX into a network the way TensorRT does (it only reads the
graph inputs and outputs with ``onnx``), does not build anything, and proves nothing about what a real TensorRT
accepts or computes. Its ``Runtime`` deserializes the engines it "built" (it remembers which ONNX each came
from) into an engine whose execution is an onnxruntime stand-in: ``execute_async_v3`` reads the inputs at the
addresses it was given, runs the ONNX on onnxruntime CPU, and writes the outputs at the output addresses
(``HostMemory`` gives host addresses for that, in place of GPU memory). That exercises the engine runner's
orchestration (names, shapes, dtypes, addresses) and lets the pipeline's engine parity step run; ``perturb``
makes the stand-in wrong on purpose. Real behaviour is covered by ``test_engine_real.py`` where TensorRT and a
GPU exist.

Flavours, after the documented differences between releases:

- ``"8.6"``: ``BuilderFlag.FP16``; ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` but no ``STRONGLY_TYPED``
  (added in 10.0); no ``IProgressMonitor`` (added in 10.0); ``ParserError`` without ``node_name()`` (9.x+).
- ``"10"``: ``FP16``, ``EXPLICIT_BATCH`` (deprecated, ignored), ``STRONGLY_TYPED``, ``IProgressMonitor``,
  ``ParserError.node_name()``.
- ``"11"``: no ``BuilderFlag.FP16`` (removed with weak typing), no ``EXPLICIT_BATCH``; ``STRONGLY_TYPED`` accepted
  (``strongly_typed_flag=False`` gives a variant without it); ``IProgressMonitor``.
"""

from __future__ import annotations

import ctypes
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

VERSIONS = {"8.6": "8.6.1.6", "10": "10.3.0.26", "11": "11.0.0.1"}
_DTYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT32: "INT32",
           onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL"}


@dataclass
class Knobs:
    """What the fake TensorRT does: failures to inject and what it records."""

    plugins_ok: bool = True
    parse_errors: list[tuple[int, str, str]] = field(default_factory=list)  # (node index, desc, node name)
    build_returns_none: bool = False
    build_sleep: float = 0.0
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    perturb: float = 0.0  # added to every output of the engine stand-in (a wrong engine)
    layer_ms: float = 0.25  # what the engine stand-in reports per layer to an attached IProfiler
    engines: dict[bytes, bytes] = field(default_factory=dict)  # serialized engine -> the ONNX it was built from


class _Enum:
    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{self.name}: {self.value}>"


def _enum_class(name: str, members: dict[str, int]) -> type:
    return type(name, (), {k: _Enum(k, v) for k, v in members.items()})


def make_tensorrt(flavour: str = "10", knobs: Knobs | None = None, *, strongly_typed_flag: bool = True,
                  progress_monitor: bool | None = None) -> types.ModuleType:
    """A fake ``tensorrt`` module of the given flavour; its ``knobs`` attribute holds the recorded calls."""
    if flavour not in VERSIONS:
        raise ValueError(f"flavour {flavour!r}; expected one of {sorted(VERSIONS)}")
    k = knobs or Knobs()
    calls = k.calls
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSIONS[flavour]  # type: ignore[attr-defined]
    trt.knobs = k  # type: ignore[attr-defined]

    creation = {}
    if flavour in ("8.6", "10"):
        creation["EXPLICIT_BATCH"] = 0
    if flavour == "10" or (flavour == "11" and strongly_typed_flag):
        creation["STRONGLY_TYPED"] = 1
    trt.NetworkDefinitionCreationFlag = _enum_class("NetworkDefinitionCreationFlag", creation)  # type: ignore[attr-defined]
    flags = {"DEBUG": 2, "REFIT": 3, "PREFER_PRECISION_CONSTRAINTS": 10}
    if flavour != "11":
        flags["FP16"] = 0
        flags["INT8"] = 1  # removed with implicit quantization in 11.x
    trt.BuilderFlag = _enum_class("BuilderFlag", flags)  # type: ignore[attr-defined]
    trt.MemoryPoolType = _enum_class("MemoryPoolType", {"WORKSPACE": 0})  # type: ignore[attr-defined]
    trt.DataType = _enum_class("DataType", {v: i for i, v in enumerate(_DTYPES.values())})  # type: ignore[attr-defined]
    trt.float32, trt.float16 = trt.DataType.FLOAT, trt.DataType.HALF  # type: ignore[attr-defined]
    layer_types = {"ELEMENTWISE": 9, "ACTIVATION": 2, "SOFTMAX": 6, "REDUCE": 14, "MATRIX_MULTIPLY": 17,
                   "GRID_SAMPLE": 42, "PLUGIN_V2": 21, "SHUFFLE": 13, "CAST": 1}
    if flavour != "8.6":
        layer_types["PLUGIN_V3"] = 46
    layer_types["NORMALIZATION"] = 45  # LayerNormalization is imported as INormalizationLayer from 8.6
    trt.LayerType = _enum_class("LayerType", layer_types)  # type: ignore[attr-defined]
    op_layer = {"Softmax": "SOFTMAX", "ReduceMean": "REDUCE", "ReduceSum": "REDUCE", "MatMul": "MATRIX_MULTIPLY",
                "LayerNormalization": "NORMALIZATION", "GridSample": "GRID_SAMPLE", "Relu": "ACTIVATION",
                "Reshape": "SHUFFLE", "Cast": "CAST", "ModulatedDeformConv2d": "PLUGIN_V2"}

    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (_Enum(n, i) for i, n in enumerate(
            ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]))

    class ILogger:
        def __init__(self) -> None:
            self.initialised = True

        def log(self, severity: Any, msg: str) -> None:  # overridden by the builder's logger
            raise NotImplementedError

    ILogger.Severity = Severity  # type: ignore[attr-defined]
    trt.ILogger = ILogger  # type: ignore[attr-defined]

    if progress_monitor if progress_monitor is not None else flavour != "8.6":
        class IProgressMonitor:
            def __init__(self) -> None:
                self.initialised = True

        trt.IProgressMonitor = IProgressMonitor  # type: ignore[attr-defined]

    def _log(logger: Any, level: Any, msg: str) -> None:
        assert getattr(logger, "initialised", False), "ILogger subclass must call ILogger.__init__"
        logger.log(level, msg)

    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        calls.append(("init_libnvinfer_plugins", namespace))
        if not k.plugins_ok:
            _log(logger, Severity.ERROR, "libnvinfer_plugin.so: cannot open shared object file")
        return k.plugins_ok

    trt.init_libnvinfer_plugins = init_libnvinfer_plugins  # type: ignore[attr-defined]

    class Dims(tuple):
        pass

    trt.Dims = Dims  # type: ignore[attr-defined]

    class Tensor:
        def __init__(self, name: str, shape: list[int], dtype: Any) -> None:
            self.name, self.shape, self.dtype = name, shape, dtype

    class Layer:
        def __init__(self, name: str, layer_type: Any) -> None:
            self.name, self.type = name, layer_type
            self.num_outputs = 1
            self._precision: Any = None

        @property
        def precision(self) -> Any:
            return self._precision

        @precision.setter
        def precision(self, value: Any) -> None:
            calls.append(("layer.precision", self.name, value.name))
            self._precision = value

        def get_output_type(self, index: int) -> Any:
            return trt.DataType.FLOAT

        def set_output_type(self, index: int, dtype: Any) -> None:
            calls.append(("layer.set_output_type", self.name, index, dtype.name))

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.layers: list[Layer] = []
            self.onnx = b""

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

    class ParserError:
        def __init__(self, index: int, desc: str, name: str) -> None:
            self._index, self._desc, self._name = index, desc, name

        def node(self) -> int:
            return self._index

        def desc(self) -> str:
            return self._desc

    if flavour != "8.6":
        def node_name(self: Any) -> str:
            return self._name

        ParserError.node_name = node_name  # type: ignore[attr-defined]

    def _tensor(v: onnx.ValueInfoProto) -> Tensor:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return Tensor(v.name, shape, getattr(trt.DataType, _DTYPES.get(t.elem_type, "FLOAT")))

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.logger = network, logger
            self.errors: list[ParserError] = []
            calls.append(("OnnxParser",))

        def parse(self, model: bytes, path: str | None = None) -> bool:
            calls.append(("parse", path))
            proto = onnx.load_from_string(bytes(model))
            self.network.onnx = bytes(model)
            inits = {t.name for t in proto.graph.initializer}
            self.network.inputs = [_tensor(v) for v in proto.graph.input if v.name not in inits]
            self.network.outputs = [_tensor(v) for v in proto.graph.output]
            # One layer per node, named after it (the parser names a node's main layer after the node).
            self.network.layers = [Layer(n.name or f"{n.op_type}_{i}",
                                         getattr(trt.LayerType, op_layer.get(n.op_type, "ELEMENTWISE")))
                                   for i, n in enumerate(proto.graph.node)]
            self.errors = [ParserError(*e) for e in k.parse_errors]
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    trt.OnnxParser = OnnxParser  # type: ignore[attr-defined]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timing"

    class Profile:
        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            calls.append(("set_shape", name, list(lo), list(opt), list(hi)))

    class Config:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.cache: TimingCache | None = None
            self.progress_monitor: Any = None

        def set_flag(self, flag: Any) -> None:
            calls.append(("set_flag", flag.name))
            self.flags.append(flag.name)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool.name, size))

        def add_optimization_profile(self, profile: Profile) -> int:
            calls.append(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", ignore_mismatch))
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            assert self.cache is not None
            return self.cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            assert getattr(logger, "initialised", False), "ILogger subclass must call ILogger.__init__"
            self.logger = logger
            calls.append(("Builder",))

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            import time

            calls.append(("build_serialized_network", network.flags, tuple(config.flags)))
            monitor = config.progress_monitor
            if monitor is not None:
                assert getattr(monitor, "initialised", False), "IProgressMonitor subclass must call __init__"
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactic timing", "Building engine", 5)
                for step in range(2):
                    assert monitor.step_complete("Building engine", step) is True
                monitor.phase_finish("Tactic timing")
                monitor.phase_finish("Building engine")
            time.sleep(k.build_sleep)
            if k.build_returns_none:
                self.logger.log(Severity.ERROR, "Error Code 10: Internal Error (Could not find any implementation)")
                return None
            engine = f"ENGINE flags={network.flags} config={','.join(config.flags)}".encode()
            k.engines[engine] = network.onnx
            return engine

    trt.Builder = Builder  # type: ignore[attr-defined]
    _runtime(trt, k, Severity)
    return trt


_NPTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}
_ONNX_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
            onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.BOOL: np.bool_}


def _at(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The array of ``shape`` and ``dtype`` stored at ``address`` (host memory), without copying."""
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * size).from_address(address)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _runtime(trt: types.ModuleType, k: Knobs, severity: Any) -> None:
    """``Runtime``, ``ICudaEngine``, ``IExecutionContext``, ``TensorIOMode``, ``nptype``: the onnxruntime stand-in."""
    calls = k.calls
    trt.TensorIOMode = _enum_class("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: _NPTYPES[dtype.name]  # type: ignore[attr-defined]
    trt.LayerInformationFormat = _enum_class("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})  # type: ignore[attr-defined]
    metadata = trt.__version__.split(".")[0] != "8"  # layer metadata ("[ONNX Layer: ...]") from TensorRT 10

    class IProfiler:
        def __init__(self) -> None:
            self.initialised = True

        def report_layer_time(self, layer_name: str, ms: float) -> None:  # overridden by the caller's profiler
            raise NotImplementedError

    trt.IProfiler = IProfiler  # type: ignore[attr-defined]

    class Inspector:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine

        def get_engine_information(self, fmt: Any) -> str:
            assert fmt is trt.LayerInformationFormat.JSON
            import json

            layers = [{"Name": name, **({"Metadata": f"[ONNX Layer: {name}]"} if metadata else {})}
                      for name in self.engine.layers]
            return json.dumps({"Layers": layers})

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.profiler: Any = None

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            calls.append(("set_input_shape", name, tuple(shape)))
            self.shapes[name] = tuple(int(d) for d in shape)
            return True

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = int(address)
            return True

        def _run(self) -> dict[str, np.ndarray]:
            feeds = {n: _at(self.addresses[n], self.shapes[n], self.engine.dtypes[n]).copy()
                     for n in self.engine.inputs}
            outs = self.engine.session.run(None, feeds)
            return {n: (np.asarray(o) + k.perturb).astype(self.engine.dtypes[n])
                    for n, o in zip(self.engine.outputs, outs, strict=True)}

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self.engine.inputs:
                return self.shapes[name]
            return tuple(self._run()[name].shape)  # the inputs' shapes and addresses are set by now

        def execute_async_v3(self, stream: int) -> bool:
            calls.append(("execute_async_v3", stream))
            for name, value in self._run().items():
                ctypes.memmove(self.addresses[name], np.ascontiguousarray(value).ctypes.data, value.nbytes)
            if self.profiler is not None:  # one layer per ONNX node, named after it, as the parser names them
                assert getattr(self.profiler, "initialised", False), "IProfiler subclass must call __init__"
                for layer in self.engine.layers:
                    self.profiler.report_layer_time(layer, k.layer_ms)
            return True

    class Engine:
        def __init__(self, model: bytes) -> None:
            from blocks_export.plugins.ort_cpu import cpu_session

            proto = onnx.load_from_string(model)
            inits = {t.name for t in proto.graph.initializer}
            self.inputs = [v.name for v in proto.graph.input if v.name not in inits]
            self.outputs = [v.name for v in proto.graph.output]
            self.dtypes = {v.name: _ONNX_NP[v.type.tensor_type.elem_type]
                           for v in [*proto.graph.input, *proto.graph.output] if v.name not in inits}
            self.session = cpu_session(proto)
            self.layers = [n.name for n in proto.graph.node]

        def create_engine_inspector(self) -> Inspector:
            return Inspector(self)

        @property
        def num_io_tensors(self) -> int:
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, index: int) -> str:
            return [*self.inputs, *self.outputs][index]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(trt.DataType, {np.float32: "FLOAT", np.float16: "HALF", np.int32: "INT32",
                                          np.int64: "INT64", np.bool_: "BOOL"}[self.dtypes[name]])

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            assert getattr(logger, "initialised", False), "ILogger subclass must call ILogger.__init__"
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            calls.append(("deserialize_cuda_engine",))
            model = k.engines.get(bytes(data))
            if model is None:
                self.logger.log(severity.ERROR, "Serialization assertion failed: magic tag does not match")
                return None
            return Engine(model)

    trt.Runtime = Runtime  # type: ignore[attr-defined]


class HostMemory:
    """``DeviceMemory`` (``export/trt/run.py``) in host memory: numpy arrays, their addresses, no stream."""

    stream = 0

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def upload(self, name: str, array: np.ndarray) -> int:
        self.arrays[name] = np.ascontiguousarray(array).copy()
        return int(self.arrays[name].ctypes.data)

    def empty(self, name: str, shape: Any, dtype: Any) -> int:
        fill = np.nan if np.issubdtype(dtype, np.floating) else 0  # NaN: an output the engine never wrote
        self.arrays[name] = np.full(tuple(shape), fill, dtype=dtype)
        return int(self.arrays[name].ctypes.data)

    def download(self, name: str) -> np.ndarray:
        return self.arrays[name].copy()

    def synchronize(self) -> None:
        pass
