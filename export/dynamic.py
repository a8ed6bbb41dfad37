"""Dynamic batch/H/W: which sizes an exported graph may take, and how its dims are named.

Two sources of valid sizes:

- ``probe_ranges``: the ORIGINAL model, run at a few sizes (the smallest H/W it accepts, the step it needs:
  a space-to-depth needs even sizes, five stride-2 stages feeding an upsample + concat need multiples of 32).
  This is what the pipeline records: the export twins are built to accept every size the original accepts,
  and verification runs the graph at the minimum, at a size that is not a multiple of 32, at a non-square
  size and at batch 3.
- ``derive_dynamic_ranges``: ``torch.export``'s shape guards on the traced program (a dim the trace fixes is
  refused here, before any translation).

``name_dims`` renames the exporter's size symbols (``s77``) after the input's axes (batch/height/width), in the
graph inputs, outputs and value infos, as the metadata names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import ExportFailed, UsageError

INPUT_NAME = "images"
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
# Deriving dynamic ranges probes H and W up to max(4 x the traced size, SIZE_PROBE_LIMIT) and the batch up to
# BATCH_PROBE_LIMIT; a range still valid there is recorded as unbounded (as torch.export's own ranges are).
SIZE_PROBE_LIMIT = 256
BATCH_PROBE_LIMIT = 64
# Steps tried when probing the original model: the divisibility CNN trunks need (stride-2 stages, SPD).
PROBE_STEPS = (1, 2, 4, 8, 16, 32, 64)


def _input_sizes(program: Any) -> list[Any]:
    """The sizes of the program's first user input: ints (static) or ``torch.SymInt``s."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return list(node.meta["val"].shape)


def _is_bookkeeping(guard: Any) -> bool:
    """A guard ``a != b`` between two size expressions (neither a constant).

    PyTorch records these when its operator bookkeeping compares two sizes that differ at the traced shape
    (is a reshape a view, are the strides contiguous); where they happen to be equal the ONNX operators
    compute the same values, so they do not bound the valid sizes. ``x != 1`` is kept (PyTorch treats a size
    of 1 apart: broadcasting), and so are all equalities (``H % 2 == 0`` before a space-to-depth) and
    orderings (a reflection pad needs a size larger than the pad). Verification at other shapes checks it.
    """
    import sympy

    return isinstance(guard, sympy.Ne) and not guard.lhs.is_number and not guard.rhs.is_number


def _progression(valid: Callable[[int], bool], size: int, limit: int,
                 steps: list[int]) -> tuple[int, int | None, int]:
    """(min, max or None, step): the longest run ``size + k*step`` of valid sizes, smallest step first.

    A run that stays valid up to ``limit`` is taken as unbounded (max ``None``) and wins at once.
    """
    best = (size, size, steps[0])
    for step in steps:
        lo = size
        while lo - step >= 1 and valid(lo - step):
            lo -= step
        hi = size
        while hi + step <= limit and valid(hi + step):
            hi += step
        if hi + step > limit:
            return lo, None, step
        if (hi - lo) // step > (best[1] - best[0]) // best[2]:
            best = (lo, hi, step)
    return best


