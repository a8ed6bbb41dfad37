"""Export hazards: what in a model will be exported wrongly or specialised to the export shape.

``scan_hazards(model, example_input)`` reads the module tree (adaptive pooling sizes, ``nn.Unfold``), each
class's source (``.cuda()``/``is_cuda``) and eager forwards at two sizes (tensors built from the input's size),
then runs each module that builds such a tensor on symbolic sizes to see whether an exported graph would rebuild
it or keep it as a constant. The rewriter reports what is left after its swaps.
"""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from ._match import is_torch_class

# Kinds that make a graph wrong at input sizes other than the export's: they matter to a graph that takes other
# sizes (a dynamic export), not to a static one. ``device_branch`` matters everywhere.
SIZE_KINDS = frozenset({"adaptive_pool", "unfold", "shape_built_tensor"})


@dataclass(frozen=True)
class Hazard:
    """A module of the rewritten model with a known export hazard.

    ``kind``: ``adaptive_pool`` (output size other than 1: exported as a fixed-kernel pool, wrong at other
    input sizes), ``unfold`` (``nn.Unfold``/``F.unfold``: specialised to the export shape),
    ``shape_built_tensor`` (a tensor built from the input's size that a trace keeps as a constant), ``device_branch``
    (``.cuda()``/``is_cuda``: the branch taken at export time is baked in).
    """

    name: str
    module_class: str
    kind: str
    detail: str



def clone(tree: Any) -> Any:
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, tree)


