"""Verification: the ORIGINAL PyTorch model (before any rewrite) against the exported ONNX on onnxruntime CPU
(or another runtime of ``export/runtimes.py``: ``verify(..., runtime="openvino")``).

Every onnxruntime session comes from ``plugins.ort_cpu.cpu_session`` so that graphs with plugin nodes also run.
Metrics and pass rules are those of ``runtime/parity.py`` (``compare``, ``RULES`` per precision).

The reference is the original model run in float64 (a deep copy, ``.double()``) where it runs, else its fp32
run (said in the notes). Each output's fp32 floor is PyTorch's own fp32 error against that float64 run; an output
passes when the ONNX error is within ``parity.FLOOR_FACTOR`` times its floor or under the rule (the precision's,
or the user's ``rtol``/``atol``), whichever is looser. Localisation judges block outputs the same way.

When a comparison fails, ``locate_divergence`` names the first block whose output diverges: forward hooks
record each block's output in PyTorch; in the ONNX graph the dynamo exporter tags every node with the module
paths it came from (node metadata ``pkg.torch.onnx.name_scopes``, e.g. ``['', 'layer2', 'layer2.ca', 'mul']``),
so a block's output is the value its nodes produce and a node outside it consumes. A copy of the graph with
those values added as graph outputs runs once, and the blocks are compared in the order they start.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..runtime.parity import FLOOR_FACTOR, RULES, Comparison, Rule, compare, rel_l2
from .errors import one_line

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")


@dataclass(frozen=True)
class Run:
    """One verification run: the input shape and its comparison (``error`` when the ONNX could not run)."""

    shape: tuple[int, ...]
    comparison: Comparison
    runtime: str = "onnxruntime"

    def as_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "runtime": self.runtime, **self.comparison.as_dict()}


@dataclass(frozen=True)
class Tolerance:
    """The verdict's rules: the rule (the precision's or the user's) against a ``reference`` ("float64": a float64
    run of the model, with each output's fp32 floor; "fp32": the fp32 model, the rule alone)."""

    reference: str
    rule: Rule

    @classmethod
    def of(cls, precision: str, rule: Rule | None, reference: str) -> Tolerance:
        return cls(reference, rule or RULES[precision])

    def as_dict(self) -> dict[str, Any]:
        r = self.rule
        return {"reference": self.reference, "rule": r.text(), "rel_l2": None if r.elementwise else r.rel_l2,
                "rtol": r.rtol, "atol": r.atol,
                "floor_factor": FLOOR_FACTOR if self.reference == "float64" else None}

    def text(self) -> str:
        """The rules in one line."""
        if self.reference == "float64":
            return (f"pass: {self.rule.text()} against a float64 run of the model, or within {FLOOR_FACTOR:g}x "
                    "PyTorch's own fp32 error (the fp32 floor), whichever is looser")
        return f"pass: {self.rule.text()} against the fp32 model"


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


@dataclass(frozen=True)
class RuntimeRun:
    """One runtime's part of a verification: its version, verdict, which graph it ran and why."""

    runtime: str
    version: str | None
    passed: bool
    graph: str = "exported"  # or "portable twin"
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "version": self.version, "passed": self.passed, "graph": self.graph,
                "note": self.note}


@dataclass(frozen=True)
class VerifyResult:
    precision: str
    runs: tuple[Run, ...]
    divergence: Divergence | None = None
    notes: tuple[str, ...] = ()
    runtimes: tuple[RuntimeRun, ...] = ()  # one entry per runtime (export/runtimes.py)
    tolerance: Tolerance | None = None
    failure: Failure | None = None  # the runtime's own failure, placed in the graph (``failure_of``)

    def __bool__(self) -> bool:
        return bool(self.runs) and all(bool(r.comparison) for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": bool(self), "precision": self.precision, "runs": [r.as_dict() for r in self.runs],
                "first_diverging_block": self.divergence.as_dict() if self.divergence is not None else None,
                "notes": list(self.notes), "runtimes": [r.as_dict() for r in self.runtimes],
                "tolerance": self.tolerance.as_dict() if self.tolerance is not None else {},
                "failure": self.failure.as_dict() if self.failure is not None else None}

    def summary(self) -> dict[str, Any]:
        """Short form for the ONNX metadata: pass/fail and the worst relative L2 per shape."""
        return {"passed": bool(self), "precision": self.precision,
                "runs": [{"shape": list(r.shape), "runtime": r.runtime, "passed": bool(r.comparison),
                          "worst_rel_l2": r.comparison.worst_rel_l2 if r.comparison.outputs else None}
                         for r in self.runs]}


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
    scopes = [s for s in _scopes(node) if s]
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


def session(model: Any, threads: int = 1) -> Any:
    """An onnxruntime CPU session through ``plugins.ort_cpu.cpu_session`` (plugin nodes included)."""
    from blocks_export.plugins.ort_cpu import cpu_session

    return cpu_session(model, threads=threads)


