"""What each block costs: an exported graph's run time split per block instance, plus the model outside blocks.

``profile_onnx`` runs the graph on onnxruntime CPU with its profiler (``SessionOptions.enable_profiling``) on the
verification input (the export shape from the graph's ``blocks_export.export_shape`` metadata, else the graph
input's static shape; image-like values in [0, 1), seeded), a few warm-up runs, then ``runs`` timed ones. Each
kernel's time is given to the block instance its node came from; what is left is "outside blocks". The whole
is onnxruntime's own ``model_run`` time, so the parts can be checked against it (``Profile.gap``).

Which node belongs to which block is ``profile_blocks``; the TensorRT side (``profile_engine``,
``trt_layer_profile``, ``read_trtexec_profile``) is ``profile_trt``; the table and its bar chart are
``profile_table``; the input shapes and values ``profile_inputs``. This module keeps the names callers import.

numpy and onnxruntime only (no torch); matplotlib (extra ``plot``) for ``write_chart``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ExportFailed, one_line
from .profile_blocks import block_instances, module_paths, node_blocks, optimized_node_blocks
from .profile_inputs import ShapeNeeded, export_shapes, load_graph, make_inputs
from .profile_table import (
    FORMAT,
    GAP_LIMIT,
    OUTSIDE,
    PLOT_HINT,
    Part,
    Profile,
    chart_path,
    profile_parts,
    write_chart,
)
from .profile_trt import Layer, layer_nodes, profile_engine, read_trtexec_profile, trt_layer_profile


def profile_onnx(path: str | os.PathLike[str], *, runs: int = 20, warmup: int = 3, threads: int | None = None,
                 shape: Sequence[int] | None = None, seed: int = 0) -> Profile:
    """Profile ``path`` on onnxruntime CPU: mean time per block instance over ``runs`` runs (module docstring)."""
    import onnx
    import onnxruntime as ort

    from ..plugins.ort_cpu import has_plugin_nodes

    if runs < 1 or warmup < 0:
        raise ValueError(f"`runs`={runs} and `warmup`={warmup}: need at least one run and no negative warm-up")
    path = Path(path)
    written = load_graph(path)
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
    return Profile(path.name, runtime, shapes, runs, warmup, whole, profile_parts(times, counts, instances), notes)


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

__all__ = ["FORMAT", "GAP_LIMIT", "OUTSIDE", "PLOT_HINT", "Layer", "Part", "Profile", "ShapeNeeded", "block_instances",
           "chart_path", "export_shapes", "layer_nodes", "make_inputs", "module_paths", "node_blocks",
           "optimized_node_blocks", "profile_engine", "profile_onnx", "read_trtexec_profile", "trt_layer_profile",
           "write_chart"]