def as_args(example_input: torch.Tensor | tuple[Any, ...]) -> tuple[Any, ...]:
    if isinstance(example_input, torch.Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    raise ValueError(f"example_input must be a Tensor or a tuple of inputs, got {type(example_input).__name__}")


# --- hazards --------------------------------------------------------------------------------------------

_FACTORIES = frozenset({"linspace", "logspace", "arange", "zeros", "ones", "empty", "full", "eye", "rand", "randn",
                        "randint", "tensor", "as_tensor", "new_zeros", "new_ones", "new_full", "new_empty",
                        "new_tensor"})
_ADAPTIVE = frozenset({"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                       "adaptive_max_pool2d", "adaptive_max_pool3d"})
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                     nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


def _not_global(size: Any) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return any(s is None or s != 1 for s in sizes)


def _ints(tree: Any) -> tuple[int, ...]:
    leaves, _ = tree_flatten(tree)
    return tuple(int(v) for v in leaves if isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool))


@dataclass(frozen=True)
class _Event:
    module: str
    kind: str
    func: str
    ints: tuple[int, ...]
    detail: str
    input_dims: tuple[int, ...]
    call: int = 0  # which call of ``module`` (a block used twice is called twice)
    nth: int = 0  # the how-manieth call of ``func`` by ``module``'s own code in that call


@dataclass
class _Frame:
    module: nn.Module
    name: str
    dims: tuple[int, ...]
    call: int
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, func: str) -> int:
        n = self.counts.get(func, 0)
        self.counts[func] = n + 1
        return n


def _factory_ints(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...]:
    sizes = {k: v for k, v in kwargs.items() if k not in ("dtype", "device", "layout", "requires_grad")}
    return _ints([a for a in args if not isinstance(a, torch.Tensor)]) + _ints(sizes)


class _Recorder(TorchFunctionMode):
    """Records, per innermost running module, factory calls, functional adaptive pooling/unfold and
    ``is_cuda``/``.cuda()`` uses, during an eager forward."""

    def __init__(self, stack: list[_Frame]):
        super().__init__()
        self.stack = stack
        self.events: list[_Event] = []

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.stack and not is_torch_class(self.stack[-1].module):
            frame = self.stack[-1]
            owner, dims = frame.name, frame.dims
            fname = getattr(func, "__name__", "")
            target = getattr(func, "__self__", None)
            if fname == "__get__" and getattr(target, "__name__", "") == "is_cuda":
                self.events.append(_Event(owner, "device_branch", "is_cuda", (), "reads tensor.is_cuda", dims))
            elif fname == "cuda":
                self.events.append(_Event(owner, "device_branch", "cuda", (), "calls tensor.cuda()", dims))
            elif fname in _FACTORIES:
                self.events.append(_Event(owner, "shape_built_tensor", fname, _factory_ints(args, kwargs), "", dims,
                                          frame.call, frame.count(fname)))
            elif fname in _ADAPTIVE:
                size = args[1] if len(args) > 1 else kwargs.get("output_size")
                if _not_global(size):
                    self.events.append(_Event(owner, "adaptive_pool", fname, (), f"{fname}(output_size={size!r})",
                                              dims))
            elif func is torch.nn.functional.unfold or func is torch.nn.functional.fold:
                self.events.append(_Event(owner, "unfold", fname, (), f"F.{fname}", dims))
        return func(*args, **kwargs)


Call = tuple[tuple[Any, ...], dict[str, Any]]


def _record(model: nn.Module, args: tuple[Any, ...],
            capture: frozenset[str] = frozenset()) -> tuple[list[_Event], Any, dict[str, Call]]:
    """One eager forward under ``_Recorder``: its events, the output, and the first call's inputs of the modules
    named in ``capture``."""
    names: dict[int, str] = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), n)
    stack: list[_Frame] = []
    calls: dict[str, int] = {}
    captured: dict[str, Call] = {}

    def pre(m: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        name = names[id(m)]
        first = next((t for t in tree_flatten(a)[0] if isinstance(t, torch.Tensor)), None)
        stack.append(_Frame(m, name, tuple(first.shape) if first is not None else (), calls.get(name, 0)))
        calls[name] = calls.get(name, 0) + 1
        if name in capture and name not in captured:
            captured[name] = (clone(a), clone(kw))

    def post(m: nn.Module, a: tuple[Any, ...], out: Any) -> None:
        if stack:
            stack.pop()

    handles = [h for m in model.modules()
               for h in (m.register_forward_pre_hook(pre, with_kwargs=True),
                         m.register_forward_hook(post, always_call=True))]
    recorder = _Recorder(stack)
    try:
        with torch.no_grad(), recorder:
            out = model(*clone(args))
    finally:
        for h in handles:
            h.remove()
    return recorder.events, clone(out), captured


# --- do Python-built tensors follow the input size in a trace? ------------------------------------------

# Factories whose step count the ATen schema takes as a plain ``int``: a symbolic size passed to them is fixed to
# its value (the dynamo exporter then fixes the input size), while the TorchScript tracer records the size read.
_INT_STEPS = frozenset({"linspace", "logspace"})
# Factories that copy Python data: their values are constants in any trace.
_DATA = frozenset({"tensor", "as_tensor", "new_tensor"})


@dataclass(frozen=True)
class _Traced:
    """A factory call of a module's own code, run on sizes that are symbols: do its result's sizes (or, for a
    fill value, its arguments) still follow those symbols?"""

    symbolic: bool


def _follows_sizes(func: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> bool:
    from torch.fx.experimental.symbolic_shapes import free_symbols

    def symbolic(v: Any) -> bool:
        return isinstance(v, (torch.SymInt, torch.SymFloat)) and bool(free_symbols(v))

    if func in _DATA:
        return False
    if isinstance(out, torch.Tensor) and any(symbolic(d) for d in out.shape):
        return True
    return func not in _INT_STEPS and any(symbolic(v) for v in tree_flatten((args, kwargs))[0])


class _TraceRecorder(TorchFunctionMode):
    """The factory calls of one module's own code (not its children's) while it runs on symbolic sizes."""

    def __init__(self, depth: list[int]):
        super().__init__()
        self.depth = depth
        self.counts: dict[str, int] = {}
        self.events: dict[tuple[str, int], _Traced] = {}

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        fname = getattr(func, "__name__", "")
        if fname in _FACTORIES and self.depth[0] == 0:
            n = self.counts.get(fname, 0)
            self.counts[fname] = n + 1
            self.events[(fname, n)] = _Traced(_follows_sizes(fname, args, kwargs, out))
        return out


def _has_unit_hw(call: Call) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dim() == 4 and min(t.shape[2:]) <= 1 for t in tree_flatten(call)[0])


def _trace_module(module: nn.Module, call: Call) -> dict[tuple[str, int], _Traced]:
    """Run a copy of ``module`` on ``call``'s inputs with H and W of every 4-D input made symbols (fake tensors,
    PyTorch's symbolic shapes: what ``torch.export`` traces with); its own factory calls by (function, index).

    A size read from a tensor stays a symbol through arithmetic and reaches a factory as one, which builds the
    tensor from the size inside the graph (Ultralytics' Detect rebuilds its anchors so in export mode). A size
    turned into a Python number (``int()``, ``math``, numpy, a comparison with a cached size) is fixed to its value
    on the way, and a tensor built from it or reused from a cache is a constant in the exported graph.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    work = copy.deepcopy(module)  # the run may cache fake tensors in the module (Detect's anchors)
    depth = [0]

    def enter(m: nn.Module, a: tuple[Any, ...]) -> None:
        depth[0] += 1

    def leave(m: nn.Module, a: tuple[Any, ...], out: Any) -> None:
        depth[0] -= 1

    handles = [h for m in work.modules() if m is not work
               for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave, always_call=True))]
    recorder = _TraceRecorder(depth)
    try:
        with FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True) as mode:

            def fake(t: Any) -> Any:
                if not isinstance(t, torch.Tensor):
                    return t
                dims = [DimDynamic.STATIC] * t.dim()
                if t.dim() == 4 and t.is_floating_point():
                    dims[2] = dims[3] = DimDynamic.DYNAMIC
                return mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dims))

            args, kwargs = tree_map(fake, call)
            with torch.no_grad(), recorder:
                work(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return recorder.events


def _larger(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The example input with every 4-D floating tensor's H and W doubled (keeps any divisibility)."""
    g = torch.Generator().manual_seed(0)
    changed = False

    def grow(t: Any) -> Any:
        nonlocal changed
        if isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point():
            changed = True
            n, c, h, w = t.shape
            return torch.randn(n, c, 2 * h, 2 * w, generator=g, dtype=t.dtype).to(t.device)
        return t

    out = tree_map(grow, args)
    return out if changed else None


_SOURCE_HAZARDS: dict[type, tuple[str, ...]] = {}


def _source_device_branches(cls: type) -> tuple[str, ...]:
    if cls not in _SOURCE_HAZARDS:
        _SOURCE_HAZARDS[cls] = _scan_source(cls)
    return _SOURCE_HAZARDS[cls]


def _scan_source(cls: type) -> tuple[str, ...]:
    """``.cuda()`` calls and ``is_cuda`` reads in a class's source, found with ``ast`` (branches that the
    CPU forward never takes are still baked in on a GPU export)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return ()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "is_cuda":
            found.append(f"reads .is_cuda (source line {node.lineno} of {cls.__name__})")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cuda"
              and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "torch")):
            found.append(f"calls .cuda() (source line {node.lineno} of {cls.__name__})")
    return tuple(found)


def _static_hazards(model: nn.Module, classes: dict[str, str]) -> Iterator[Hazard]:
    seen: set[int] = set()
    for name, m in model.named_modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        cls = type(m).__name__
        classes[name] = cls
        if isinstance(m, _ADAPTIVE_MODULES) and _not_global(m.output_size):
            yield Hazard(name, cls, "adaptive_pool",
                         f"output_size={m.output_size!r}: exported as a fixed-kernel pool sized for the export "
                         "shape, wrong at other input sizes")
        elif isinstance(m, (nn.Unfold, nn.Fold)):
            yield Hazard(name, cls, "unfold", f"{cls}: im2col is specialised to the export shape")
        elif not is_torch_class(m):
            for detail in _source_device_branches(type(m)):
                yield Hazard(name, cls, "device_branch", detail)


_CONSEQUENCE = {
    "adaptive_pool": " in forward: exported as a fixed-kernel pool sized for the export shape, wrong at other sizes",
    "unfold": " in forward: im2col is specialised to the export shape",
    "device_branch": " in forward: the branch taken at export time is baked in",
}
_BAKED = "a constant in the exported graph, wrong at other sizes"
# What a tensor built from the input size becomes in the exported graph, by what the symbolic run saw.
_SIZE_BUILT = {
    "python": "from the input size as Python numbers: " + _BAKED,
    "data": "holding values from the input size: " + _BAKED,
    "cached": "from the input size, then reused (cached) while the size matches: " + _BAKED,
    "int_steps": ("from the input size, whose step count the op takes as a Python int: the dynamo exporter fixes the "
                  "input size there (no `dynamic=True` export), the TorchScript exporter (`exporter=torchscript`) "
                  "traces a size read straight from the tensor"),
    "untraced": "from the input size (not run with symbolic sizes: it may be a constant in the exported graph)",
}


def _how_built(event: _Event, traced: dict[tuple[str, int], _Traced] | None) -> str | None:
    """``_SIZE_BUILT`` key of a factory call whose sizes follow the input's, or None where the exported graph
    rebuilds it from the input's size."""
    if traced is None:
        return "untraced"
    seen = traced.get((event.func, event.nth))
    if seen is None:
        return "cached"  # called in eager runs, skipped on symbolic sizes: a tensor kept from an earlier call
    if seen.symbolic:
        return None
    if event.func in _DATA:
        return "data"
    return "int_steps" if event.func in _INT_STEPS else "python"


def scan_hazards(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...]) -> tuple[tuple[Hazard, ...], Any,
                                                                                           tuple[str, ...]]:
    """Known export hazards of ``model`` (run in place, in its current mode), its output on
    ``example_input``, and notes on how the scan went.

    Module hazards are read from the module tree (adaptive pooling sizes, ``nn.Unfold``) and from each
    class's source (``.cuda()``/``is_cuda``, via ``ast``). Tensors built from the input's size are found
    dynamically: a ``TorchFunctionMode`` records every tensor factory call (``torch.linspace``, ``arange``,
    ``zeros``, ...) with the innermost module running it, at twice the example's H and W and then at the example
    size (last, so that whatever a module caches is what an export right after would see); a call whose integer
    arguments change with the input size was built from the input's shape. This sees through helper functions
    (the seed's ``position(h, w)``) and needs no tracer that user code might break. Whether such a tensor is
    really a constant in the exported graph is then decided by running each module concerned on its recorded
    inputs with symbolic H and W (``_trace_module``): a factory whose result still follows the symbols is rebuilt
    in the graph at every size and is no hazard (Ultralytics' Detect in export mode). When the larger run fails,
    calls whose integer arguments equal a dimension (> 1) of the module's input are flagged instead.
    """
    args = as_args(example_input)
    classes: dict[str, str] = {}
    hazards = list(_static_hazards(model, classes))
    notes: list[str] = []
    larger = _larger(args)
    other: list[_Event] | None = None
    if larger is not None:
        try:
            other, _, _ = _record(model, larger)
        except Exception as err:  # noqa: BLE001 (the model may accept one size only)
            notes.append(f"hazard scan: the model does not run at twice the example H and W ({type(err).__name__}); "
                         "Python-built tensors were matched against input dimensions instead")
    makers = frozenset(e.module for e in other or () if e.kind == "shape_built_tensor")
    events, out, inputs = _record(model, args, makers)
    by_key: dict[tuple[str, str, int], tuple[int, ...]] = {}
    if other is not None:
        counts: dict[tuple[str, str], int] = {}
        for e in other:
            if e.kind == "shape_built_tensor":
                k = counts.get((e.module, e.func), 0)
                counts[(e.module, e.func)] = k + 1
                by_key[(e.module, e.func, k)] = e.ints
    counts = {}
    sized: dict[str, list[_Event]] = {}  # module -> its factory calls whose sizes follow the input's
    found: dict[tuple[str, str], list[str]] = {}  # (module, kind) -> details, in call order
    for e in events:
        if e.kind != "shape_built_tensor":
            details = found.setdefault((e.module, e.kind), [])
            if e.detail not in details:
                details.append(e.detail)
            continue
        k = counts.get((e.module, e.func), 0)
        counts[(e.module, e.func)] = k + 1
        if other is not None:
            shape_dependent = by_key.get((e.module, e.func, k)) != e.ints
        else:
            shape_dependent = bool(set(e.ints) & {d for d in e.input_dims if d > 1})
        if shape_dependent:
            found.setdefault((e.module, e.kind), [])
            sized.setdefault(e.module, []).append(e)
    # A size of 1 is fixed by PyTorch's symbolic shapes wherever it appears (contiguity checks treat it apart), so a
    # module that sees a 1-pixel-wide input (a 1x1 P5 map of a small export) is run on the larger input's instead.
    thin = frozenset(n for n in sized if n in inputs and _has_unit_hw(inputs[n]))
    if thin and larger is not None:
        inputs.update(_record(model, larger, thin)[2])
        _record(model, args)  # back to the example size: what a module caches is what an export would see
    for name, made in sized.items():
        traced = None
        if name in inputs:
            try:
                traced = _trace_module(model.get_submodule(name), inputs[name])
            except Exception as err:  # noqa: BLE001 (user code may not run on symbolic sizes: say so, judge eagerly)
                notes.append(f"hazard scan: {name or '<model>'} does not run with symbolic sizes "
                             f"({type(err).__name__}); its tensors built from the input size are flagged as constants")
        groups: dict[str, list[str]] = {}
        for e in made:
            how = _how_built(e, traced)
            if how is not None:
                text = f"torch.{e.func} {'of' if how == 'data' else 'with sizes'} {list(e.ints)}"
                if text not in groups.setdefault(how, []):
                    groups[how].append(text)
        found[(name, "shape_built_tensor")] = [f"{'; '.join(calls)} in forward, {_SIZE_BUILT[how]}"
                                               for how, calls in groups.items()]
    flagged_in_source = {h.name for h in hazards if h.kind == "device_branch"}
    for (name, kind), details in found.items():
        if not details or (kind == "device_branch" and name in flagged_in_source):
            continue
        consequence = "" if kind == "shape_built_tensor" else _CONSEQUENCE[kind]
        hazards.append(Hazard(name, classes.get(name, "?"), kind, "; ".join(details) + consequence))
    unique = list(dict.fromkeys(hazards))
    return tuple(unique), out, tuple(notes)
