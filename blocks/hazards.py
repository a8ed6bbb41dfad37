"""Export hazards: what in a model will be exported wrongly or specialised to the export shape.

``scan_hazards(model, example_input)`` reads the module tree (adaptive pooling sizes, ``nn.Unfold``), each
class's source (``.cuda()``/``is_cuda``) and one eager forward at two sizes (tensors built in Python from the
input's size). The rewriter reports what is left after its swaps.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from ._match import is_torch_class


@dataclass(frozen=True)
class Hazard:
    """A module of the rewritten model with a known export hazard.

    ``kind``: ``adaptive_pool`` (output size other than 1: exported as a fixed-kernel pool, wrong at other
    input sizes), ``unfold`` (``nn.Unfold``/``F.unfold``: specialised to the export shape),
    ``shape_built_tensor`` (a tensor built in Python from the input's size), ``device_branch``
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


class _Recorder(TorchFunctionMode):
    """Records, per innermost running module, factory calls, functional adaptive pooling/unfold and
    ``is_cuda``/``.cuda()`` uses, during an eager forward."""

    def __init__(self, stack: list[tuple[nn.Module, str, tuple[int, ...]]]):
        super().__init__()
        self.stack = stack
        self.events: list[_Event] = []

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.stack and not is_torch_class(self.stack[-1][0]):
            _, owner, dims = self.stack[-1]
            fname = getattr(func, "__name__", "")
            target = getattr(func, "__self__", None)
            if fname == "__get__" and getattr(target, "__name__", "") == "is_cuda":
                self.events.append(_Event(owner, "device_branch", "is_cuda", (), "reads tensor.is_cuda", dims))
            elif fname == "cuda":
                self.events.append(_Event(owner, "device_branch", "cuda", (), "calls tensor.cuda()", dims))
            elif fname in _FACTORIES:
                sizes = {k: v for k, v in kwargs.items() if k not in ("dtype", "device", "layout", "requires_grad")}
                ints = _ints([a for a in args if not isinstance(a, torch.Tensor)]) + _ints(sizes)
                self.events.append(_Event(owner, "shape_built_tensor", fname, ints, "", dims))
            elif fname in _ADAPTIVE:
                size = args[1] if len(args) > 1 else kwargs.get("output_size")
                if _not_global(size):
                    self.events.append(_Event(owner, "adaptive_pool", fname, (), f"{fname}(output_size={size!r})",
                                              dims))
            elif func is torch.nn.functional.unfold or func is torch.nn.functional.fold:
                self.events.append(_Event(owner, "unfold", fname, (), f"F.{fname}", dims))
        return func(*args, **kwargs)


def _record(model: nn.Module, args: tuple[Any, ...]) -> tuple[list[_Event], Any]:
    names: dict[int, str] = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), n)
    stack: list[tuple[nn.Module, str, tuple[int, ...]]] = []

    def pre(m: nn.Module, a: tuple[Any, ...]) -> None:
        first = next((t for t in tree_flatten(a)[0] if isinstance(t, torch.Tensor)), None)
        stack.append((m, names[id(m)], tuple(first.shape) if first is not None else ()))

    def post(m: nn.Module, a: tuple[Any, ...], out: Any) -> None:
        if stack:
            stack.pop()

    handles = [h for m in model.modules()
               for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post, always_call=True))]
    recorder = _Recorder(stack)
    try:
        with torch.no_grad(), recorder:
            out = model(*clone(args))
    finally:
        for h in handles:
            h.remove()
    return recorder.events, clone(out)


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
    "shape_built_tensor": " in forward, from the input size: built in Python, a constant in the exported graph",
    "device_branch": " in forward: the branch taken at export time is baked in",
}


def scan_hazards(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...]) -> tuple[tuple[Hazard, ...], Any,
                                                                                           tuple[str, ...]]:
    """Known export hazards of ``model`` (run in place, in its current mode), its output on
    ``example_input``, and notes on how the scan went.

    Module hazards are read from the module tree (adaptive pooling sizes, ``nn.Unfold``) and from each
    class's source (``.cuda()``/``is_cuda``, via ``ast``). Python-built tensors are found dynamically: a
    ``TorchFunctionMode`` records every tensor factory call (``torch.linspace``, ``arange``, ``zeros``, ...)
    with the innermost module running it, at the example size and at twice its H and W; a call whose integer
    arguments change with the input size was built from the input's shape. This sees through helper
    functions (the seed's ``position(h, w)``) and needs no tracer that user code might break. When the
    larger run fails, calls whose integer arguments equal a dimension (> 1) of the module's input are
    flagged instead.
    """
    args = as_args(example_input)
    classes: dict[str, str] = {}
    hazards = list(_static_hazards(model, classes))
    notes: list[str] = []
    events, out = _record(model, args)
    larger = _larger(args)
    other: list[_Event] | None = None
    if larger is not None:
        try:
            other, _ = _record(model, larger)
        except Exception as err:  # noqa: BLE001 (the model may accept one size only)
            notes.append(f"hazard scan: the model does not run at twice the example H and W ({type(err).__name__}); "
                         "Python-built tensors were matched against input dimensions instead")
    by_key: dict[tuple[str, str, int], tuple[int, ...]] = {}
    if other is not None:
        counts: dict[tuple[str, str], int] = {}
        for e in other:
            if e.kind == "shape_built_tensor":
                k = counts.get((e.module, e.func), 0)
                counts[(e.module, e.func)] = k + 1
                by_key[(e.module, e.func, k)] = e.ints
    counts = {}
    found: dict[tuple[str, str], list[str]] = {}  # (module, kind) -> details, in call order
    for e in events:
        detail = e.detail
        if e.kind == "shape_built_tensor":
            k = counts.get((e.module, e.func), 0)
            counts[(e.module, e.func)] = k + 1
            if other is not None:
                shape_dependent = by_key.get((e.module, e.func, k)) != e.ints
            else:
                shape_dependent = bool(set(e.ints) & {d for d in e.input_dims if d > 1})
            if not shape_dependent:
                continue
            detail = f"torch.{e.func} with sizes {list(e.ints)}"
        details = found.setdefault((e.module, e.kind), [])
        if detail not in details:
            details.append(detail)
    flagged_in_source = {h.name for h in hazards if h.kind == "device_branch"}
    for (name, kind), details in found.items():
        if kind == "device_branch" and name in flagged_in_source:
            continue
        hazards.append(Hazard(name, classes.get(name, "?"), kind, "; ".join(details) + _CONSEQUENCE[kind]))
    unique = list(dict.fromkeys(hazards))
    return tuple(unique), out, tuple(notes)
