"""Block-wise precision fallback: which blocks stay in higher precision so that a lower-precision graph holds.

One mechanism for INT8 (blocks kept floating point) and fp16 (blocks kept fp32). Given the groups of nodes per
block (``node_groups``), a ``build`` that makes the lower-precision graph with some groups kept in higher
precision, and a ``measure`` that judges a built graph (its error and whether the budget holds):

1. each group alone in the lower precision (every other group kept) is measured: its sensitivity; a group that
   breaks the budget alone is kept;
2. errors add up: while the whole graph (every group not kept in the lower precision) breaks the budget, the most
   sensitive group left is kept too, one at a time, re-measured after each.

The result is a row per group (``FallbackRow``: block, nodes, error alone, kept, why) and a row per step of the
greedy loop (``FallbackStep``: what was kept, the graph's error then).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import onnx

G = TypeVar("G")

OUTSIDE = "(outside blocks)"
INPUT_LAYER = "(input layer)"  # outside the blocks: weighted ops that read the graph input
OUTPUT_LAYER = "(output layer)"  # outside the blocks: weighted ops whose result reaches an output unweighted
EDGE_GROUPS = (INPUT_LAYER, OUTSIDE, OUTPUT_LAYER)


@dataclass(frozen=True)
class Measure:
    """A built graph judged: ``error`` orders blocks by sensitivity (``tiebreak`` where errors tie, e.g. a metric
    that moves in whole images), ``ok`` is the budget's verdict, ``detail`` extra numbers for the report."""

    error: float
    ok: bool
    detail: Mapping[str, Any] = field(default_factory=dict)
    tiebreak: float = 0.0


@dataclass
class FallbackRow:
    """One group measured alone in the lower precision, and whether it is kept in the higher one (and why)."""

    block: str
    nodes: int
    error: float
    kept: bool = False
    why: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    tiebreak: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"block": self.block, "nodes": self.nodes, "error": self.error, "kept": self.kept, "why": self.why,
                **self.detail}


@dataclass(frozen=True)
class FallbackStep:
    """The whole graph with ``kept`` in the higher precision, as measured."""

    kept: tuple[str, ...]
    error: float
    ok: bool
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kept": list(self.kept), "error": self.error, "ok": self.ok, **self.detail}


@dataclass
class Fallback(Generic[G]):
    """What ``block_fallback`` decided: the rows, the steps, the final graph and its measure."""

    rows: list[FallbackRow]
    steps: list[FallbackStep]
    graph: G
    measure: Measure

    @property
    def kept(self) -> list[str]:
        return list(self.steps[-1].kept) if self.steps else []

    @property
    def ok(self) -> bool:
        return self.measure.ok


def block_fallback(groups: Mapping[str, Sequence[str]], build: Callable[[frozenset[str]], G],
                   measure: Callable[[G], Measure], *, describe: Callable[[float], str], budget: str,
                   keep_last: bool = True, progress: Callable[[str], None] | None = None) -> Fallback[G]:
    """Sensitivity of each group of ``groups`` (in their order), then the greedy fallback (module docstring).

    ``build(kept)``: the lower-precision graph with the groups named in ``kept`` in the higher precision.
    ``describe(error)``: an error in words ("moves the output by rel_l2 1.2e-02"); ``budget``: the budget in
    words ("budget 5.0e-02").
    ``keep_last=False``: at least one group stays in the lower precision (a graph with every group kept is not
    the precision asked for).
    """
    say = progress or (lambda _text: None)
    names = list(groups)
    rows: list[FallbackRow] = []
    for name in names:
        say(f"sensitivity: {name}")
        m = measure(build(frozenset(n for n in names if n != name)))
        row = FallbackRow(name, len(groups[name]), m.error, detail=dict(m.detail), tiebreak=m.tiebreak)
        if not m.ok:
            row.kept, row.why = True, f"alone it {describe(m.error)} > {budget}"
        rows.append(row)
    remaining = sorted((r for r in rows if not r.kept), key=lambda r: (r.error, r.tiebreak))
    kept = [r.block for r in rows if r.kept]
    steps: list[FallbackStep] = []
    while True:
        say("building" + (f" ({len(kept)} part(s) kept)" if kept else ""))
        graph = build(frozenset(kept))
        m = measure(graph)
        steps.append(FallbackStep(tuple(kept), m.error, m.ok, dict(m.detail)))
        if m.ok or not remaining or (not keep_last and len(remaining) <= 1):
            return Fallback(rows, steps, graph, m)
        row = remaining.pop()
        row.kept = True
        row.why = (f"alone it {describe(row.error)}, the most of those left, and the graph "
                   f"{describe(m.error)} > {budget}")
        kept.append(row.block)


