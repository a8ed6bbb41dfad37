"""INT8 with explicit quantization: a Q/DQ ONNX graph calibrated on the user's images, block-aware, measured.

The quantizer is onnxruntime's ``quantize_static`` in ``QuantFormat.QDQ`` (QuantizeLinear/DequantizeLinear
pairs), with per-channel symmetric int8 weights and per-tensor symmetric int8 activations (zero point 0: the
only form TensorRT's parser takes, ``operators-8.5-GA.md``/``10.1-GA.md``: "`x_zero_point` must be zero").

Placement follows NVIDIA's Q/DQ placement recommendations for explicit quantization (TensorRT developer guide,
"Explicit Quantization", https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
quantized-types-explicit-quantization.html): quantize the inputs of the weighted operations (Conv,
ConvTranspose, MatMul, Gemm) and not their outputs, so TensorRT fuses DQ -> Conv (+ BN/activation) into one int8
kernel; everything else computes in floating point. On top of that the blocks' precision-sensitive parts stay
floating point, read from the same walk the fp16 pass uses (``fp16.fp32_nodes``: the ops of every
``BlockSpec.fp32_ops``, softmax logits, large reductions, the portable DeformConv coordinate chain), plus
what INT8 adds (``BlockSpec.int8_float_ops``: the sigmoid gates and what computes their logits;
``BlockSpec.int8_float_inputs``: the convolution that computes DeformConv offsets and masks).

Calibration images (``calibration.py``) are read and preprocessed by ``runtime/infer.py``'s own functions from
the metadata the exported graph carries, so the graph is calibrated on exactly what the runtime will feed it,
and split into the calibration images and held-out images that verify the result against the ORIGINAL model.

Sensitivity: each block is quantized alone (the rest floating point) and its output error on the held-out
images reported; with a budget (``int8_budget``, on the worst output relative L2), a block over it stays in
floating point in the final graph (``fallback``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .calibration import CalibrationSet, image_preprocess, read_calibration  # re-exported
from .fallback import INPUT_LAYER, OUTPUT_LAYER, node_blocks
from .graph import consumers, producers
from .int8_measure import (  # re-exported: predicted_classes, top1
    GraphPredictor,
    MetricBudget,
    accuracy,
    held_out_metric,
    metric_of,
    predicted_classes,
    run_graph,
    top1,
    torch_run,
    worst,
)
from .metadata import set_metadata_entry

# NVIDIA's placement: Q/DQ on the inputs of weighted operations only (module docstring).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class BlockSensitivity:
    """Output error of the graph with only ``block`` quantized."""

    block: str
    nodes: int  # weighted nodes of the block that were quantized
    rel_l2: float
    top1_agreement: float | None = None
    fallback: bool = False
    why: str = ""
    loss_points: float | None = None  # with a metric budget: points of the metric lost with only this block INT8

    def as_dict(self) -> dict[str, Any]:
        return {"block": self.block, "nodes": self.nodes, "rel_l2": self.rel_l2,
                "top1_agreement": self.top1_agreement, "fallback": self.fallback, "why": self.why,
                **({"loss_points": self.loss_points} if self.loss_points is not None else {})}


@dataclass
class Int8Result:
    """What the INT8 step produced and measured (the report's ``int8`` key)."""

    calib_folder: str
    calibration_images: int
    held_out_images: int
    budget: float
    quantized_nodes: int = 0
    float_nodes: int = 0  # weighted nodes kept in floating point by the blocks' specs
    rel_l2: float = float("inf")  # worst output, INT8 graph vs the original model, held-out images
    cosine: float = 0.0
    top1_agreement: float | None = None  # classifiers: argmax agreement with the original model
    reference_classes: int | None = None  # classifiers: distinct classes the original predicts on the held-out set
    accuracy: float | None = None  # with label-named subfolders
    reference_accuracy: float | None = None
    naive_rel_l2: float | None = None  # everything quantized (onnxruntime's default op set), same images
    naive_top1_agreement: float | None = None
    sensitivity: list[BlockSensitivity] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    passed: bool = False
    notes: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)  # the images verified (never used for calibration)
    preprocess: dict[str, Any] = field(default_factory=dict)  # how every image was read (runtime/infer.py)
    # With a metric budget: its name, the original's value, the naive and final graphs' values and losses (points),
    # and each step of the fallback loop (the parts kept, the metric then).
    metric: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return self.passed

    @property
    def top1_is_evidence(self) -> bool:
        """Top-1 agreement says something only where the original's top-1 varies over the held-out images: where
        it predicts one class for all of them, any graph that keeps that class agrees fully, however wrong."""
        return self.top1_agreement is not None and (self.reference_classes or 0) > 1

    def line(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        top1 = f" top1_agreement={self.top1_agreement:.4f}" if self.top1_agreement is not None else ""
        if top1 and not self.top1_is_evidence:
            top1 += " (not evidence: the original predicts one class for every held-out image)"
        if self.metric is not None and "loss_points" in self.metric:
            m = self.metric
            budget = (f"{m['name']} {m['value']:.4f} vs {m['reference']:.4f} original: {m['loss_points']:.2f} pt lost "
                      f"(budget {m['budget_points']:g} pt) on {m['images']} image(s) | rel_l2={self.rel_l2:.3e}")
        else:
            budget = f"rel_l2={self.rel_l2:.3e} (budget {self.budget:.1e})"
        return (f"{status} | int8 vs original | {self.held_out_images} held-out image(s) | {budget}{top1} | "
                f"fallback: {', '.join(self.fallback) or 'none'}")

    def as_dict(self) -> dict[str, Any]:
        return {"calib_folder": self.calib_folder, "calibration_images": self.calibration_images,
                "held_out_images": self.held_out_images, "budget": self.budget, "passed": self.passed,
                "rel_l2": self.rel_l2, "cosine": self.cosine, "top1_agreement": self.top1_agreement,
                "reference_classes": self.reference_classes,
                "accuracy": self.accuracy, "reference_accuracy": self.reference_accuracy,
                "naive_rel_l2": self.naive_rel_l2, "naive_top1_agreement": self.naive_top1_agreement,
                "quantized_nodes": self.quantized_nodes, "float_nodes": self.float_nodes,
                "fallback": list(self.fallback), "sensitivity": [s.as_dict() for s in self.sensitivity],
                "notes": list(self.notes), "held_out": list(self.held_out), "preprocess": dict(self.preprocess),
                **({"metric": dict(self.metric)} if self.metric is not None else {})}


def _reader(name: str, tensors: np.ndarray, batch: int) -> Any:
    """onnxruntime ``CalibrationDataReader`` over preprocessed tensors, in batches of the graph's batch size."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(self._batches())

        @staticmethod
        def _batches() -> list[dict[str, np.ndarray]]:
            out, n, b = [], len(tensors), max(1, batch)
            for start in range(0, n, b):
                idx = [(start + k) % n for k in range(b)]  # a short last batch is filled from the start
                out.append({name: tensors[idx]})
            return out

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(self._batches())

    return Reader()


# ---- which nodes stay floating point, which block a node belongs to --------------------------------------------

def int8_float_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that stay floating point in an INT8 graph (module docstring). Nodes must be named."""
    from blocks_export.blocks import INT8_FLOAT_INPUTS, INT8_FLOAT_OPS

    from .fp16 import COORD_OPS, fp32_nodes

    keep = set(fp32_nodes(model))
    graph = model.graph
    producer, readers = producers(graph), consumers(graph)

    def back_to_conv(start: str, through: frozenset[str]) -> set[str]:
        """The nodes from ``start`` back through ``through`` ops, and the weighted op that computes them."""
        found: set[str] = set()
        queue = [start]
        while queue:
            node = producer.get(queue.pop())
            if node is None or node.name in found:
                continue
            if node.op_type in WEIGHTED_OPS:
                found.add(node.name)
            elif node.op_type in through:
                found.add(node.name)
                queue.extend(i for i in node.input if i)
        return found

    layout = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Add", "Mul",
                        "BatchNormalization", "Split", "Slice"})
    for n in graph.node:
        if n.op_type in INT8_FLOAT_OPS and not _is_swish(n, readers):  # a gate, what applies it, its logits
            keep.add(n.name)
            keep |= {c.name for c in readers.get(n.output[0], []) if c.op_type == "Mul"}
            keep |= back_to_conv(n.input[0], layout)
        for op, k in INT8_FLOAT_INPUTS:  # sampling offsets and masks (``BlockSpec.int8_float_inputs``)
            if n.op_type == op and len(n.input) > k and n.input[k]:
                keep |= back_to_conv(n.input[k], COORD_OPS | {"Sigmoid"})
    # The portable lowering's coordinate chain starts from an offset convolution too.
    by_name = {m.name: m for m in graph.node}
    for name in list(keep):
        node = by_name.get(name)
        if node is not None and node.op_type in COORD_OPS:
            for i in node.input:
                p = producer.get(i)
                if p is not None and p.op_type in WEIGHTED_OPS:
                    keep.add(p.name)
    return keep


