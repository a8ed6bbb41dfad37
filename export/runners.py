"""Runners: a graph (or an engine) opened on one runtime, fed named inputs, returning its outputs in graph order.

- ``onnxruntime``: ``plugins.ort_cpu.cpu_session`` (TensorRT plugin nodes run through the CPU reference op).
- ``openvino``: ``openvino.Core().read_model`` + ``compile_model("CPU")`` with ``INFERENCE_PRECISION_HINT=f32``:
  on CPUs with bf16 support OpenVINO's default inference precision is bf16, which moves fp32 results by up to
  7e-2 relative L2 on DeformConv-heavy models; verification measures the graph, not that down-cast
  (https://docs.openvino.ai/2026/openvino-workflow/running-inference/optimize-inference/precision-control.html).
  fp16 graphs run with the same hint, so the error measured is that of the graph's own fp16 nodes. OpenVINO
  reads ONNX with its own frontend and runs it with its own CPU kernels: nothing is shared with onnxruntime,
  the next best proof after TensorRT (which cannot run on CPU-only machines) that a graph is standard ONNX.
- ``tensorrt``: a built engine (``EngineRunner``) through ``trt/run.run_engine``, which checks the engine against
  its sidecar before TensorRT deserializes it; ``tensorrt`` (and torch, for the device buffers) is imported only
  when it runs.

OpenVINO 2026.4 has no conversion for ONNX ``DeformConv`` (its ONNX frontend refuses ONNX's own DeformConv node
test models) and cannot know the TensorRT ``ModulatedDeformConv2d`` plugin node: ``needs_portable_twin`` says
why, and the caller verifies the same model exported with the ``portable`` lowering instead.

``openvino`` is an optional extra (``pip install 'blocks-export[openvino]'``), imported only when asked for. This
module imports no other module of the package but ``errors`` (and ``trt.run`` when an engine runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import RuntimeMissing, UsageError

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
TENSORRT = "tensorrt"
RUNTIMES = (ONNXRUNTIME, OPENVINO)  # the runtimes that verify an ONNX graph (``verify_with``)
DEFAULT_RUNTIMES = (ONNXRUNTIME,)
# Node types OpenVINO's ONNX frontend cannot convert (checked on OpenVINO 2026.4.1: "No conversion rule found
# for DeformConv"); the plugin node is a TensorRT-only op.
_OPENVINO_UNREADABLE = {("", "DeformConv"), ("ai.onnx", "DeformConv")}


class Runner(Protocol):
    """One loaded graph or engine on one runtime: named inputs in, outputs (graph output order) out."""

    @property
    def runtime(self) -> str: ...

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    @property
    def graph(self) -> Any: ...  # the ONNX it runs (where a failure is placed), None for an engine

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def check_runtime_names(names: Sequence[str]) -> tuple[str, ...]:
    """``UsageError`` (one line) for an unknown or repeated runtime; the names as a tuple otherwise."""
    names = tuple(names)
    if not names:
        raise UsageError(f"`verify_with`: name at least one runtime ({', '.join(RUNTIMES)})")
    for n in names:
        if n not in RUNTIMES:
            raise UsageError(f"`verify_with={n!r}`: expected one of {', '.join(RUNTIMES)}")
    return tuple(dict.fromkeys(names))


def version(runtime: str) -> str | None:
    """The installed version of ``runtime``'s package, or None when it is not installed."""
    try:
        return metadata.version(runtime)
    except metadata.PackageNotFoundError:
        return None


def require(runtime: str) -> None:
    """``RuntimeMissing`` (exit 3, one line) when ``runtime`` cannot be imported here."""
    if runtime == OPENVINO:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise RuntimeMissing("`verify_with=openvino`: OpenVINO is not installed here; "
                                 "pip install 'blocks-export[openvino]' (or drop `verify_with=openvino`)") from None
    elif runtime == ONNXRUNTIME:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RuntimeMissing("`verify_with=onnxruntime`: onnxruntime is not installed here; "
                                 "pip install onnxruntime") from None
    else:
        check_runtime_names([runtime])


@dataclass
class OrtRunner:
    session: Any
    graph: Any = None
    runtime: str = ONNXRUNTIME

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, feed))


