"""Where a failing graph goes wrong: the runtime's own failure placed at its node and block (``failure_of``), or
the first block whose output diverges (``locate_divergence``).

``locate_divergence`` names the first block whose output diverges: forward hooks record each block's output in
PyTorch; in the ONNX graph the dynamo exporter tags every node with the module paths it came from (node metadata
``pkg.torch.onnx.name_scopes``, e.g. ``['', 'layer2', 'layer2.ca', 'mul']``), so a block's output is the value
its nodes produce and a node outside it consumes. A copy of the graph with those values added as graph outputs
runs once, and the blocks are compared in the order they start, by the verdict's own rule: float64 truth and
each block's own fp32 floor.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..runtime.parity import Comparison, Rule, compare, rel_l2
from .inputs import float64_copy, make_input
from .runners import open_runner

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")


@dataclass(frozen=True)
class Failure:
    """A runtime's own failure placed in the graph that failed: the node (None when the message names no node of
    the graph), its op and block, the runtime's message; which runtime, on which graph ("exported" or
    "portable twin")."""

    node: str | None
    op: str | None
    block: str | None
    message: str
    runtime: str = "onnxruntime"
    graph: str = "exported"

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "block": self.block, "message": self.message,
                "runtime": self.runtime, "graph": self.graph}

    def line(self, block: str | None = None, block_class: str | None = None) -> str:
        """One line: where it failed (in ``block``, default the failure's own) and the runtime's words."""
        where = f"node {self.node} ({self.op})" if self.node else "an unnamed node"
        block = block if block is not None else self.block
        inside = f" in block {block}" + (f" ({block_class})" if block_class else "") if block else \
            (" outside every block" if self.node else "")
        return f"{self.runtime} failed at {where}{inside}: {self.message}"


@dataclass(frozen=True)
class Divergence:
    """Where a failing graph goes wrong (the report's ``first_diverging_block``): the node a runtime failed in and
    its block, or the first block (in start order) whose output differs, or no block and ``why``."""

    block: str | None
    why: str | None = None
    block_class: str | None = None
    inner: str | None = None  # the deepest diverging block inside ``block``
    inner_class: str | None = None
    shape: tuple[int, ...] = ()
    rel_l2: float | None = None
    max_abs: float | None = None
    error: str | None = None
    node: str | None = None  # set when a runtime failed in a node of the graph
    op: str | None = None
    replaced: bool = False  # the block is one the rewrite replaced with its export twin

    @classmethod
    def none(cls, why: str) -> Divergence:
        return cls(None, why)

    def as_dict(self) -> dict[str, Any]:
        if self.block is None and self.node is None:
            return {"block": None, "why": self.why}
        d: dict[str, Any] = {"block": self.block, "class": self.block_class, "inner": self.inner,
                             "inner_class": self.inner_class, "shape": list(self.shape), "rel_l2": self.rel_l2,
                             "max_abs": self.max_abs, "error": self.error}
        if self.node is not None:
            d.update(node=self.node, op=self.op)
        d["replaced"] = self.replaced
        return d

    def line(self) -> str:
        at = "x".join(map(str, self.shape))
        if self.node:  # the runtime failed in a node of the graph: its own words, placed in the model
            return f"failing node: {self.error} ({at})"
        if not self.block:
            return f"first diverging block: none found ({self.why or ''})"
        inner = f", inside it {self.inner} ({self.inner_class})" if self.inner else ""
        if self.error:
            return f"first diverging block: {self.block} ({self.block_class}){inner}: {self.error} ({at})"
        return (f"first diverging block: {self.block} ({self.block_class}){inner}: rel_l2={_fmt(self.rel_l2)} "
                f"max_abs={_fmt(self.max_abs)} at {at}")


def _fmt(v: Any) -> str:
    return f"{v:.3e}" if isinstance(v, float) else str(v)




# onnxruntime names the node it failed in: at run time "... running MatMul node. Name:'node_MatMul_5' ...", at load
# "... in node (node_Add_3) ..." / "Node (name) Op (Reshape) ...".
_FAILED_NODE = (re.compile(r"running (\w+) node\. Name:'([^']*)'"), re.compile(r"[Nn]ode \(([^)]+)\)"),
                re.compile(r"[Nn]ode:? '([^']+)'"))


def _proto(model: Any) -> Any:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes | bytearray):
        return onnx.load_from_string(bytes(model))
    return onnx.load(str(model), load_external_data=False)


def node_block(node: Any) -> str | None:
    """The module path a node came from: the dynamo exporter's deepest name scope, else the TorchScript
    exporter's node name ``/layer2/ca/Mul_1`` -> ``layer2.ca``."""
    scopes = [s for s in node_scopes(node) if s]
    if scopes:
        return scopes[-1]
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return ".".join(node.name.strip("/").split("/")[:-1]) or None
    return None


def failure_of(error: BaseException, model: Any, runtime: str = "onnxruntime") -> Failure:
    """The runtime's failure placed in ``model`` (the graph that failed); ``node`` is None when the message names
    no node of the graph."""
    text = " ".join(str(error).split())
    names = []
    for pattern in _FAILED_NODE:
        names += [m.groups()[-1] for m in pattern.finditer(text)]
    bare = Failure(None, None, None, _runtime_message(text), runtime)
    try:
        graph = _proto(model).graph
    except Exception:
        return bare
    by_name = {n.name: n for n in graph.node}
    node = next((by_name[n] for n in names if n in by_name), None)
    if node is None:
        return bare
    return replace(bare, node=node.name, op=node.op_type, block=node_block(node) or _block_around(graph, node))


def _block_around(graph: Any, node: Any) -> str | None:
    """For a node without scopes (a later step made or renamed it): the deepest block shared by the nodes that
    feed it and the nodes it feeds."""
    ins, outs = set(node.input), set(node.output)
    around = [b for n in graph.node if n is not node and (ins & set(n.output) or outs & set(n.input))
              if (b := node_block(n))]
    if not around:
        return None
    common = around[0].split(".")
    for b in around[1:]:
        parts = b.split(".")
        k = 0
        while k < min(len(common), len(parts)) and common[k] == parts[k]:
            k += 1
        common = common[:k]
    return ".".join(common) or None


def _runtime_message(text: str) -> str:
    """The useful tail of an onnxruntime message, one line: after "Status Message:" when present."""
    tail = text.split("Status Message:", 1)[-1].strip()
    return tail[:200]



def block_paths(model: Any, replaced: list[str]) -> list[str]:
    """Candidate blocks: the replaced ones, and every non-container module that has sub-modules."""
    paths = list(replaced)
    for name, m in model.named_modules():
        if name and any(True for _ in m.children()) and type(m).__name__ not in _CONTAINERS and name not in paths:
            paths.append(name)
    return paths


def scope_names(node: Any) -> list[str] | None:
    """The module paths the dynamo exporter tagged ``node`` with, outermost first; None where the node carries no
    scope metadata (the TorchScript exporter), [] where it is unreadable."""
    for p in node.metadata_props:
        if p.key == SCOPES_KEY:
            try:
                value = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            return [str(s) for s in value[:-1]] if isinstance(value, list) else []
    return None


def node_scopes(node: Any) -> list[str]:
    """The module paths the exporter tagged ``node`` with, outermost first (empty without dynamo scopes)."""
    return scope_names(node) or []


def has_scopes(model: Any) -> bool:
    return any(node_scopes(n) for n in model.graph.node)


def boundary_values(model: Any, paths: list[str]) -> dict[str, list[str]]:
    """For each module path, the values its nodes produce and a node outside it (or a graph output) uses."""
    scoped = [set(node_scopes(n)) for n in model.graph.node]
    graph_outputs = {o.name for o in model.graph.output}
    out: dict[str, list[str]] = {}
    for path in paths:
        inside = [i for i, s in enumerate(scoped) if path in s]
        produced = {v for i in inside for v in model.graph.node[i].output if v}
        inside_set = set(inside)
        used_outside = {v for i, n in enumerate(model.graph.node) if i not in inside_set for v in n.input
                        if v in produced}
        values = [v for i in inside for v in model.graph.node[i].output if v in used_outside or v in graph_outputs]
        out[path] = list(dict.fromkeys(values))
    return out


def _with_outputs(model: Any, values: list[str]) -> Any:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    existing = {o.name for o in extended.graph.output}
    for v in values:
        if v not in existing:
            extended.graph.output.append(onnx.helper.make_tensor_value_info(v, types.get(v, onnx.TensorProto.FLOAT), None))
    return extended


def _hook_outputs(model: Any, paths: list[str], x: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each block's output at its first call, and the order in which the blocks start."""
    import torch

    modules = dict(model.named_modules())
    outputs: dict[str, np.ndarray] = {}
    order: list[str] = []
    calls: dict[str, int] = {}
    handles = []
    for path in paths:
        m = modules.get(path)
        if m is None:
            continue

        def pre(_m: Any, _args: Any, path: str = path) -> None:
            calls[path] = calls.get(path, 0) + 1
            if calls[path] == 1:
                order.append(path)

        def post(_m: Any, _args: Any, out: Any, path: str = path) -> None:
            if calls.get(path) == 1 and isinstance(out, torch.Tensor):
                out = out.detach().cpu()
                outputs[path] = (out.double() if out.dtype == torch.float64 else out.float()).numpy()

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    once = [p for p in order if calls.get(p) == 1 and p in outputs]  # shared modules are ambiguous
    return outputs, once


def locate_divergence(reference: Any, onnx_model: Any, replaced: list[str], shape: tuple[int, ...], *,
                      precision: str = "fp32", fp16_io: bool = False, seed: int = 0,
                      rule: Rule | None = None) -> Divergence:
    """Name the first block (in start order) whose output differs between ``reference`` and ``onnx_model``.

    ``onnx_model`` must carry the dynamo exporter's name scopes. Without a block to blame, the ``Divergence``
    names none and says why.
    """
    import torch

    if isinstance(reference, torch.jit.ScriptModule | torch.export.ExportedProgram):
        return Divergence.none("block outputs are not available for TorchScript/torch.export inputs")
    if not has_scopes(onnx_model):
        return Divergence.none("the graph carries no module scopes (TorchScript exporter)")
    x = make_input(shape, seed)
    if fp16_io:
        x = x.half().float()
    paths = block_paths(reference, replaced)
    torch_out, order = _hook_outputs(reference, paths, x)
    model64, _ = float64_copy(reference)
    torch64: dict[str, np.ndarray] = {}
    if model64 is not None:  # the same rule as the verdict: float64 truth, each block's own fp32 floor
        with contextlib.suppress(Exception):
            torch64, _ = _hook_outputs(model64, paths, x.double())
    bounds = boundary_values(onnx_model, order)
    wanted = sorted({v for vs in bounds.values() for v in vs})
    if not wanted:
        return Divergence.none("no block outputs could be matched in the graph")
    feed_x = x.numpy().astype(np.float16 if fp16_io else np.float32)
    values: dict[str, np.ndarray] = {}
    with _quiet_ort():
        try:
            runner = open_runner("onnxruntime", _with_outputs(onnx_model, wanted))
            values = dict(zip(runner.output_names, runner.run({runner.input_names[0]: feed_x}), strict=True))
            crashed: set[str] = set()
        except Exception:
            # The graph does not run at this shape (e.g. a split size fixed at export time): run the part of
            # the graph up to each block's output, in order, until one of them fails.
            values, crashed = _run_prefixes(onnx_model, order, bounds, feed_x)
    classes = {n: type(m).__name__ for n, m in reference.named_modules()}

    def diverges(path: str) -> Comparison | None:
        if path in crashed:
            return Comparison(precision, (), path, ("onnxruntime cannot run this block at this shape",))
        ref = torch_out[path]
        cands = [np.asarray(values[v], dtype=np.float32) for v in bounds.get(path, [])
                 if v in values and np.shape(values[v]) == ref.shape]
        if not cands:
            return None
        exact = torch64.get(path)
        floors = [rel_l2(exact, ref)] if exact is not None and exact.shape == ref.shape else None
        truth = exact if floors else ref
        best = min((compare([truth], [c], precision=precision, rule=rule, floors=floors) for c in cands),
                   key=lambda c: c.worst_rel_l2)
        return None if best else best

    first = next(((p, c) for p in order if (c := diverges(p)) is not None), None)
    if first is None:
        return Divergence.none("every block output matches; the difference arises outside the blocks (or in a "
                               "graph step after export)")
    path, cmp = first
    inner = path
    for p in order:  # the deepest diverging block inside the first one, for a precise pointer
        if p.startswith(inner + ".") and diverges(p) is not None:
            inner = p
    rel, mabs = (cmp.outputs[0].rel_l2, cmp.outputs[0].max_abs) if cmp.outputs else (None, None)
    return Divergence(path, block_class=classes.get(path, "?"), inner=inner if inner != path else None,
                      inner_class=classes.get(inner) if inner != path else None, shape=tuple(shape), rel_l2=rel,
                      max_abs=mabs, error=cmp.errors[0] if cmp.errors else None, replaced=path in replaced)


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """onnxruntime logs kernel failures on stderr; the localisation expects them and reports its own line."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def _run_prefixes(model: Any, order: list[str], bounds: dict[str, list[str]],
                  feed: np.ndarray) -> tuple[dict[str, np.ndarray], set[str]]:
    """Run, block by block in ``order``, the sub-graph that computes the block's outputs (``onnx.utils.Extractor``).

    Returns the values computed before the first block whose sub-graph fails, and that block (as a set).
    """
    import onnx

    extractor = onnx.utils.Extractor(model)
    input_name = model.graph.input[0].name
    values: dict[str, np.ndarray] = {}
    for path in order:
        outs = [v for v in bounds.get(path, []) if v not in values]
        if not outs:
            continue
        try:
            sub = extractor.extract_model([input_name], outs)
            runner = open_runner("onnxruntime", sub)
            got = runner.run({input_name: feed})
        except Exception:
            return values, {path}
        values.update(zip(runner.output_names, got, strict=True))
    return values, set()

