"""What each block costs: an exported graph's run time split per block instance, plus the model outside blocks.

``profile_onnx`` runs the graph on onnxruntime CPU with its profiler (``SessionOptions.enable_profiling``) on the
verification input (the export shape from the graph's ``blocks_export.export_shape`` metadata, else the graph
input's static shape; image-like values in [0, 1), seeded), a few warm-up runs, then ``runs`` timed ones. Each
kernel's time is given to the block instance its node came from; what is left is "outside blocks". The whole
is onnxruntime's own ``model_run`` time, so the parts can be checked against it (``Profile.gap``).

Which node belongs to which block, from what the export writes: the block instances are the ``blocks``
metadata entry (the rewrite report: module path and class of each replaced block); a node's module path is the
dynamo exporter's ``pkg.torch.onnx.name_scopes`` node metadata (kept through simplification by
``simplify.keep_node_metadata``), else the TorchScript exporter's node name (``/backbone.9/f/Conv``). Nodes made
later without either (fp16 Casts, onnxruntime's fusions and layout reorders) take the block of the nodes around
them. onnxruntime profiles the graph it optimised, not the one written: its nodes are matched to the written
ones by name, by output name, and by the names its optimisers derive (``fused X``, ``X_nchwc``,
``X/...Fusion/``, ``..._token_N``).

The TensorRT side (``profile_engine``, ``trt_layer_profile``) gives the same table from an engine's layer
profile: TensorRT names each engine layer after the ONNX nodes it was built from (``A + B``, ``PWN(A, B)``,
``{ForeignNode[A...B]}``, ``Reformatting CopyNode for Input Tensor 0 to A``) and, from 10.0 with detailed
profiling verbosity, lists them in the layer's metadata (``[ONNX Layer: A]\\x1f[ONNX Layer: B]``). A layer made
from nodes of several blocks is split evenly between its nodes. ``read_trtexec_profile`` reads the profile
``trtexec --exportProfile`` writes (and ``--exportLayerInfo``'s metadata), so a profile taken on the Jetson is
mapped on any machine.

numpy and onnxruntime only (no torch); matplotlib (extra ``plot``) for ``write_chart``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .diagnose import scope_names
from .errors import ExportFailed, one_line

FORMAT = "blocks-export-profile/1"
OUTSIDE = "outside blocks"
#: How close the parts must come to the measured whole for a profile to be called consistent (the acceptance
#: test's rule; ``Profile.lines`` says when a profile is further off).
GAP_LIMIT = 0.10


@dataclass(frozen=True)
class Part:
    """One row: a block instance (``name`` its module path, ``kind`` its class) or ``OUTSIDE``."""

    name: str
    kind: str
    ms: float  # mean per run
    nodes: int  # kernels (onnxruntime) or layers (TensorRT) whose time it got

    def as_dict(self, whole_ms: float) -> dict[str, Any]:
        return {"name": self.name, "class": self.kind, "ms": round(self.ms, 4),
                "share": round(self.ms / whole_ms, 4) if whole_ms > 0 else None, "nodes": self.nodes}


@dataclass
class Profile:
    """Per-block cost of one graph on one runtime."""

    model: str
    runtime: str  # "onnxruntime 1.32.0 CPUExecutionProvider, 2 threads", "TensorRT 10.3.0"
    inputs: dict[str, list[int]]
    runs: int
    warmup: int
    whole_ms: float  # mean run time measured by the runtime
    parts: list[Part]  # block instances in graph order, then OUTSIDE
    notes: list[str] = field(default_factory=list)
    chart: str | None = None  # the bar chart's path, once written

    @property
    def parts_ms(self) -> float:
        return sum(p.ms for p in self.parts)

    @property
    def gap(self) -> float:
        """|parts - whole| / whole: the time no kernel accounts for (scheduling, copies between runs)."""
        return abs(self.parts_ms - self.whole_ms) / self.whole_ms if self.whole_ms > 0 else 0.0

    def block(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": self.model, "runtime": self.runtime, "inputs": self.inputs,
                "runs": self.runs, "warmup": self.warmup, "whole_ms": round(self.whole_ms, 4),
                "parts_ms": round(self.parts_ms, 4), "gap": round(self.gap, 4),
                "parts": [p.as_dict(self.whole_ms) for p in self.parts], "notes": list(self.notes),
                "chart": self.chart}

    def lines(self) -> list[str]:
        """The table as text lines (what the CLI prints)."""
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in self.inputs.items())
        width = max([len(p.name) for p in self.parts] + [len(OUTSIDE), 5])
        kind_w = max([len(p.kind) for p in self.parts] + [5])
        out = [f"{self.model}: {self.runtime}; input {shapes}; mean of {self.runs} runs after {self.warmup} "
               f"warm-up",
               f"{'block':<{width}}  {'class':<{kind_w}}  {'ms':>9}  {'share':>6}  {'nodes':>5}"]
        for p in self.parts:
            share = f"{100 * p.ms / self.whole_ms:5.1f}%" if self.whole_ms > 0 else "    -"
            out.append(f"{p.name:<{width}}  {p.kind:<{kind_w}}  {p.ms:9.3f}  {share:>6}  {p.nodes:5d}")
        out.append(f"{'sum of the parts':<{width}}  {'':<{kind_w}}  {self.parts_ms:9.3f}  "
                   f"{100 * self.parts_ms / self.whole_ms if self.whole_ms > 0 else 0:5.1f}%")
        out.append(f"{'whole run':<{width}}  {'':<{kind_w}}  {self.whole_ms:9.3f}  100.0%")
        if self.gap > GAP_LIMIT:
            out.append(f"note: the parts are {100 * self.gap:.0f}% off the whole run (more than "
                       f"{100 * GAP_LIMIT:.0f}%): time between kernels, or a loaded machine; rerun with more runs")
        out += [f"note: {n}" for n in self.notes]
        if self.chart:
            out.append(f"bar chart: {self.chart}")
        return out


# --- which node belongs to which block ------------------------------------------------------------------------

def block_instances(model: Any) -> list[tuple[str, str]]:
    """(module path, class) of every block the export replaced, from the ``blocks_export.blocks`` metadata."""
    for p in model.metadata_props:
        if p.key == "blocks_export.blocks":
            try:
                entries = json.loads(p.value)
            except ValueError:
                return []
            return [(str(e["name"]), str(e.get("recognized_as") or e.get("original_class") or ""))
                    for e in entries if isinstance(e, dict) and "name" in e]
    return []


def module_paths(node: Any) -> list[str]:
    """Full module paths a node sits in, outermost first: the dynamo exporter's scope metadata, else the
    TorchScript exporter's node name (``/model.9/model.9.1/cv1/conv/Conv`` -> ``model.9``, ``model.9.1``,
    ``model.9.1.cv1``, ``model.9.1.cv1.conv``)."""
    scopes = scope_names(node)
    if scopes is not None:
        return _absolute([s for s in scopes if s])
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return _absolute([s for s in node.name.split("/")[1:-1] if s])
    return []


def _absolute(scopes: Sequence[str]) -> list[str]:
    """Each scope of a nesting stack as a full path. Both exporters name a module either by its full path or by
    its path inside the module whose forward called it (dynamo: ``['model.4', 'm.0', 'm.0.cv2']``, TorchScript:
    ``/model.9/model.9.1/cv1``): an entry that does not extend the previous one is relative to it."""
    out: list[str] = []
    prev = ""
    for scope in scopes:
        if not out:
            out.append(scope)
        elif scope.startswith(prev + "."):
            out.append(out[-1] + scope[len(prev):])
        else:
            out.append(f"{out[-1]}.{scope}")
        prev = scope
    return out


def _block_of(paths: Sequence[str], blocks: Sequence[str]) -> str | None:
    """The deepest block containing one of ``paths``."""
    best: str | None = None
    for b in blocks:
        if any(p == b or p.startswith(b + ".") for p in paths) and (best is None or len(b) > len(best)):
            best = b
    return best


def node_blocks(model: Any, blocks: Sequence[str] | None = None) -> dict[str, str | None]:
    """Node name -> block instance (``None``: outside every block) for every node of ``model``.

    ``blocks`` defaults to the ``blocks`` metadata; without it, each top-level module is a part. A node with no
    module path of its own takes the block its neighbours agree on (producers of its inputs and consumers of
    its outputs), repeatedly, so chains of inserted nodes (fp16 Casts) are placed too.
    """
    names = [b for b, _ in block_instances(model)] if blocks is None else list(blocks)
    graph = model.graph
    out: dict[str, str | None] = {}
    unplaced = []
    for n in graph.node:
        paths = module_paths(n)
        if not names and paths:
            out[n.name] = paths[0]
        elif paths:
            out[n.name] = _block_of(paths, names)
        else:
            unplaced.append(n)
    _place_by_neighbours(graph.node, out, unplaced)
    return out


def _common_block(blocks: set[str | None]) -> str | None:
    """The one of ``blocks`` that holds all the others (a nested block's parent), else ``None`` (outside)."""
    if None in blocks:
        return None
    names = [b for b in blocks if b is not None]
    return next((c for c in names if all(b == c or b.startswith(c + ".") for b in names)), None)


def _place_by_neighbours(nodes: Iterable[Any], out: dict[str, str | None], unplaced: list[Any]) -> None:
    """Give each node of ``unplaced`` the block its placed neighbours share (outside when they disagree)."""
    nodes = list(nodes)
    producer = {o: n.name for n in nodes for o in n.output if o}
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n.name)
    pending = list(unplaced)
    while pending:
        still = []
        for n in pending:
            around = [producer[i] for i in n.input if i in producer] + \
                [c for o in n.output for c in consumers.get(o, [])]
            placed = {out[a] for a in around if a in out}
            if placed:
                out[n.name] = _common_block(placed)
            else:
                still.append(n)
        if len(still) == len(pending):
            for n in still:
                out[n.name] = None
            break
        pending = still