@dataclass
class OpenVinoRunner:
    """A compiled OpenVINO model fed by position. After compilation a port can carry several tensor names (an
    input that feeds a no-op Reshape also answers to the Reshape's output name, and ``get_any_name`` may pick
    that one), so the names are those of the ONNX graph, whose input and output order OpenVINO keeps."""

    compiled: Any
    input_names: list[str]
    output_names: list[str]
    graph: Any = None
    runtime: str = OPENVINO

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"openvino: no value for graph input(s) {', '.join(missing)}")
        request = self.compiled.create_infer_request()
        result = request.infer({i: np.ascontiguousarray(feed[n]) for i, n in enumerate(self.input_names)})
        return [np.array(result[p]) for p in self.compiled.outputs]


@dataclass
class EngineRunner:
    """A serialized TensorRT engine, its IO named as its sidecar records them. Each ``run`` goes through
    ``trt/run.run_engine``: the engine is checked against its sidecar (hash, TensorRT version, GPU) before it is
    deserialized; ``TensorRTUnavailable`` where TensorRT, a GPU or device memory is missing here."""

    engine_path: Path
    input_names: list[str]
    output_names: list[str]
    check_sidecar: bool = True
    graph: Any = field(default=None, init=False)
    runtime: str = field(default=TENSORRT, init=False)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        from .trt.run import run_engine

        got = run_engine(self.engine_path, feed, verify=self.check_sidecar)
        missing = [n for n in self.output_names if n not in got]
        if missing:
            raise ValueError(f"the engine has no output {', '.join(missing)} (its sidecar names it)")
        return [np.asarray(got[n]) for n in self.output_names]


def _serialized(model: Any) -> bytes:
    """ONNX bytes of a ``ModelProto``, bytes or a path."""
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    with open(model, "rb") as f:
        return f.read()


def open_runner(runtime: str, model: Any, *, threads: int = 1) -> Runner:
    """Load ``model`` (``ModelProto``, bytes or path) on ``runtime``'s CPU device."""
    require(runtime)
    if runtime == ONNXRUNTIME:
        from blocks_export.plugins.ort_cpu import cpu_session

        return OrtRunner(cpu_session(model, threads=threads), model)
    import onnx
    import openvino as ov

    data = _serialized(model)
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(data)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(data), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                "INFERENCE_NUM_THREADS": int(threads)})
    if len(compiled.inputs) != len(inputs) or len(compiled.outputs) != len(proto.graph.output):
        raise RuntimeError(f"openvino: the compiled model has {len(compiled.inputs)} inputs and "
                           f"{len(compiled.outputs)} outputs, the ONNX graph {len(inputs)} and "
                           f"{len(proto.graph.output)}")
    return OpenVinoRunner(compiled, inputs, [o.name for o in proto.graph.output], model)


def unreadable_nodes(runtime: str, model: Any) -> list[str]:
    """Op types in ``model`` that ``runtime`` cannot read (``domain::op``); empty for onnxruntime."""
    if runtime != OPENVINO:
        return []
    from blocks_export.plugins.plugin_node import plugin_nodes

    found = {f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node
             if (n.domain, n.op_type) in _OPENVINO_UNREADABLE}
    found |= {f"{n.domain or '(default)'}::{n.op_type} (TensorRT plugin)" for n in plugin_nodes(model)}
    return sorted(found)


def needs_portable_twin(runtime: str, model: Any) -> str | None:
    """Why ``runtime`` must verify ``model``'s portable twin instead of ``model`` itself, or None."""
    bad = unreadable_nodes(runtime, model)
    if not bad:
        return None
    return (f"OpenVINO {version(OPENVINO) or ''} has no conversion for {', '.join(bad)}: verified the same model "
            "exported with the portable DeformConv lowering (standard ops only) instead").replace("  ", " ")


__all__ = ["DEFAULT_RUNTIMES", "ONNXRUNTIME", "OPENVINO", "RUNTIMES", "TENSORRT", "EngineRunner", "OpenVinoRunner",
           "OrtRunner", "Runner", "check_runtime_names", "needs_portable_twin", "open_runner", "require",
           "unreadable_nodes", "version"]
