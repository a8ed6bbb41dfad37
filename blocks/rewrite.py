"""Model-level rewriting: find the seed's blocks anywhere in a model and swap each for its export twin.

``rewrite_model(model, example_input)`` works on a deep copy (the input model is never touched):

1. walk the module tree top-down; a module whose class is in the conversion table is a block as it is; any
   other module is offered to the recognisers (each block file's ``recognize``, in ``table.BLOCKS`` order), which read its structure and propose
   reference blocks with its weights; a matched module is not searched further;
2. run one forward of ``example_input`` and record, with forward pre-hooks, the exact inputs every matched
   module receives (every call: a block used twice is checked on both inputs);
3. keep the first candidate reference that equals the foreign module on those inputs, convert it with the
   table, check the twin against the foreign module on the same inputs (fp32 rule of ``runtime/parity.py``:
   relative L2 <= 1e-5), and only then swap it in. Anything that fails (no candidate matches, the conversion
   raises, the twin differs) leaves the module alone, with the reason in the report;
4. run the rewritten model once more: a swap that stops it from running (a forward that reads a layer
   inside the block) is undone and reported; then report the export hazards that remain (``hazards.py``).

Plain attributes that model builders set on their layers (Ultralytics' ``i``/``f``/``type``/``np``) are
copied onto the twin, because such models route tensors by them in ``forward``.

The returned model is in eval mode: the twins compute the reference's eval-mode function.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..runtime.parity import compare
from ._match import NotConvertible
from ._spec import Conversion, Recognizer
from .hazards import Hazard, as_args, clone, scan_hazards
from .table import CONVERSIONS, RECOGNIZERS, to_export

Table = Mapping[type[nn.Module], Conversion]


# --- report ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replacement:
    """One swapped block. ``rel_l2``/``max_rel``/``max_abs``: worst twin-vs-original errors over the checked
    calls (``max_rel`` is max |difference| / max |original|, as in ``runtime/parity.py``)."""

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

    def line(self) -> str:
        """One terminal line: which module, what it was taken for, why it stays."""
        return f"LEFT ALONE | {_display(self.name)} | {self.original_class} as {self.recognized_as} | {self.reason}"


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
        out += [r.line() for r in self.left_alone]
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


def _capture(root: nn.Module, modules: list[nn.Module], args: tuple[Any, ...]) -> tuple[dict[int, list[Call]], Any]:
    """Run ``root(*args)`` once; return every call's inputs for each of ``modules`` (cloned before the module
    runs, so later in-place ops cannot change them) and the model's output."""
    calls: dict[int, list[Call]] = {id(m): [] for m in modules}

    def hook(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        calls[id(module)].append((clone(a), clone(kw)))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            out = clone(root(*clone(args)))
    except Exception as e:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
        raise ValueError(f"the model does not run on example_input {shapes}: {type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
    return calls, out


def _run(module: nn.Module, call: Call) -> Any:
    with torch.no_grad():
        return module(*clone(call[0]), **clone(call[1]))


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


# --- entry points ---------------------------------------------------------------------------------------


def rewrite_model(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...], table: Table = CONVERSIONS,
                  recognizers: Mapping[str, Recognizer] = RECOGNIZERS) -> tuple[nn.Module, RewriteReport]:
    """Swap every block of ``model`` that can be swapped exactly for its export twin.

    ``example_input``: one tensor [N, C, H, W] or a tuple of forward arguments. ``table``: reference class ->
    conversion (``CONVERSIONS``). ``recognizers``: label -> recogniser (``RECOGNIZERS``).
    Returns a rewritten deep copy of ``model`` (eval mode) and the report; ``model`` itself is not modified.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    args = as_args(example_input)
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