def _is_swish(node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]]) -> bool:
    """``x * sigmoid(x)`` (SiLU): an activation, not a gate; it quantizes like any activation."""
    muls = [c for c in readers.get(node.output[0], []) if c.op_type == "Mul"]
    return bool(muls) and all(node.input[0] in c.input for c in muls)


# ---- quantization and measurement ------------------------------------------------------------------------------

def quantize(model: onnx.ModelProto, calib: np.ndarray, batch: int, cache: Path, *,
             op_types: Sequence[str] | None = WEIGHTED_OPS, nodes_to_quantize: Sequence[str] | None = None,
             nodes_to_exclude: Sequence[str] = ()) -> onnx.ModelProto:
    """A QDQ copy of ``model`` (onnxruntime ``quantize_static``); calibration ranges are cached in ``cache``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name = model.graph.input[0].name
    work = onnx.ModelProto()
    work.CopyFrom(model)
    with tempfile.TemporaryDirectory(prefix="blocks-export-int8-") as tmp, _quiet_logging(), \
            np.errstate(invalid="ignore", divide="ignore"):
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            work, str(out), _reader(input_name, calib, batch), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types is not None else None, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize is not None else None,
            nodes_to_exclude=list(nodes_to_exclude), calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           # float weights behind a Q/DQ pair: the form every TensorRT line parses (8.x quantizes
                           # weights itself with the IQuantizeLayer's scale; int8 weight initializers are 10+)
                           "AddQDQPairToWeight": True,
                           # MatMul weights [..., C, K]: one scale per output column K (the last axis), so that
                           # the scale factors out of the sum over C (onnxruntime's default axis is 1)
                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": -1},
                           # NVIDIA's placement: the inputs of weighted ops, not their outputs (onnxruntime would
                           # put a Q/DQ pair after every one, in front of LayerNorm, gates and softmax logits)
                           "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS) if op_types is not None else []},
            calibration_cache_path=str(cache))
        return unshare_dequantize(onnx.load(str(out)))


def unshare_dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every consumer of a shared ``DequantizeLinear`` its own copy (in place; returns ``model``).

    A weight used twice (one conv module called on two branches) gets one Q/DQ pair read by both convs.
    onnxruntime 1.16's CPU provider duplicates such a DQ itself at session creation and loses the per-channel
    ``axis`` on the copy ("scale must be 1D tensor with size 32", measured with 1.16.3 on the sample classifier's
    jetpack5 INT8 graph; 1.14.1, 1.17.3, 1.20.1 and 1.32.0 run it), so the graph carries one DQ per consumer.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes: list[onnx.NodeProto] = []
    for n in model.graph.node:
        nodes.append(n)
        users = consumers.get(n.output[0], []) if n.op_type == "DequantizeLinear" else []
        for k, user in enumerate(users[1:], 1):
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name, copy.output[0] = f"{n.name}_{k}", f"{n.output[0]}_{k}"
            nodes.append(copy)
            user.input[list(user.input).index(n.output[0])] = copy.output[0]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """The quantizer logs advice on the root logger ("consider pre-processing"); keep it off the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_model(model: onnx.ModelProto, original: Any, data: CalibrationSet, batch: int, *, budget: float,
                   blocks: Sequence[str], scoped: onnx.ModelProto | None = None, fp16: bool = False,
                   metric: MetricBudget | None = None, progress: Any = None) -> tuple[onnx.ModelProto, Int8Result]:
    """The block-aware INT8 graph of ``model`` and its measurements against the ORIGINAL model (``original``).

    ``blocks``: module paths of the model's blocks (the rewrite report's); each is quantized alone first, then
    ``fallback.block_fallback`` keeps blocks floating point until the budget holds: the worst output's relative L2
    on the held-out images (``budget``), or, with ``metric``, the points of top-1 / mAP lost on its data.
    ``fp16``: what stays out of INT8 runs in fp16 (the fp16 pass on the Q/DQ graph, its fp32 islands kept); the
    sensitivity and the fallback are measured on the graph as it is written.
    """
    from .fallback import Measure, block_fallback, node_groups
    from .fp16 import name_nodes

    say = progress or (lambda _text: None)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    name_nodes(work)
    result = Int8Result(data.folder, len(data.calibration), len(data.held_out), budget, held_out=list(data.held_out),
                        preprocess=dict(data.preprocess))
    reference = torch_run(original, data.held_out_tensors, batch)
    result.reference_accuracy = accuracy(reference, data.labels)
    result.reference_classes = predicted_classes(reference)
    if result.reference_classes == 1:
        only = int(reference[0].argmax(1)[0])
        result.notes.append(
            f"the original model predicts class {only} for every one of the {len(data.held_out)} held-out image(s): "
            "top-1 agreement cannot tell a faithful INT8 graph from a broken one here and is not counted (the "
            "verdict rests on rel_l2); calibrate from a folder whose images the model tells apart")
    float_kept = int8_float_nodes(work)
    weighted = [n.name for n in work.graph.node if n.op_type in WEIGHTED_OPS]
    result.float_nodes = sum(1 for n in weighted if n in float_kept)
    groups = node_groups(work, blocks, [n for n in weighted if n not in float_kept], scoped=scoped,
                         edges=_edge_layers(work))
    base_metric: tuple[str, float] | None = None
    if metric is not None:
        from .val.predict import TorchPredictor

        say("metric of the original model")
        base_metric = metric_of(TorchPredictor(original, metric.prep), metric.data)
    with tempfile.TemporaryDirectory(prefix="blocks-export-calib-") as tmp:
        cache = Path(tmp) / "ranges.json"
        say("calibrating (everything quantized: the naive graph)")
        # The widest tensor set first, so the cached ranges cover every later, smaller one.
        naive = quantize(work, data.calib_tensors, batch, cache, op_types=None)
        naive_out = run_graph(naive, data.held_out_tensors, batch)
        result.naive_rel_l2 = worst(reference, naive_out)[0]
        result.naive_top1_agreement = top1(reference, naive_out)
        if metric is not None and base_metric is not None:
            naive_value = metric_of(GraphPredictor(naive, metric.prep, batch), metric.data)[1]
            result.metric = {"name": base_metric[0], "reference": base_metric[1], "naive": naive_value,
                             "naive_loss_points": 100 * (base_metric[1] - naive_value), **metric.as_dict()}

        def build(kept: frozenset[str]) -> onnx.ModelProto:
            excluded = sorted(float_kept | {n for b in kept for n in groups[b]})
            graph = quantize(work, data.calib_tensors, batch, cache, nodes_to_exclude=excluded)
            if fp16:
                from .fp16 import to_fp16

                graph = to_fp16(graph)
            return graph

        def measure(graph: onnx.ModelProto) -> Measure:
            out = run_graph(graph, data.held_out_tensors, batch)
            err, cosine = worst(reference, out)
            detail: dict[str, Any] = {"rel_l2": err, "cosine": cosine, "top1_agreement": top1(reference, out),
                                      "accuracy": accuracy(out, data.labels)}
            if metric is None or base_metric is None:
                return Measure(err, bool(err <= budget), detail)
            value = metric_of(GraphPredictor(graph, metric.prep, batch), metric.data)[1]
            loss = 100 * (base_metric[1] - value)  # points
            detail |= {"metric": value, "loss_points": loss}
            return Measure(loss, bool(loss <= metric.points), detail, tiebreak=err)

        if metric is None:
            describe, words = (lambda e: f"moves the output by rel_l2 {e:.2e}"), f"budget {budget:.1e}"
        else:
            name = base_metric[0] if base_metric is not None else "metric"
            describe, words = (lambda e: f"costs {e:.2f} pt of {name}"), f"budget {metric.points:g} pt"
        decided = block_fallback(groups, build, measure, describe=describe, budget=words, keep_last=False,
                                 progress=say)
    final, last = decided.graph, decided.measure
    for row in decided.rows:
        result.sensitivity.append(BlockSensitivity(row.block, row.nodes, float(row.detail["rel_l2"]),
                                                   row.detail.get("top1_agreement"), row.kept, row.why))
        if metric is not None:
            result.sensitivity[-1].loss_points = row.error
    result.fallback = decided.kept
    result.rel_l2, result.cosine = float(last.detail["rel_l2"]), float(last.detail["cosine"])
    result.top1_agreement = last.detail["top1_agreement"]
    result.accuracy = last.detail["accuracy"]
    result.quantized_nodes = sum(len(v) for k, v in groups.items() if k not in result.fallback)
    if metric is None:
        result.passed = bool(result.rel_l2 <= budget and np.isfinite(result.rel_l2))
        if not result.passed:
            result.notes.append(f"the INT8 graph moves the output by rel_l2 {result.rel_l2:.2e}, over the budget "
                                f"{budget:.1e}, with every block over it already in floating point; raise "
                                "`int8_budget`, or calibrate on more images like the deployment's")
    else:
        loss = float(last.error)
        result.metric = {**(result.metric or {}), "value": last.detail["metric"], "loss_points": loss,
                         "steps": [s.as_dict() for s in decided.steps]}
        result.passed = bool(loss <= metric.points and np.isfinite(result.rel_l2))
        if not result.passed:
            result.notes.append(f"the INT8 graph loses {loss:.2f} points of {result.metric['name']}, over the budget "
                                f"{metric.points:g}, with every block over it already in floating point; raise "
                                "`int8_budget_metric`, or calibrate on more images like the deployment's")
    set_metadata_entry(final, "precision", "int8")
    return final, result


def _edge_layers(model: onnx.ModelProto) -> dict[str, str]:
    """Weighted nodes that read the graph input, or whose result reaches a graph output through unweighted ops."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    producer = producers(graph)
    out: dict[str, str] = {}
    for n in graph.node:
        if n.op_type in WEIGHTED_OPS and n.input and n.input[0] in inputs:
            out[n.name] = INPUT_LAYER
    queue, seen = [o.name for o in graph.output], set()
    while queue:
        node = producer.get(queue.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in WEIGHTED_OPS:
            out.setdefault(node.name, OUTPUT_LAYER)
        else:
            queue.extend(i for i in node.input if i)
    return out


__all__ = ["BlockSensitivity", "CalibrationSet", "Int8Result", "MetricBudget", "WEIGHTED_OPS", "held_out_metric",
           "image_preprocess",
           "int8_float_nodes", "node_blocks", "predicted_classes", "quantize", "quantize_model", "read_calibration",
           "top1"]
