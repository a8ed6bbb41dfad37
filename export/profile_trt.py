"""The TensorRT side of the per-block profile: the same table as ``profile.profile_onnx`` from an engine's layer
profile.

TensorRT names each engine layer after the ONNX nodes it was built from (``A + B``, ``PWN(A, B)``,
``{ForeignNode[A...B]}``, ``Reformatting CopyNode for Input Tensor 0 to A``) and, from 10.0 with detailed
profiling verbosity, lists them in the layer's metadata (``[ONNX Layer: A]\\x1f[ONNX Layer: B]``). A layer made
from nodes of several blocks is split evenly between its nodes. ``read_trtexec_profile`` reads the profile
``trtexec --exportProfile`` writes (and ``--exportLayerInfo``'s metadata), so a profile taken on the Jetson is
mapped on any machine; ``profile_engine`` takes the profile here (TensorRT 8.6+ and a GPU, imported lazily).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .profile_blocks import block_instances, node_blocks
from .profile_inputs import export_shapes, load_graph, make_inputs
from .profile_table import OUTSIDE, Profile, profile_parts

_FOREIGN = re.compile(r"\{?ForeignNode\[(.+?)\.\.\.(.+?)\]\}?")
_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.+)$")
_METADATA = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def layer_nodes(layer: str, metadata: str, order: Mapping[str, int]) -> list[str]:
    """The ONNX nodes (names in ``order``, node name -> graph index) one engine layer was built from: the
    layer's metadata when TensorRT wrote it, else what its name says."""
    found = [m.group(1) for m in _METADATA.finditer(metadata or "")]
    if found:
        return [n for n in found if n in order] or found
    names: list[str] = []
    for m in _FOREIGN.finditer(layer):  # a Myelin region: the nodes from its first to its last, in graph order
        lo, hi = order.get(m.group(1).strip()), order.get(m.group(2).strip())
        if lo is not None and hi is not None:
            names += [n for n, i in order.items() if min(lo, hi) <= i <= max(lo, hi)]
    if names:
        return names
    copy = _REFORMAT.match(layer)
    if copy:
        layer = copy.group(1)
    for token in re.split(r" \+ |, ", layer):
        token = token.strip()
        while token.startswith(("PWN(", "(")):
            token = token[token.index("(") + 1:]
        token = token.rstrip(")").strip()
        if token in order:
            names.append(token)
    return names


@dataclass(frozen=True)
class Layer:
    """One engine layer's profile: its name, mean ms per run, and its metadata (may be empty)."""

    name: str
    ms: float
    metadata: str = ""


def trt_layer_profile(model: Any, layers: Sequence[Layer], *, model_name: str, runtime: str,
                      inputs: Mapping[str, Sequence[int]], runs: int, warmup: int,
                      whole_ms: float | None = None) -> Profile:
    """Per-block table from an engine's layer times. A layer made of nodes of several blocks is split evenly
    between its nodes; a layer no node can be found for (TensorRT's own copies) counts outside blocks."""
    instances = block_instances(model)
    blocks = node_blocks(model, [b for b, _ in instances] if instances else None)
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    times: dict[str, float] = {}
    counts: dict[str, int] = {}
    unmatched = 0
    for layer in layers:
        nodes = layer_nodes(layer.name, layer.metadata, order)
        if not nodes:
            unmatched += 1
            share = {OUTSIDE: layer.ms}
        else:
            share = {}
            for n in nodes:
                b = blocks.get(n) or OUTSIDE
                share[b] = share.get(b, 0.0) + layer.ms / len(nodes)
        for b, ms in share.items():
            times[b] = times.get(b, 0.0) + ms
            counts[b] = counts.get(b, 0) + 1
    notes = [] if instances else ["the graph has no `blocks` metadata (not written by blocks-export): one row "
                                  "per top-level module"]
    if unmatched:
        notes.append(f"{unmatched} of {len(layers)} engine layer(s) name no ONNX node (TensorRT's own copies "
                     "and reformats): counted outside blocks")
    total = sum(layer.ms for layer in layers)
    if whole_ms is None:
        notes.append("the whole is the sum of the layer times (the profile records no end-to-end time)")
    return Profile(model_name, runtime, {k: list(v) for k, v in inputs.items()}, runs, warmup,
                   total if whole_ms is None else whole_ms, profile_parts(times, counts, instances), notes)