def _next_size(size: int, step: int, lo: int, hi: int | None, avoid: int | None = None) -> int | None:
    """A valid size other than ``size`` (and ``avoid``): ``size + k*step`` within [lo, hi], smallest |k|."""
    for k in (1, -1, 2, -2, 3):
        s = size + k * step
        if s >= max(lo, 1) and (hi is None or s <= hi) and s != avoid:
            return s
    return None


def verification_shapes(export_shape: tuple[int, ...], dynamic: dict[str, dict[str, Any]] | None,
                        default_step: int = 32) -> list[tuple[int, ...]]:
    """The export shape and, when dynamic: the minimum (batch 1, smallest H and W), a size that is not a
    multiple of 32 (where the step allows one), a non-square size and batch 3 (all valid for ``dynamic``).

    ``dynamic`` is {axis: {"min", "max", "multiple_of"}}; ``multiple_of`` unknown -> ``default_step``.
    """
    shapes = [tuple(export_shape)]
    if not dynamic:
        return shapes
    n, c, h, w = export_shape

    def axis(a: int) -> tuple[int, int, int | None] | None:
        d = dynamic.get(str(a))
        if d is None:
            return None
        return int(d.get("multiple_of") or default_step), int(d.get("min") or 1), d.get("max")

    ha, wa, ba = axis(2), axis(3), axis(0)
    if ha and wa:
        shapes.append((1, c, ha[1], wa[1]))  # the recorded minimum
        odd_h = next((s for s in range(ha[1], ha[1] + 32 * ha[0], ha[0]) if s % 32 and s > ha[1]
                      and (ha[2] is None or s <= ha[2])), None)
        if odd_h is not None:
            shapes.append((1, c, odd_h, w))
    w2 = _next_size(w, *wa, avoid=h) if wa else None
    if w2 is not None:
        shapes.append((n, c, h, w2))
    elif ha and (h2 := _next_size(h, *ha, avoid=w)) is not None:
        shapes.append((n, c, h2, w))
    if ba and n != 3 and (ba[2] is None or ba[2] >= 3):
        shapes.append((3, c, h, w))
    elif ba:
        b2 = _next_size(n, 1, max(ba[1], 2), ba[2]) if n == 1 else _next_size(n, 1, 2, ba[2])
        if b2 is not None and b2 > 1:
            shapes.append((b2, c, h, w))
    return list(dict.fromkeys(shapes))


