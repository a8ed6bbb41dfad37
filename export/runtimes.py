"""Runtimes that verify a graph: onnxruntime CPU and OpenVINO CPU behind one small runner interface.

A second, independent ONNX consumer is the next best proof after TensorRT (which cannot run on CPU-only
machines) that a graph is standard ONNX that strict readers take the same way. OpenVINO reads ONNX with its
own frontend and runs it with its own CPU kernels; nothing is shared with onnxruntime.

- ``onnxruntime``: ``plugins.ort_cpu.cpu_session`` (TensorRT plugin nodes run through the CPU reference op).
- ``openvino``: ``openvino.Core().read_model`` + ``compile_model("CPU")`` with ``INFERENCE_PRECISION_HINT=f32``:
  on CPUs with bf16 support OpenVINO's default inference precision is bf16, which moves fp32 results by up to
  7e-2 relative L2 on DeformConv-heavy models; verification measures the graph, not that down-cast
  (https://docs.openvino.ai/2026/openvino-workflow/running-inference/optimize-inference/precision-control.html).
  fp16 graphs run with the same hint, so the error measured is that of the graph's own fp16 nodes.

OpenVINO 2026.4 has no conversion for ONNX ``DeformConv`` (its ONNX frontend refuses ONNX's own DeformConv node
test models) and cannot know the TensorRT ``ModulatedDeformConv2d`` plugin node. For such graphs
``needs_portable_twin`` says why, and the caller verifies the same model exported with the ``portable``
lowering (the same function in standard ops) instead, and says so in the report.

``openvino`` is an optional extra (``pip install 'blocks-export[openvino]'``), imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, Protocol

import numpy as np

from .errors import RuntimeMissing, UsageError

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
RUNTIMES = (ONNXRUNTIME, OPENVINO)
DEFAULT_RUNTIMES = (ONNXRUNTIME,)
# Node types OpenVINO's ONNX frontend cannot convert (checked on OpenVINO 2026.4.1: "No conversion rule found
# for DeformConv"); the plugin node is a TensorRT-only op.
_OPENVINO_UNREADABLE = {("", "DeformConv"), ("ai.onnx", "DeformConv")}


class Runner(Protocol):
    """One loaded graph on one runtime: named inputs in, outputs (graph output order) out."""

    @property
    def runtime(self) -> str: ...

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

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
class _OrtRunner:
    session: Any
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
class _OpenVinoRunner:
    """A compiled OpenVINO model fed by position. After compilation a port can carry several tensor names (an
    input that feeds a no-op Reshape also answers to the Reshape's output name, and ``get_any_name`` may pick
    that one), so the names are those of the ONNX graph, whose input and output order OpenVINO keeps."""

    compiled: Any
    input_names: list[str]
    output_names: list[str]
    runtime: str = OPENVINO

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"openvino: no value for graph input(s) {', '.join(missing)}")
        request = self.compiled.create_infer_request()
        result = request.infer({i: np.ascontiguousarray(feed[n]) for i, n in enumerate(self.input_names)})
        return [np.array(result[p]) for p in self.compiled.outputs]


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

        return _OrtRunner(cpu_session(model, threads=threads))
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
    return _OpenVinoRunner(compiled, inputs, [o.name for o in proto.graph.output])


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


def export_portable_twin(model: Any, example: Any, *, opset: int, opset_fixed: bool, exporter: str, dynamic: bool,
                         decompose_layernorm: bool, simplify: bool, fp16: bool, fp16_io: bool) -> Any:
    """The same model exported as the pipeline does, with the ``portable`` DeformConv lowering (a ``ModelProto``)."""
    from .onnx_export import to_onnx

    proto = to_onnx(model, example, opset=opset, opset_fixed=opset_fixed, lowering="portable", exporter=exporter,
                    dynamic=dynamic, decompose_layernorm=decompose_layernorm).model
    if simplify:
        from .simplify import simplify as slim

        proto, _ = slim(proto)
    if fp16:
        from .fp16 import to_fp16

        proto = to_fp16(proto, keep_io_types=not fp16_io)
    return proto


def verify_with(runtimes: Sequence[str], reference: Any, onnx_model: Any, shapes: list[tuple[int, ...]], *,
                precision: str = "fp32", fp16_io: bool = False, seed: int = 0,
                portable_twin: Callable[[], Any] | None = None, rule: Any = None) -> Any:
    """``verify.verify`` on each runtime in turn; one ``VerifyResult`` holding every runtime's runs.

    A runtime that cannot read ``onnx_model`` (``needs_portable_twin``) verifies ``portable_twin()`` (exported
    once, only when needed) and the result says so in its notes and in ``runtimes``.
    """
    from .verify import Failure, Run, RuntimeRun, Tolerance, VerifyResult, verify

    runs: list[Run] = []
    notes: list[str] = []
    entries: list[RuntimeRun] = []
    tolerance: Tolerance | None = None
    failure: Failure | None = None
    twin: Any = None
    for runtime in check_runtime_names(runtimes):
        require(runtime)
        graph, why = onnx_model, needs_portable_twin(runtime, onnx_model)
        if why is not None and portable_twin is not None:
            twin = twin if twin is not None else portable_twin()
            graph = twin
        elif why is not None:
            why = why.split(":")[0] + ": no portable twin was available, so it could not verify this graph"
        result = verify(reference, graph, shapes, precision=precision, fp16_io=fp16_io, seed=seed, runtime=runtime,
                        rule=rule)
        which = "portable twin" if graph is not onnx_model else "exported"
        runs += result.runs
        notes += [f"{runtime}: {why}"] if why else []
        notes += [n for n in result.notes if n not in notes]
        tolerance = tolerance or result.tolerance
        if failure is None and result.failure is not None:
            failure = replace(result.failure, runtime=runtime, graph=which)
        entries.append(RuntimeRun(runtime, version(runtime), bool(result), which, why))
    return VerifyResult(precision, tuple(runs), notes=tuple(notes), runtimes=tuple(entries), tolerance=tolerance,
                        failure=failure)


__all__ = ["DEFAULT_RUNTIMES", "ONNXRUNTIME", "OPENVINO", "RUNTIMES", "Runner", "check_runtime_names",
           "export_portable_twin", "needs_portable_twin", "open_runner", "require", "unreadable_nodes", "verify_with"]