# onnxruntime's optimisers name what they make after what they replace: "fused X", "X_nchwc", "X/QuickGeluFusion/",
# "ReorderOutput_token_12" (core/optimizer/*.cc, core/optimizer/nchwc_transformer.cc).
_ORT_NAME_PARTS = (re.compile(r"^fused "), re.compile(r"_nchwc$"), re.compile(r"/[A-Za-z]*Fusion/?$"),
                   re.compile(r"_token_\d+$"))


def _ort_origin(name: str) -> str:
    prev = None
    while prev != name:
        prev = name
        for pattern in _ORT_NAME_PARTS:
            name = pattern.sub("", name)
    return name


def optimized_node_blocks(written: Any, optimized: Any, blocks: Sequence[str] | None = None) -> dict[str, str | None]:
    """Node name of onnxruntime's optimised graph -> block, through the written graph's nodes (same name, same
    output, or the name an optimiser derived), then through neighbours."""
    by_node = node_blocks(written, blocks)
    by_value = {o: by_node.get(n.name) for n in written.graph.node for o in n.output if o}
    out: dict[str, str | None] = {}
    unplaced = []
    for n in optimized.graph.node:
        origin = _ort_origin(n.name)
        if n.name in by_node:
            out[n.name] = by_node[n.name]
        elif origin in by_node:
            out[n.name] = by_node[origin]
        elif any(o in by_value for o in n.output):
            out[n.name] = next(by_value[o] for o in n.output if o in by_value)
        elif origin in by_value:
            out[n.name] = by_value[origin]
        else:
            unplaced.append(n)
    _place_by_neighbours(optimized.graph.node, out, unplaced)
    return out