def read_trtexec_profile(model_path: str | os.PathLike[str], profile_path: str | os.PathLike[str],
                         layer_info_path: str | os.PathLike[str] | None = None) -> Profile:
    """The per-block table of a profile written by ``trtexec --exportProfile`` (a list: ``{"count": N}``, then
    one ``{"name", "averageMs", ...}`` per layer), optionally with ``--exportLayerInfo``'s JSON for the layers'
    metadata (``{"Layers": [{"Name", "Metadata"}, ...]}``, detailed profiling verbosity)."""

    model = load_graph(Path(model_path))
    try:
        data = json.loads(Path(profile_path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{profile_path}: not a trtexec profile ({e})") from None
    if not (isinstance(data, list) and data and isinstance(data[0], dict) and "count" in data[0]):
        raise ValueError(f"{profile_path}: not a trtexec profile (the exportProfile JSON: a list starting with "
                         "{\"count\": N})")
    metadata: dict[str, str] = {}
    if layer_info_path is not None:
        try:
            info = json.loads(Path(layer_info_path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{layer_info_path}: not a trtexec layer-info file ({e})") from None
        for entry in info.get("Layers", []) if isinstance(info, dict) else []:
            if isinstance(entry, dict):
                metadata[str(entry.get("Name", ""))] = str(entry.get("Metadata", ""))
    layers = [Layer(str(row["name"]), float(row.get("averageMs", 0.0)), metadata.get(str(row["name"]), ""))
              for row in data[1:] if isinstance(row, dict) and "name" in row]
    try:
        shapes = export_shapes(model)
    except ValueError:
        shapes = {}
    return trt_layer_profile(model, layers, model_name=Path(model_path).name,
                             runtime=f"TensorRT (trtexec profile {Path(profile_path).name})", inputs=shapes,
                             runs=int(data[0]["count"]), warmup=0)


def profile_engine(engine_path: str | os.PathLike[str], model_path: str | os.PathLike[str], *, runs: int = 20,
                   warmup: int = 3, shape: Sequence[int] | None = None, seed: int = 0) -> Profile:
    """Run a serialized engine with an ``IProfiler`` attached and map its layers to the blocks of the ONNX it was
    built from. Needs TensorRT 8.6+ (``IProfiler`` with ``execute_async_v3``) and a GPU; the whole is the mean
    wall time of one profiled run (execute and synchronise)."""
    import time

    from .trt import api
    from .trt.run import bind_engine, device_memory

    api.load_tensorrt(None)
    import tensorrt as trt

    model = load_graph(Path(model_path))
    shapes = export_shapes(model, shape)
    feeds = make_inputs(model, shapes, seed)
    memory = device_memory()
    bound = bind_engine(Path(engine_path), feeds, memory)
    engine, context, errors = bound.engine, bound.context, bound.errors

    timed: dict[str, list[float]] = {}
    order: list[str] = []

    class _Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.active = False

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if self.active:
                if layer_name not in timed:
                    order.append(layer_name)
                timed.setdefault(layer_name, []).append(ms)

    profiler = _Profiler()
    context.profiler = profiler
    for _ in range(warmup):
        context.execute_async_v3(memory.stream)
        memory.synchronize()
    profiler.active = True
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        if not context.execute_async_v3(memory.stream):
            raise api.EngineBuildError(f"TensorRT could not run {engine_path}: " + "; ".join(errors))
        memory.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
    metadata = _engine_layer_metadata(engine, trt)
    layers = [Layer(n, sum(timed[n]) / runs, metadata.get(n, "")) for n in order]
    return trt_layer_profile(model, layers, model_name=Path(model_path).name,
                             runtime=f"TensorRT {trt.__version__}, {api.cuda_device(None).name}", inputs=shapes,
                             runs=runs, warmup=warmup, whole_ms=float(np.mean(walls)))


def _engine_layer_metadata(engine: Any, trt: Any) -> dict[str, str]:
    """Layer name -> metadata from ``IEngineInspector`` (TensorRT 10+, detailed profiling verbosity); empty
    where the inspector or the metadata is not there."""
    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except (AttributeError, TypeError, ValueError):
        return {}
    out = {}
    for entry in info.get("Layers", []) if isinstance(info, dict) else []:
        if isinstance(entry, dict):
            out[str(entry.get("Name", ""))] = str(entry.get("Metadata", ""))
    return out