def _name_scopes(node: onnx.NodeProto) -> list[str]:
    """Module paths a node sits in: the dynamo exporter's scope metadata, else a TorchScript name ``/a/b/Op``."""
    from .diagnose import node_scopes

    scopes = node_scopes(node)
    if scopes:
        return scopes
    if node.name.startswith("/"):
        parts = [p for p in node.name.split("/")[1:-1] if p]
        return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return []


def node_blocks(model: onnx.ModelProto, blocks: Sequence[str], scoped: onnx.ModelProto | None = None) -> dict[str, str]:
    """Node name -> the (deepest) block path it belongs to, for the nodes of ``model`` inside ``blocks``.

    A simplified graph loses the exporter's scope metadata; ``scoped`` (the graph before simplification) then
    gives them through the node's name or one of its output names, which the simplifier keeps.
    """
    wanted = sorted(set(blocks), key=len, reverse=True)

    def block_of(scopes: list[str]) -> str | None:
        return next((b for b in wanted if b in scopes), None)

    by_name: dict[str, str] = {}
    by_output: dict[str, str] = {}
    for source in ([scoped] if scoped is not None else []) + [model]:
        for n in source.graph.node:
            b = block_of(_name_scopes(n))
            if b is not None:
                by_name[n.name] = b
                for o in n.output:
                    by_output[o] = b
    out: dict[str, str] = {}
    for n in model.graph.node:
        b = by_name.get(n.name) or next((by_output[o] for o in n.output if o in by_output), None)
        if b is not None:
            out[n.name] = b
    return out


def layer_of(path: str) -> str:
    """The layer a module path is in: its top-level module, or the item of a top-level container
    (``features.3.conv.0`` -> ``features.3``, YOLO's ``model.9.cv1`` -> ``model.9``, ``head.fc`` -> ``head``)."""
    parts = path.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def node_groups(model: onnx.ModelProto, blocks: Sequence[str], nodes: Sequence[str], *,
                scoped: onnx.ModelProto | None = None, edges: Mapping[str, str] | None = None,
                layers: bool = False) -> dict[str, list[str]]:
    """Group ``nodes`` (names in ``model``) by the block they belong to: the deepest of ``blocks`` (module paths)
    holding them, else their ``edges`` entry (input/output layer), else, with ``layers``, their layer (``layer_of``:
    ``head``, ``features.3``), else ``OUTSIDE``. Groups come in the order of ``blocks``, then the rest in graph
    order, the edge groups last."""
    where = node_blocks(model, blocks, scoped)
    scopes: dict[str, list[str]] = {}
    if layers:
        sources = ([scoped] if scoped is not None else []) + [model]
        by_output: dict[str, list[str]] = {}
        for source in sources:
            for n in source.graph.node:
                s = _name_scopes(n)
                if s:
                    scopes[n.name] = s
                    by_output.update({o: s for o in n.output})
        for n in model.graph.node:
            if n.name not in scopes:
                found = next((by_output[o] for o in n.output if o in by_output), None)
                if found:
                    scopes[n.name] = found
    out: dict[str, list[str]] = {b: [] for b in blocks}
    tail: dict[str, list[str]] = {}
    for n in nodes:
        if n in where:
            out[where[n]].append(n)
            continue
        group = (edges or {}).get(n)
        if group is None and scopes.get(n):
            group = layer_of(scopes[n][-1])
        group = group or OUTSIDE
        (tail if group in EDGE_GROUPS else out).setdefault(group, []).append(n)
    out.update({g: tail[g] for g in EDGE_GROUPS if g in tail})
    return {k: v for k, v in out.items() if v}


