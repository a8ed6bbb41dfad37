"""Model-level rewriting: find the seed's blocks anywhere in a model and swap each for its export twin.

``rewrite_model(model, example_input)`` works on a deep copy (the input model is never touched):

1. walk the module tree top-down; a module whose class is in the conversion table is a block as it is; any
   other module is offered to the recognisers (``recognize.py``), which read its structure and propose
   reference blocks with its weights; a matched module is not searched further;
2. run one forward of ``example_input`` and record, with forward pre-hooks, the exact inputs every matched
   module receives (every call: a block used twice is checked on both inputs);
3. keep the first candidate reference that equals the foreign module on those inputs, convert it with the
   table, check the twin against the foreign module on the same inputs (fp32 rule of ``export/parity.py``:
   relative L2 <= 1e-5), and only then swap it in. Anything that fails (no candidate matches, the conversion
   raises, the twin differs) leaves the module alone, with the reason in the report;
4. run the rewritten model once more: a swap that stops it from running (a forward that reads a layer
   inside the block) is undone and reported; then report the export hazards that remain (``Hazard``).

Plain attributes that model builders set on their layers (Ultralytics' ``i``/``f``/``type``/``np``) are
copied onto the twin, because such models route tensors by them in ``forward``.

The returned model is in eval mode: the twins compute the reference's eval-mode function.
"""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from blocks_export.export.parity import compare

from . import CONVERSIONS, Conversion, to_export
from .recognize import RECOGNIZERS, NotConvertible, Recognizer

Table = Mapping[type[nn.Module], Conversion]


# --- report ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replacement:
    """One swapped block. ``rel_l2``/``max_rel``/``max_abs``: worst twin-vs-original errors over the checked
    calls (``max_rel`` is max |difference| / max |original|, as in ``export/parity.py``)."""

    name: str
    original_class: str
    recognized_as: str
    twin_class: str
    rel_l2: float
    max_rel: float
    max_abs: float
    calls: int


@dataclass(frozen=True)
class LeftAlone:
    """A module recognised as a block but not swapped, and why."""

    name: str
    original_class: str
    recognized_as: str
    reason: str


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


@dataclass(frozen=True)
class RewriteReport:
    """What ``rewrite_model`` replaced, left alone and flagged. ``model_rel_l2``: relative L2 of the rewritten
    model's outputs against the original's on ``example_input`` (None when the model has no tensor output)."""

    replaced: tuple[Replacement, ...] = ()
    left_alone: tuple[LeftAlone, ...] = ()
    hazards: tuple[Hazard, ...] = ()
    model_rel_l2: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replaced": [asdict(r) for r in self.replaced],
            "left_alone": [asdict(r) for r in self.left_alone],
            "hazards": [asdict(h) for h in self.hazards],
            "model_rel_l2": self.model_rel_l2,
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        out = [f"REPLACED   | {_display(r.name)} | {r.original_class} as {r.recognized_as} -> {r.twin_class} | "
               f"rel_l2={r.rel_l2:.3e} max_rel={r.max_rel:.3e} max_abs={r.max_abs:.3e} calls={r.calls}"
               for r in self.replaced]
        out += [f"LEFT ALONE | {_display(r.name)} | {r.original_class} as {r.recognized_as} | {r.reason}"
                for r in self.left_alone]
        out += [f"HAZARD     | {_display(h.name)} | {h.module_class} | {h.kind}: {h.detail}" for h in self.hazards]
        if self.model_rel_l2 is not None:
            out.append(f"MODEL      | rewritten vs original on the example input: rel_l2={self.model_rel_l2:.3e}")
        out += [f"NOTE       | {n}" for n in self.notes]
        return out


def _display(name: str) -> str:
    return name or "<model>"


# --- finding blocks -------------------------------------------------------------------------------------


@dataclass
class _Match:
    module: nn.Module
    names: list[str]
    label: str
    candidates: tuple[nn.Module, ...] = ()  # the module itself for a table class
    error: str | None = None