def derive_dynamic_ranges(program: Any, traced_shape: tuple[int, ...],
                          batch_max: int | None = None) -> tuple[dict[str, dict[str, int | None]], list[str]]:
    """{axis: {"min", "max", "multiple_of"}} for batch/H/W of ``program``'s input, from its shape guards.

    ``torch.export`` records every condition the trace relied on as a guard over the input sizes (sympy
    relations in the program's ``ShapeEnv``; https://pytorch.org/docs/stable/export.html, "Dynamic
    shapes"). A size is valid where all guards hold (the other axes at ``traced_shape``); the range recorded
    for H and W is the run of valid sizes ``k * multiple_of`` through the traced size with the smallest
    multiple that stays valid up to ``max(4 x size, SIZE_PROBE_LIMIT)``, the batch from 1 (e.g. multiples of 32 for five
    stride-2 stages feeding an upsample + concat). ``UsageError`` for an axis the model fixes.
    """
    import sympy
    import torch
    from torch.export.exported_program import _get_shape_env

    sizes = _input_sizes(program)
    fixed = [a for a in AXIS_NAMES if not isinstance(sizes[a], torch.SymInt)]
    if fixed:
        names = " and ".join(AXIS_NAMES[a] for a in fixed)
        values = ", ".join(str(int(sizes[a])) for a in fixed)
        raise UsageError(f"`dynamic=True`: the {names} of input {INPUT_NAME} cannot be dynamic: the model fixes "
                         f"{'it' if len(fixed) == 1 else 'them'} to {values} (a size used as a Python number or a "
                         "fixed reshape); export without `dynamic=True`")
    # Each axis is k * s for one symbol s (k = 1 unless torch.export already factored a multiple out).
    symbols: dict[int, tuple[Any, int]] = {}
    for a in AXIS_NAMES:
        expr = sizes[a].node.expr
        coeff, rest = expr.as_coeff_Mul()
        if not isinstance(rest, sympy.Symbol) or not coeff.is_Integer:
            raise ExportFailed(f"`dynamic=True`: the {AXIS_NAMES[a]} of input {INPUT_NAME} became {expr} in the "
                               "trace; its valid sizes cannot be derived")
        symbols[a] = (rest, int(coeff))
    tied = [(a, b) for a in symbols for b in symbols if a < b and symbols[a][0] == symbols[b][0]]
    if tied:
        a, b = tied[0]
        raise UsageError(f"`dynamic=True`: the model ties the {AXIS_NAMES[b]} of input {INPUT_NAME} to its "
                         f"{AXIS_NAMES[a]} (they must be equal); export without `dynamic=True`")
    env = _get_shape_env(program.graph_module)
    own = {s for s, _ in symbols.values()}
    guards = list(dict.fromkeys(g.expr for g in (env.guards if env is not None else ())
                                if g.expr.free_symbols <= own and not _is_bookkeeping(g.expr)))
    bounds = {str(k): v for k, v in program.range_constraints.items()}
    traced = {symbols[a][0]: sympy.Integer(traced_shape[a] // symbols[a][1]) for a in symbols}

    def holds(exprs: list[Any], values: dict[int, int]) -> bool:
        """All ``exprs`` true with the axes in ``values`` at those sizes (the others as traced)."""
        sub = {}
        for a, v in values.items():
            sym, k = symbols[a]
            upper = _finite_int(bounds[str(sym)].upper) if str(sym) in bounds else None
            if v % k or (upper is not None and v // k > upper):
                return False
            sub[sym] = sympy.Integer(v // k)
        try:
            return all(bool(g.xreplace(sub)) for g in exprs)
        except TypeError:  # a guard that does not reduce to True/False at these sizes: not proven valid
            return False

    out: dict[str, dict[str, int | None]] = {}
    for a in AXIS_NAMES:
        sym = symbols[a][0]
        # The other axes at their traced sizes once, so that each probe substitutes one symbol.
        others = {s: v for s, v in traced.items() if s != sym}
        exprs = [e for g in guards if sym in g.free_symbols and (e := g.xreplace(others)) is not sympy.true]
        cache: dict[int, bool] = {}

        def valid(v: int, a: int = a, exprs: list[Any] = exprs, cache: dict[int, bool] = cache) -> bool:
            if v not in cache:
                cache[v] = holds(exprs, {a: v})
            return cache[v]

        size = traced_shape[a]
        limit = (batch_max or BATCH_PROBE_LIMIT) if a == 0 else max(4 * size, SIZE_PROBE_LIMIT)
        steps = [1] if a == 0 else [d for d in range(1, size + 1) if size % d == 0]
        lo, hi, step = _progression(valid, size, limit, steps)
        # A bounded run narrower than half the size is the size itself up to rounding (a flatten into a
        # fixed Linear accepts 15 and 16 after a stride-2 convolution): not a dynamic axis.
        if hi is not None and hi - lo < max(1, size // 2):
            span = f"{lo}..{hi}" if hi > lo else str(lo)
            raise UsageError(f"`dynamic=True`: the {AXIS_NAMES[a]} of input {INPUT_NAME} cannot be dynamic: only "
                             f"{span} pass the model's shape guards (a size used as a Python number or a fixed "
                             "reshape); export without `dynamic=True`")
        out[str(a)] = {"min": lo, "max": hi, "multiple_of": step}
    # Each axis was probed with the others at the traced sizes; guards that join axes (H*W >= 2) must also
    # hold where the minima meet.
    lows = {a: int(out[str(a)]["min"] or 1) for a in AXIS_NAMES}
    for _ in range(64):
        if holds(guards, lows):
            break
        for a in (2, 3):
            lows[a] += int(out[str(a)]["multiple_of"] or 1)
    else:
        raise ExportFailed("`dynamic=True`: no combination of the smallest valid batch, height and width passes the "
                           "model's shape guards")
    for a in (2, 3):
        out[str(a)]["min"] = lows[a]
    h, w = out["2"], out["3"]
    note = (f"dynamic sizes from torch.export's shape guards: batch {out['0']['min']}.."
            f"{out['0']['max'] or ''}, height {h['min']}..{h['max'] or ''} step {h['multiple_of']}, "
            f"width {w['min']}..{w['max'] or ''} step {w['multiple_of']}")
    return out, [note]


def _finite_int(value: Any) -> int | None:
    """``int(value)``, or ``None`` for torch's symbolic integer infinities (``int_oo``)."""
    from torch.utils._sympy.numbers import IntInfinity, NegativeIntInfinity

    if isinstance(value, IntInfinity | NegativeIntInfinity):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def dynamic_ranges(program: Any) -> dict[str, dict[str, int | None]]:
    """{axis: {"min", "max", "multiple_of"}} of the first user input of ``program``, from its symbolic shape."""
    import sympy
    import torch

    user_inputs = program.graph_signature.user_inputs
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    ranges = {str(k): v for k, v in program.range_constraints.items()}
    out: dict[str, dict[str, int | None]] = {}
    for axis, size in enumerate(node.meta["val"].shape):
        if not isinstance(size, torch.SymInt):
            continue
        expr = size.node.expr
        coeff, rest = expr.as_coeff_Mul() if isinstance(expr, sympy.Mul) else (sympy.Integer(1), expr)
        vr = ranges.get(str(rest)) or ranges.get(str(expr))
        lo = _finite_int(vr.lower) if vr is not None else None
        hi = _finite_int(vr.upper) if vr is not None else None
        lo = 1 if lo is None else lo
        m = int(coeff)
        if vr is not None and str(rest) in ranges:
            lo, hi = lo * m, (hi * m if hi is not None else None)
        out[str(axis)] = {"min": lo, "max": hi, "multiple_of": m}
    return out


def name_dims(model: Any, input_name: str) -> dict[str, str]:
    """Rename ``input_name``'s symbolic dims after their axes (``AXIS_NAMES``) everywhere in ``model``'s graph
    (inputs, outputs, value infos; inside expressions such as ``((s53 - 1)//2) + 1`` too), in place.

    Returns {old symbol: new name}; a symbol already named, or one the axes share, is left as it is.
    """
    inp = next((v for v in model.graph.input if v.name == input_name), None)
    if inp is None:
        return {}
    dims = inp.type.tensor_type.shape.dim
    rename = {d.dim_param: AXIS_NAMES[a] for a, d in enumerate(dims)
              if a in AXIS_NAMES and d.dim_param and re.fullmatch(r"[A-Za-z_]\w*", d.dim_param)}
    if len(set(rename)) != len(set(rename.values())) or not rename:
        return {}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b")
    for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if not v.type.HasField("tensor_type"):
            continue
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: rename[m.group(1)], d.dim_param)
    return rename


def probe_ranges(model: Any, shape: tuple[int, ...], runs: Callable[[tuple[int, ...]], bool] | None = None,
                 batch_max: int | None = None) -> dict[str, dict[str, int | None]]:
    """{axis: {"min", "max", "multiple_of"}} for batch/H/W, from what the ORIGINAL ``model`` runs at.

    ``shape`` [N, C, H, W] is a size the model runs at. Per spatial axis (the other at its ``shape`` size):
    the step is the smallest of ``PROBE_STEPS`` dividing the size with which the model also runs one and
    two steps above it, the minimum the smallest multiple of the step it runs at. ``UsageError`` when no step works: the model fixes that size (a flatten into a ``Linear``).
    The batch goes from 1, unbounded (or ``batch_max``); a model traced at batch 1 must also run at batch 2
    (``UsageError`` otherwise: it fixes the batch). ``runs(shape)`` defaults to one forward pass in
    ``torch.no_grad`` that does not raise; a model that runs but computes something else at a size is for
    verification to catch.
    """
    if runs is None:
        runs = _forward_runs(model)
    n, c, h, w = shape
    out: dict[str, dict[str, int | None]] = {"0": {"min": 1, "max": batch_max, "multiple_of": 1}}
    for a, size in ((2, h), (3, w)):
        def at(v: int, a: int = a) -> tuple[int, ...]:
            s = [1, c, h, w]
            s[a] = v
            return tuple(s)

        steps = [st for st in PROBE_STEPS if size % st == 0]
        step = next((st for st in steps if runs(at(size + st)) and runs(at(size + 2 * st))), None)
        if step is None:
            raise UsageError(f"`dynamic=True`: the {AXIS_NAMES[a]} of input {INPUT_NAME} cannot be dynamic: the model "
                             f"runs at {size} but at no larger size tried (it fixes the size, e.g. a flatten "
                             "into a Linear); export without `dynamic=True`")
        # Smallest multiple it runs at, from below: small sizes are the cheap probes.
        lo = next(k * step for k in range(1, size // step + 1) if k * step == size or runs(at(k * step)))
        out[str(a)] = {"min": lo, "max": None, "multiple_of": step}
    if n == 1 and batch_max != 1 and not runs((2, c, h, w)):
        raise UsageError(f"`dynamic=True`: the batch of input {INPUT_NAME} cannot be dynamic: the model runs at batch "
                         "1 but not at batch 2 (it fixes the batch, e.g. a reshape to 1); export without "
                         "`dynamic=True`")
    return out


def probe_note(ranges: dict[str, dict[str, int | None]]) -> str:
    """One line for the report: the recorded ranges and where they come from."""
    b, h, w = ranges["0"], ranges["2"], ranges["3"]
    return (f"dynamic sizes probed on the original model: batch {b['min']}..{b['max'] or ''}, height "
            f"{h['min']}.. step {h['multiple_of']}, width {w['min']}.. step {w['multiple_of']}")


def _forward_runs(model: Any) -> Callable[[tuple[int, ...]], bool]:
    import torch

    from .inputs import make_input

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32) \
        if isinstance(model, torch.nn.Module) else torch.float32
    cache: dict[tuple[int, ...], bool] = {}

    def runs(shape: tuple[int, ...]) -> bool:
        if shape not in cache:
            try:
                with torch.no_grad():
                    model(make_input(shape, 0).to(dtype))
                cache[shape] = True
            except Exception:  # any failure at this size: the size is not valid for the model
                cache[shape] = False
        return cache[shape]

    return runs