@dataclass
class Fp16Fallback:
    """``--fp16`` when the fp16 graph failed verification: the blocks kept fp32 so that it passes (the report's
    ``fp16`` key). ``float_passed``: the graph before the fp16 pass passed the fp32 rules; where it did not, the
    graph is wrong, not its precision, and nothing was kept."""

    float_passed: bool
    passed: bool = False
    rows: list[FallbackRow] = field(default_factory=list)
    steps: list[FallbackStep] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    kept_nodes: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"float_passed": self.float_passed, "passed": self.passed, "kept": list(self.kept),
                "kept_nodes": self.kept_nodes, "fallback": [r.as_dict() for r in self.rows],
                "steps": [s.as_dict() for s in self.steps], "notes": list(self.notes)}

    def lines(self) -> list[str]:
        """One line per block kept fp32, or why none was."""
        if not self.float_passed or not self.passed:
            return [f"fp16: no fallback: {n}" for n in self.notes]
        return [f"fp16: kept fp32: {r.block} ({r.nodes} node(s)): {r.why}" for r in self.rows if r.kept]


def fp16_fallback(graph: onnx.ModelProto, blocks: Sequence[str], *, convert: Callable[[onnx.ModelProto, set[str]], G],
                  verify: Callable[[Any, str], Any], scoped: onnx.ModelProto | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[Fp16Fallback, G | None, Any]:
    """The blocks of ``graph`` (the float graph the fp16 pass converts) to keep fp32 so that the fp16 graph passes.

    ``convert(graph, keep)``: the fp16 graph with the nodes named in ``keep`` fp32 (``fp16.to_fp16``'s keep set,
    with the target's rules). ``verify(graph, precision)``: the verify layer's verdict (a ``VerifyResult``) on a
    graph at ``"fp32"`` or ``"fp16"``, floors and the user's tolerance included. The float graph is verified first
    at fp32: if it fails, the fp16 pass is not what breaks it, and nothing is kept. Groups: the model's blocks and
    its layers (``layer_of``). Returns the record, the passing graph and its verification (None, None when none
    passes).
    """
    from .fp16 import name_nodes

    say = progress or (lambda _text: None)
    work = onnx.ModelProto()
    work.CopyFrom(graph)
    name_nodes(work)
    say("fp16 fallback: the fp32 graph")
    if not verify(work, "fp32"):
        return Fp16Fallback(False, notes=["the graph fails verification at fp32 too: it is wrong, not its fp16 "
                                          "precision, and keeping blocks fp32 cannot fix it"]), None, None
    groups = node_groups(work, blocks, [n.name for n in work.graph.node], scoped=scoped, layers=True)
    verdicts: dict[int, Any] = {}

    def measure(candidate: Any) -> Measure:
        result = verify(candidate, "fp16")
        verdicts[id(candidate)] = result
        worst = max((r.comparison.worst_rel_l2 for r in result.runs), default=float("inf"))
        return Measure(float(worst), bool(result), {"rel_l2": float(worst)})

    decided = block_fallback(groups, lambda kept: convert(work, {n for b in kept for n in groups[b]}), measure,
                             describe=lambda e: f"moves the output by rel_l2 {e:.2e}",
                             budget="the fp16 rules", progress=say)
    record = Fp16Fallback(True, decided.ok, decided.rows, decided.steps)
    if decided.ok:
        record.kept, record.kept_nodes = decided.kept, sum(len(groups[b]) for b in decided.kept)
    else:
        record.notes.append(f"the fp16 graph fails with every part kept fp32 ({len(decided.kept)} of "
                            f"{len(groups)}): the fp16 error is not what breaks it")
        return record, None, None
    return record, decided.graph, verdicts[id(decided.graph)]


__all__ = ["EDGE_GROUPS", "Fallback", "FallbackRow", "FallbackStep", "Fp16Fallback", "INPUT_LAYER", "Measure", "OUTPUT_LAYER",
           "OUTSIDE", "block_fallback", "fp16_fallback", "layer_of", "node_blocks", "node_groups"]