_PACKAGE = __name__.rpartition(".")[0].rpartition(".")[0] + "."  # "blocks_export."


def _find_blocks(root: nn.Module, table: Table, recognizers: Mapping[str, Recognizer]) -> list[_Match]:
    matches: dict[int, _Match] = {}

    def visit(module: nn.Module, name: str) -> None:
        if id(module) in matches:  # the same instance under a second name
            matches[id(module)].names.append(name)
            return
        if type(module) in table:
            matches[id(module)] = _Match(module, [name], type(module).__name__, (module,))
            return
        # The package's own classes (twins included) are known through the table only, so that rewriting a
        # rewritten model changes nothing.
        ours = type(module).__module__.startswith(_PACKAGE)
        for label, recognize in () if ours else recognizers.items():
            try:
                candidates = recognize(module)
            except NotConvertible as e:
                matches[id(module)] = _Match(module, [name], label, error=f"cannot be mapped exactly: {e}")
                return
            except Exception as e:  # noqa: BLE001 (a foreign module must never abort the rewrite)
                matches[id(module)] = _Match(module, [name], label,
                                             error=f"recogniser raised {type(e).__name__}: {e}")
                return
            if candidates:
                matches[id(module)] = _Match(module, [name], label, tuple(candidates))
                return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(root, "")
    return list(matches.values())


# --- capturing and checking -----------------------------------------------------------------------------

Call = tuple[tuple[Any, ...], dict[str, Any]]


def _clone(tree: Any) -> Any:
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, tree)