def _parts(times: Mapping[str, float], counts: Mapping[str, int], instances: Sequence[tuple[str, str]]
           ) -> list[Part]:
    """Block rows in the order of ``instances`` (every instance, 0 ms when none of its nodes ran), then the
    blocks found without metadata, then OUTSIDE."""
    kinds = dict(instances)
    order = [b for b, _ in instances] + [b for b in times if b not in kinds and b != OUTSIDE]
    rows = [Part(b, kinds.get(b, ""), times.get(b, 0.0), counts.get(b, 0)) for b in order]
    return rows + [Part(OUTSIDE, "", times.get(OUTSIDE, 0.0), counts.get(OUTSIDE, 0))]


# --- onnxruntime ---------------------------------------------------------------------------------------------

class ShapeNeeded(ValueError):
    """The graph has a dynamic input and no recorded export shape: the caller must give one (``shape``)."""


def export_shapes(model: Any, shape: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Input name -> shape to profile at: ``shape`` for a one-input graph, else the ``export_shape`` metadata,
    else the inputs' static shapes. ``ValueError`` (one line) when a dynamic input has no shape to use."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if shape is not None:
        if len(inputs) != 1:
            raise ValueError(f"`shape` applies to a one-input graph; this one has {len(inputs)} inputs")
        return {inputs[0].name: [int(d) for d in shape]}
    meta = next((p.value for p in model.metadata_props if p.key == "blocks_export.export_shape"), None)
    if meta is not None:
        try:
            recorded = json.loads(meta)
        except ValueError:
            recorded = {}
        if isinstance(recorded, dict) and all(i.name in recorded for i in inputs):
            return {i.name: [int(d) for d in recorded[i.name]] for i in inputs}
    out = {}
    for i in inputs:
        dims = i.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ShapeNeeded(f"input {i.name!r} has dynamic dimensions and the graph records no export shape to "
                              "profile at")
        out[i.name] = [int(d.dim_value) for d in dims]
    return out


def make_inputs(model: Any, shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Image-like values in [0, 1) in each input's own dtype, deterministic per seed."""
    import onnx

    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        if i.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        data = rng.random(tuple(shapes[i.name]))
        feeds[i.name] = data.astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(data.shape, dtype)
    return feeds


def profile_onnx(path: str | os.PathLike[str], *, runs: int = 20, warmup: int = 3, threads: int | None = None,
                 shape: Sequence[int] | None = None, seed: int = 0) -> Profile:
    """Profile ``path`` on onnxruntime CPU: mean time per block instance over ``runs`` runs (module docstring)."""
    import onnx
    import onnxruntime as ort

    from ..plugins.ort_cpu import has_plugin_nodes

    if runs < 1 or warmup < 0:
        raise ValueError(f"`runs`={runs} and `warmup`={warmup}: need at least one run and no negative warm-up")
    path = Path(path)
    written = _load(path)
    if has_plugin_nodes(written):
        raise ValueError(f"{path.name} has TensorRT plugin nodes (ModulatedDeformConv2d): onnxruntime runs them "
                         "only through a slow reference op, so their time means nothing; profile the "
                         "`deform_conv=std` or `deform_conv=portable` export, or the engine on the device")
    shapes = export_shapes(written, shape)
    feeds = make_inputs(written, shapes, seed)
    with tempfile.TemporaryDirectory(prefix="blocks-export-profile-") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")  # the graph the profile names
        so.log_severity_level = 3  # the NCHWc "hardware specific" warning on saving it is expected here
        if threads is not None:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            for _ in range(warmup + runs):
                session.run(None, feeds)
        except Exception as e:  # onnxruntime's own failures: one line, placed as the runtime said
            raise ExportFailed(f"onnxruntime could not run {path.name}: {one_line(e)}") from None
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = onnx.load(so.optimized_model_filepath, load_external_data=False)
    instances = block_instances(written)
    blocks = optimized_node_blocks(written, optimized, [b for b, _ in instances] if instances else None)
    whole, kernels, sequence = _ort_runs(events, warmup)
    unknown = [n for n in sequence if n not in blocks]
    blocks.update(_by_execution_order(sequence, blocks))
    times: dict[str, float] = {}
    counts: dict[str, int] = {}
    for node, ms in kernels.items():
        b = blocks.get(node) or OUTSIDE
        times[b] = times.get(b, 0.0) + ms / runs
        counts[b] = counts.get(b, 0) + 1
    notes = [] if instances else ["the graph has no `blocks` metadata (not written by blocks-export): one row "
                                  "per top-level module"]
    if unknown:
        notes.append(f"{len(unknown)} kernel(s) onnxruntime added after optimising (not in the graph it saved, "
                     f"e.g. {unknown[0]}) placed by the kernels run before and after them")
    runtime = (f"onnxruntime {ort.__version__} CPUExecutionProvider, "
               f"{threads if threads is not None else 'default'} intra-op threads")
    return Profile(path.name, runtime, shapes, runs, warmup, whole, _parts(times, counts, instances), notes)


def _load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"{path}: not an ONNX model ({one_line(e)}); profile takes the .onnx an export "
                         "wrote") from None


def _ort_runs(events: list[dict[str, Any]], warmup: int) -> tuple[float, dict[str, float], list[str]]:
    """Mean ``model_run`` ms of the timed runs, each node's summed kernel ms inside them, and the nodes in the
    order the first timed run ran them."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[warmup:]
    if not runs:
        raise ValueError("onnxruntime's profile has no timed run")
    windows = [(r["ts"], r["ts"] + r["dur"]) for r in runs]
    kernels: dict[str, float] = {}
    first: list[tuple[float, str]] = []
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if any(lo <= e["ts"] <= hi for lo, hi in windows):
            node = e["name"][:-len("_kernel_time")]
            kernels[node] = kernels.get(node, 0.0) + e["dur"] / 1000.0
            if windows[0][0] <= e["ts"] <= windows[0][1]:
                first.append((e["ts"], node))
    return sum(r["dur"] for r in runs) / 1000.0 / len(runs), kernels, [n for _, n in sorted(first)]


def _by_execution_order(sequence: Sequence[str], blocks: Mapping[str, str | None]) -> dict[str, str | None]:
    """Blocks for the nodes of ``sequence`` that ``blocks`` lacks: the block of the known nodes run just before
    and just after, when they agree (else outside)."""
    out: dict[str, str | None] = {}
    for i, node in enumerate(sequence):
        if node in blocks:
            continue
        before = next((blocks[n] for n in reversed(sequence[:i]) if n in blocks), None)
        after = next((blocks[n] for n in sequence[i + 1:] if n in blocks), None)
        out[node] = before if before == after else None
    return out


# --- TensorRT: the engine's layer profile ----------------------------------------------------------------------

_FOREIGN = re.compile(r"\{?ForeignNode\[(.+?)\.\.\.(.+?)\]\}?")
_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.+)$")
_METADATA = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_MYELIN_SUFFIX = re.compile(r"(_myl\d+_\d+)$")


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
                   total if whole_ms is None else whole_ms, _parts(times, counts, instances), notes)


def read_trtexec_profile(model_path: str | os.PathLike[str], profile_path: str | os.PathLike[str],
                         layer_info_path: str | os.PathLike[str] | None = None) -> Profile:
    """The per-block table of a profile written by ``trtexec --exportProfile`` (a list: ``{"count": N}``, then
    one ``{"name", "averageMs", ...}`` per layer), optionally with ``--exportLayerInfo``'s JSON for the layers'
    metadata (``{"Layers": [{"Name", "Metadata"}, ...]}``, detailed profiling verbosity)."""

    model = _load(Path(model_path))
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
    from .trt.run import device_memory

    api.load_tensorrt(None)
    import tensorrt as trt

    model = _load(Path(model_path))
    shapes = export_shapes(model, shape)
    feeds = make_inputs(model, shapes, seed)
    memory = device_memory()
    errors: list[str] = []
    logger = api.logger(errors, [])
    api.init_plugins(logger, errors)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise api.EngineBuildError(f"could not deserialize {engine_path}: " + "; ".join(errors))
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            array = np.ascontiguousarray(feeds[name])
            context.set_input_shape(name, tuple(array.shape))
            context.set_tensor_address(name, memory.upload(name, array))
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dims = context.get_tensor_shape(name)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            context.set_tensor_address(name, memory.empty(name, [dims[i] for i in range(len(dims))], dtype))

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


# --- the bar chart ---------------------------------------------------------------------------------------------

PLOT_HINT = "bar chart skipped: matplotlib is not installed (pip install 'blocks-export[plot]')"


def chart_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the bar chart of ``model_path`` goes: beside it, ``<stem>.profile.png``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".profile.png")


def write_chart(profile: Profile, path: Path) -> str | None:
    """A horizontal bar chart of the parts (ms and share) at ``path``, written atomically; ``None`` (and nothing
    written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from .io import atomic_path

    parts = list(profile.parts)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(parts) + 1.6))
    labels = [f"{p.name} ({p.kind})" if p.kind else p.name for p in parts]
    values = [p.ms for p in parts]
    ax.barh(range(len(parts)), values, color=["#4878a8" if p.name != OUTSIDE else "#999999" for p in parts])
    ax.set_yticks(range(len(parts)), labels)
    ax.invert_yaxis()
    for i, p in enumerate(parts):
        share = 100 * p.ms / profile.whole_ms if profile.whole_ms > 0 else 0.0
        ax.text(p.ms, i, f" {p.ms:.2f} ms, {share:.1f}%", va="center", fontsize=8)
    ax.set_xlabel("ms per run (mean)")
    ax.set_title(f"{profile.model}: {profile.runtime}", fontsize=9)
    ax.set_xlim(0, max(values + [1e-9]) * 1.35)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return str(path)


__all__ = ["FORMAT", "GAP_LIMIT", "OUTSIDE", "PLOT_HINT", "Layer", "Part", "Profile", "ShapeNeeded", "block_instances",
           "chart_path", "export_shapes", "layer_nodes", "make_inputs", "module_paths", "node_blocks",
           "optimized_node_blocks", "profile_engine", "profile_onnx", "read_trtexec_profile", "trt_layer_profile",
           "write_chart"]