def make_input(shape: tuple[int, ...], seed: int) -> Any:
    """Image-like input [N, C, H, W] in [0, 1), deterministic per (seed, shape)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + sum(s * 31**i for i, s in enumerate(shape)))
    return torch.rand(shape, generator=g, dtype=torch.float32)


def torch_outputs(model: Any, x: Any) -> list[np.ndarray]:
    """Outputs of ``model(x)`` flattened in pytree order (the order of the ONNX graph outputs)."""
    import torch
    import torch.utils._pytree as pytree

    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    with torch.no_grad():
        out = model(x)
    return [t.detach().float().cpu().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def float64_copy(model: Any) -> tuple[Any | None, str | None]:
    """``(a float64 deep copy of model, None)``, or ``(None, why not)`` (a TorchScript/torch.export input, a
    model that cannot be copied or cast)."""
    import torch

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None, "the input is not a PyTorch module"
    try:
        return copy.deepcopy(model).double(), None
    except Exception as e:
        return None, one_line(e)


def torch_outputs64(model64: Any, x: Any) -> list[np.ndarray]:
    """Outputs of the float64 copy at ``x`` (cast to float64), as float64 arrays in pytree order."""
    import torch
    import torch.utils._pytree as pytree

    with torch.no_grad():
        out = model64(x.double())
    return [t.detach().double().cpu().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


class Reference:
    """The original model's outputs at one input: fp32, and float64 with each output's fp32 floor when the float64
    copy runs (``exact`` then holds the float64 outputs, else the fp32 ones)."""

    def __init__(self, model: Any, model64: Any | None, x: Any) -> None:
        self.fp32 = torch_outputs(model, x)
        self.fp64: list[np.ndarray] | None = None
        self.why: str | None = None
        if model64 is not None:
            try:
                out64 = torch_outputs64(model64, x)
                if len(out64) == len(self.fp32) and all(a.shape == b.shape for a, b in zip(out64, self.fp32,
                                                                                            strict=True)):
                    self.fp64 = out64
                else:
                    self.why = "its float64 copy returns other outputs"
            except Exception as e:
                self.why = f"its float64 copy fails: {one_line(e)}"

    @property
    def exact(self) -> list[np.ndarray]:
        return self.fp64 if self.fp64 is not None else self.fp32

    @property
    def floors(self) -> list[float | None] | None:
        if self.fp64 is None:
            return None
        return [rel_l2(a, b) for a, b in zip(self.fp64, self.fp32, strict=True)]


def verify(reference: Any, onnx_model: Any, shapes: list[tuple[int, ...]], *, precision: str = "fp32",
           fp16_io: bool = False, seed: int = 0, runtime: str = "onnxruntime", rule: Rule | None = None,
           float64: bool = True) -> VerifyResult:
    """Compare ``reference`` (a PyTorch model) with ``onnx_model`` (proto, bytes or path) at each shape,
    running the graph on ``runtime`` (``export/runtimes.py``).

    ``rule``: the user's own (``parity.user_rule``), else ``RULES[precision]``. ``float64``: judge against a
    float64 copy of ``reference`` and its fp32 floor (module docstring); without it, or where the copy does not
    run, against the fp32 run under the rule alone."""
    from .runtimes import open_runner

    model64, why64 = float64_copy(reference) if float64 else (None, "float64 reference not asked for")
    notes = [] if model64 is not None else [f"parity judged against the fp32 model (no float64 copy: {why64})"]
    tolerance = Tolerance.of(precision, rule, "float64" if model64 is not None else "fp32")
    try:
        sess = open_runner(runtime, onnx_model)
    except Exception as e:
        why = (f"{runtime} cannot load the graph: {one_line(e)}",)
        return VerifyResult(precision, tuple(Run(tuple(s), Comparison(precision, (), "x".join(map(str, s)), why),
                                                 runtime) for s in shapes),
                            notes=tuple(notes), tolerance=tolerance, failure=failure_of(e, onnx_model, runtime))
    in_name = sess.input_names[0]
    out_names = sess.output_names
    runs: list[Run] = []
    failure: Failure | None = None
    for shape in shapes:
        x = make_input(shape, seed)
        if fp16_io:
            x = x.half().float()  # the reference sees exactly the fp16 values the graph receives
        label = "x".join(map(str, shape))
        try:
            refs = Reference(reference, model64, x)
            ref = refs.exact
            if refs.why is not None:
                notes.append(f"{label}: parity judged against the fp32 model ({refs.why})")
        except Exception as e:  # the graph accepts this shape (torch.export's ranges) but the model does not
            runs.append(Run(tuple(shape), Comparison(precision, (), label,
                                                     (f"the PyTorch model fails at this shape: {one_line(e)}",)),
                            runtime))
            continue
        feed = x.numpy().astype(np.float16 if fp16_io else np.float32)
        try:
            got = sess.run({in_name: feed})
        except Exception as e:
            failure = failure or failure_of(e, onnx_model, runtime)
            runs.append(Run(tuple(shape), Comparison(precision, (), label, (f"{runtime} failed: {one_line(e)}",)),
                            runtime))
            continue
        names = out_names if len(out_names) == len(ref) else [f"output{i}" for i in range(len(ref))]
        got_named = {names[i]: np.asarray(g, dtype=np.float32) for i, g in enumerate(got[:len(names)])}
        cmp = compare(dict(zip(names, ref, strict=False)), got_named, precision=precision, label=label, rule=rule,
                      floors=refs.floors)
        if len(got) != len(ref):
            cmp = Comparison(precision, cmp.outputs, label,
                             (*cmp.errors, f"{len(got)} ONNX outputs, the PyTorch model returns {len(ref)}"))
        runs.append(Run(tuple(shape), cmp, runtime))
    return VerifyResult(precision, tuple(runs), notes=tuple(dict.fromkeys(notes)), tolerance=tolerance,
                        failure=failure)


# --- first diverging block -------------------------------------------------------------------------------

def block_paths(model: Any, replaced: list[str]) -> list[str]:
    """Candidate blocks: the replaced ones, and every non-container module that has sub-modules."""
    paths = list(replaced)
    for name, m in model.named_modules():
        if name and any(True for _ in m.children()) and type(m).__name__ not in _CONTAINERS and name not in paths:
            paths.append(name)
    return paths


def _scopes(node: Any) -> list[str]:
    for p in node.metadata_props:
        if p.key == SCOPES_KEY:
            try:
                value = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            return [str(s) for s in value[:-1]] if isinstance(value, list) else []
    return []


def has_scopes(model: Any) -> bool:
    return any(_scopes(n) for n in model.graph.node)


def boundary_values(model: Any, paths: list[str]) -> dict[str, list[str]]:
    """For each module path, the values its nodes produce and a node outside it (or a graph output) uses."""
    node_scopes = [set(_scopes(n)) for n in model.graph.node]
    graph_outputs = {o.name for o in model.graph.output}
    out: dict[str, list[str]] = {}
    for path in paths:
        inside = [i for i, s in enumerate(node_scopes) if path in s]
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
            sess = session(_with_outputs(onnx_model, wanted))
            names = [o.name for o in sess.get_outputs()]
            values = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: feed_x}), strict=True))
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
            sess = session(sub)
            got = sess.run(None, {input_name: feed})
        except Exception:
            return values, {path}
        values.update(zip([o.name for o in sess.get_outputs()], got, strict=True))
    return values, set()