def _as_args(example_input: torch.Tensor | tuple[Any, ...]) -> tuple[Any, ...]:
    if isinstance(example_input, torch.Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    raise ValueError(f"example_input must be a Tensor or a tuple of inputs, got {type(example_input).__name__}")


def _capture(root: nn.Module, modules: list[nn.Module], args: tuple[Any, ...]) -> tuple[dict[int, list[Call]], Any]:
    """Run ``root(*args)`` once; return every call's inputs for each of ``modules`` (cloned before the module
    runs, so later in-place ops cannot change them) and the model's output."""
    calls: dict[int, list[Call]] = {id(m): [] for m in modules}

    def hook(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        calls[id(module)].append((_clone(a), _clone(kw)))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            out = _clone(root(*_clone(args)))
    except Exception as e:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
        raise ValueError(f"the model does not run on example_input {shapes}: {type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
    return calls, out


def _run(module: nn.Module, call: Call) -> Any:
    with torch.no_grad():
        return module(*_clone(call[0]), **_clone(call[1]))


@dataclass(frozen=True)
class _Check:
    passed: bool
    rel_l2: float
    max_rel: float
    max_abs: float
    why: str = ""


def _check(candidate: nn.Module, calls: list[Call], expected: list[Any]) -> _Check:
    """Compare ``candidate`` with the recorded outputs on every call (fp32 rule)."""
    inf = float("inf")
    worst_l2, worst_rel, worst_abs = 0.0, 0.0, 0.0
    for call, want in zip(calls, expected, strict=True):
        try:
            got = _run(candidate, call)
        except Exception as e:  # noqa: BLE001 (a candidate that cannot run is a failed check, not a crash)
            return _Check(False, inf, inf, inf, f"raised {type(e).__name__}: {e}")
        want_leaves, want_spec = tree_flatten(want)
        got_leaves, got_spec = tree_flatten(got)
        if want_spec != got_spec:
            return _Check(False, inf, inf, inf, "returns a different output structure")
        pairs = [(w, g) for w, g in zip(want_leaves, got_leaves, strict=True) if isinstance(w, torch.Tensor)]
        result = compare([w for w, _ in pairs], [g for _, g in pairs], "fp32")
        worst_l2 = max([worst_l2, *(o.rel_l2 for o in result.outputs)])
        worst_rel = max([worst_rel, *(o.max_rel for o in result.outputs)])
        worst_abs = max([worst_abs, *(o.max_abs for o in result.outputs)])
        if not result:
            why = "; ".join(result.errors) or f"rel_l2={worst_l2:.3e} (fp32 rule: <= 1e-5)"
            return _Check(False, worst_l2, worst_rel, worst_abs, why)
    return _Check(True, worst_l2, worst_rel, worst_abs)


def _convert(reference: nn.Module, table: Table) -> nn.Module:
    """``to_export`` for a table block; a composite reference (``nn.Sequential(DCN, BatchNorm2d, act)``) is
    converted part by part."""
    if type(reference) in table:
        return to_export(copy.deepcopy(reference), table)
    composite = copy.deepcopy(reference)
    converted = False
    for name, child in list(composite.named_children()):
        if type(child) in table:
            setattr(composite, name, to_export(child, table))
            converted = True
    if not converted:
        raise TypeError(f"no conversion for {type(reference).__name__} or its children in the table")
    return composite


def _twin_name(twin: nn.Module, reference: nn.Module) -> str:
    if type(twin) is not type(reference):
        return type(twin).__name__
    ref_children = dict(reference.named_children())
    parts = [f"{n}={type(c).__name__}" for n, c in twin.named_children()
             if type(c) is not type(ref_children.get(n))]
    return f"{type(twin).__name__}({', '.join(parts)})"


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _try_swap(match: _Match, calls: list[Call], table: Table) -> tuple[nn.Module | None, LeftAlone | Replacement]:
    cls = type(match.module).__name__
    name = match.names[0]
    if match.error is not None:
        return None, LeftAlone(name, cls, match.label, match.error)
    if not calls:
        return None, LeftAlone(name, cls, match.label,
                               "not called during the forward of the example input, so no swap can be checked")
    try:
        expected = [_run(match.module, c) for c in calls]
    except Exception as e:  # noqa: BLE001
        return None, LeftAlone(name, cls, match.label, f"re-running the module raised {type(e).__name__}: {e}")
    reference, failures = None, []
    for candidate in match.candidates:
        if candidate is match.module:
            reference = candidate
            break
        check = _check(candidate.eval(), calls, expected)
        if check.passed:
            reference = candidate
            break
        failures.append(check)
    if reference is None:
        best = min(failures, key=lambda c: c.rel_l2)
        return None, LeftAlone(
            name, cls, match.label,
            f"has the structure of {match.label} but computes something else on its inputs ({best.why}; "
            f"{len(failures)} candidate mapping(s) tried)")
    try:
        twin = _convert(reference, table)
    except Exception as e:  # noqa: BLE001 (conversions are plug-ins; any failure leaves the block alone)
        return None, LeftAlone(name, cls, match.label, f"conversion failed: {type(e).__name__}: {e}")
    twin.eval()
    check = _check(twin, calls, expected)
    if not check.passed:
        return None, LeftAlone(name, cls, match.label, f"twin {type(twin).__name__} differs: {check.why}")
    return twin, Replacement(name, cls, match.label, _twin_name(twin, reference), check.rel_l2, check.max_rel,
                             check.max_abs, len(calls))


# --- hazards --------------------------------------------------------------------------------------------

_FACTORIES = frozenset({"linspace", "logspace", "arange", "zeros", "ones", "empty", "full", "eye", "rand", "randn",
                        "randint", "tensor", "as_tensor", "new_zeros", "new_ones", "new_full", "new_empty",
                        "new_tensor"})
_ADAPTIVE = frozenset({"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                       "adaptive_max_pool2d", "adaptive_max_pool3d"})
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                     nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


def _is_library_class(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] in ("torch", "torchvision")


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
        if self.stack and not _is_library_class(self.stack[-1][0]):
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
            out = model(*_clone(args))
    finally:
        for h in handles:
            h.remove()
    return recorder.events, _clone(out)


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
        elif not _is_library_class(m):
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
    args = _as_args(example_input)
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


# --- entry points ---------------------------------------------------------------------------------------


def rewrite_model(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...], table: Table = CONVERSIONS,
                  recognizers: Mapping[str, Recognizer] = RECOGNIZERS) -> tuple[nn.Module, RewriteReport]:
    """Swap every block of ``model`` that can be swapped exactly for its export twin.

    ``example_input``: one tensor [N, C, H, W] or a tuple of forward arguments. ``table``: reference class ->
    conversion (``CONVERSIONS``). ``recognizers``: label -> recogniser (``recognize.RECOGNIZERS``).
    Returns a rewritten deep copy of ``model`` (eval mode) and the report; ``model`` itself is not modified.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    args = _as_args(example_input)
    work = copy.deepcopy(model).eval()
    matches = _find_blocks(work, table, recognizers)
    calls, original_out = _capture(work, [m.module for m in matches], args)
    swapped: list[tuple[_Match, Replacement]] = []
    left: list[LeftAlone] = []
    for match in matches:
        twin, entry = _try_swap(match, calls[id(match.module)], table)
        if twin is None:
            assert isinstance(entry, LeftAlone)
            left.append(entry)
            continue
        assert isinstance(entry, Replacement)
        _carry_annotations(match.module, twin)
        work = _place(work, match.names, twin)
        swapped.append((match, entry))
    while True:
        try:
            hazards, rewritten_out, notes = scan_hazards(work, args)
            break
        except Exception as e:
            # Each twin matched its block on the block's own inputs, yet the model may still depend on the
            # block object itself (a forward that reads attributes of its layers). Undo the latest swap.
            if not swapped:
                raise
            match, entry = swapped.pop()
            work = _place(work, match.names, match.module)
            left.append(LeftAlone(entry.name, entry.original_class, entry.recognized_as,
                                  f"the model does not run with the twin in place: {type(e).__name__}: {e}"))
    report = RewriteReport(tuple(e for _, e in swapped), tuple(left), hazards,
                           _model_rel_l2(original_out, rewritten_out), notes)
    return work, report


def _place(root: nn.Module, names: list[str], module: nn.Module) -> nn.Module:
    """Put ``module`` at every qualified name in ``names`` (``""`` is the root); return the (new) root."""
    for name in names:
        if name:
            _set_module(root, name, module)
        else:
            root = module
    return root


_PLAIN = (int, float, str, bool, type(None))


def _carry_annotations(original: nn.Module, twin: nn.Module) -> None:
    """Copy the plain attributes that a framework set on the original block and the twin lacks.

    Model builders annotate their layers and read the annotations in ``forward``: Ultralytics'
    ``parse_model`` sets ``i`` (layer index), ``f`` (from-index), ``type`` and ``np`` on every layer, and its
    ``forward`` routes tensors by ``m.f``. A twin without them would break the model.
    """
    for key, value in vars(original).items():
        if key.startswith("_") or hasattr(twin, key):
            continue
        plain = isinstance(value, _PLAIN) or (isinstance(value, (tuple, list))
                                              and all(isinstance(v, _PLAIN) for v in value))
        if plain:
            setattr(twin, key, copy.deepcopy(value))


def _model_rel_l2(original: Any, rewritten: Any) -> float | None:
    a = [t for t in tree_flatten(original)[0] if isinstance(t, torch.Tensor)]
    b = [t for t in tree_flatten(rewritten)[0] if isinstance(t, torch.Tensor)]
    if not a or len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return None
    return compare(a, b, "fp32").worst_rel_l2


def inspect_model(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...], table: Table = CONVERSIONS,
                  recognizers: Mapping[str, Recognizer] = RECOGNIZERS) -> RewriteReport:
    """Dry run: what ``rewrite_model`` would replace, leave alone and flag. ``model`` is not modified.

    The swaps are checked exactly as in ``rewrite_model`` (a swap that would fail is reported as left alone);
    the hazards are those left in the model that export would see.
    """
    return rewrite_model(model, example_input, table, recognizers)[1]
