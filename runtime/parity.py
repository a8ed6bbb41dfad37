"""Numeric comparison of two sets of outputs, with pass rules per precision.

A ``Comparison`` is a value: per-output metrics, and ``bool(comparison)`` is pass/fail. One line per output:
``PASSED | out0 | rel_l2=… max_abs=… max_rel=… cos=…``.

Two ways to pass, whichever is looser:

- the rule of the precision (``RULES``), or the user's own ``Rule(rtol=…, atol=…)`` (elementwise, numpy's
  ``allclose`` definition ``|got - ref| <= atol + rtol * |ref|``);
- the model's own noise: given ``floor``, the relative L2 error of PyTorch's own fp32 run against a float64 run
  of the same model, an output passes when its error is at most ``FLOOR_FACTOR * floor``. A model with large
  BatchNorm gains amplifies fp32 rounding; its exported graph cannot be closer to the truth than PyTorch is.
  An fp16 graph has an fp16 floor too (``fp16_floor``: PyTorch's own half-precision run against the same float64
  run); the larger of the two floors applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Rule:
    """Pass rule for one precision: relative L2 error and, optionally, cosine similarity bounds; or, when
    ``rtol``/``atol`` is set, an elementwise ``|got - ref| <= atol + rtol * |ref|`` (a user's own tolerance)."""

    rel_l2: float
    min_cosine: float = 0.0
    rtol: float | None = None
    atol: float | None = None

    @property
    def elementwise(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def text(self) -> str:
        if self.elementwise:
            return f"|d| <= {self.atol or 0.0:.1e} + {self.rtol or 0.0:.1e}*|ref|"
        return f"rel_l2 <= {self.rel_l2:.1e}"


def user_rule(precision: str, rtol: float | None, atol: float | None) -> Rule:
    """``RULES[precision]``, or the user's elementwise tolerance when ``rtol`` or ``atol`` is given."""
    if rtol is None and atol is None:
        return RULES[precision]
    return Rule(rel_l2=RULES[precision].rel_l2, min_cosine=0.0, rtol=rtol or 0.0, atol=atol or 0.0)


# One table of pass rules per precision. fp32: exact rewrites, only reassociation noise is allowed.
# fp16: mixed-precision graphs (fp32 softmax/normalisation), ~10 bits of mantissa through a deep graph.
RULES: dict[str, Rule] = {
    "fp64": Rule(rel_l2=1e-9, min_cosine=1.0 - 1e-12),
    "fp32": Rule(rel_l2=1e-5, min_cosine=1.0 - 1e-8),
    "fp16": Rule(rel_l2=1e-2, min_cosine=0.999),
    # int8: explicit Q/DQ graphs (per-channel int8 weights, per-tensor int8 activations, the blocks' sensitive
    # parts floating point), verified on held-out images, not on random inputs (which calibration never saw).
    "int8": Rule(rel_l2=5e-2, min_cosine=0.995),
}

#: "A small factor of the model's own noise": the exported graph may be this many times further from the float64
#: truth than PyTorch's own fp32 run is (different kernels, different summation order, same precision).
FLOOR_FACTOR = 4.0


@dataclass(frozen=True)
class OutputMetrics:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    mean_abs: float
    rel_l2: float
    cosine: float
    finite: bool
    passed: bool
    floor: float | None = None  # PyTorch's own fp32 rel L2 against float64 (None: no float64 reference)
    rule_passed: bool | None = None  # under the rule (precision's or user's)
    floor_passed: bool | None = None  # within FLOOR_FACTOR x the larger floor
    fp16_floor: float | None = None  # PyTorch's own fp16 rel L2 against float64 (fp16 graphs; None: not measured)

    @property
    def floor_limit(self) -> float | None:
        floors = [f for f in (self.floor, self.fp16_floor) if f is not None and math.isfinite(f)]
        return FLOOR_FACTOR * max(floors) if floors else None

    def line(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        floor = f" floor={self.floor:.3e}" if self.floor is not None else ""
        if self.fp16_floor is not None:
            floor += f" fp16_floor={self.fp16_floor:.3e}"
        return (f"{status} | {self.name} | rel_l2={self.rel_l2:.3e} max_abs={self.max_abs:.3e} "
                f"max_rel={self.max_rel:.3e} cos={self.cosine:.9f}{floor}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "shape": list(self.shape), "max_abs": self.max_abs, "max_rel": self.max_rel,
            "mean_abs": self.mean_abs, "rel_l2": self.rel_l2, "cosine": self.cosine, "finite": self.finite,
            "passed": self.passed, "rule_passed": self.rule_passed, "fp32_floor": self.floor,
            "fp16_floor": self.fp16_floor, "floor_limit": self.floor_limit, "floor_passed": self.floor_passed,
        }


@dataclass(frozen=True)
class Comparison:
    precision: str
    outputs: tuple[OutputMetrics, ...]
    label: str = ""
    errors: tuple[str, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return not self.errors and all(o.passed for o in self.outputs)

    @property
    def worst_rel_l2(self) -> float:
        return max((o.rel_l2 for o in self.outputs), default=float("inf"))

    def lines(self) -> list[str]:
        return [*(f"FAILED | {e}" for e in self.errors), *(o.line() for o in self.outputs)]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "precision": self.precision, "passed": bool(self),
                "errors": list(self.errors), "outputs": [o.as_dict() for o in self.outputs]}


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def metrics(name: str, reference: Any, candidate: Any, rule: Rule, floor: float | None = None,
            fp16_floor: float | None = None) -> OutputMetrics:
    """Metrics of ``candidate`` against ``reference`` (both array-like of the same shape), in float64.

    ``floor``: the model's own fp32 noise for this output (see the module docstring), or None; ``fp16_floor``:
    its own fp16 noise (fp16 graphs), or None. The larger one applies."""
    ref = _to_numpy(reference).astype(np.float64)
    got = _to_numpy(candidate).astype(np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"output {name!r}: shape {got.shape} differs from the reference shape {ref.shape}")
    finite = bool(np.isfinite(got).all() and np.isfinite(ref).all())
    diff = np.abs(ref - got)
    ref_norm = float(np.linalg.norm(ref))
    got_norm = float(np.linalg.norm(got))
    diff_norm = float(np.linalg.norm(diff))
    if ref.size == 0:
        return OutputMetrics(name, ref.shape, 0.0, 0.0, 0.0, 0.0, 1.0, True, True, floor, True,
                             None if floor is None and fp16_floor is None else True, fp16_floor)
    max_abs = float(diff.max())
    scale = float(np.abs(ref).max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    rel_l2 = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else float("inf"))
    if ref_norm > 0 and got_norm > 0:
        cosine = float(np.dot(ref.ravel(), got.ravel()) / (ref_norm * got_norm))
    else:
        cosine = 1.0 if ref_norm == got_norm else 0.0
    if rule.elementwise:
        rule_passed = finite and bool(np.all(diff <= (rule.atol or 0.0) + (rule.rtol or 0.0) * np.abs(ref)))
    else:
        rule_passed = finite and rel_l2 <= rule.rel_l2 and cosine >= rule.min_cosine
    floors = [f for f in (floor, fp16_floor) if f is not None and math.isfinite(f)]
    floor_passed = finite and rel_l2 <= FLOOR_FACTOR * max(floors) if floors else None
    return OutputMetrics(name, ref.shape, max_abs, max_rel, float(diff.mean()), rel_l2, cosine, finite,
                         rule_passed or bool(floor_passed), floor, rule_passed, floor_passed, fp16_floor)


def compare(reference: Sequence[Any] | Mapping[str, Any], candidate: Sequence[Any] | Mapping[str, Any],
            precision: str = "fp32", label: str = "", rule: Rule | None = None,
            floors: Sequence[float | None] | None = None,
            fp16_floors: Sequence[float | None] | None = None) -> Comparison:
    """Compare outputs pairwise (sequences by position, mappings by name) under ``RULES[precision]`` (or
    ``rule``); ``floors``: the model's own fp32 noise per reference output, in order, and ``fp16_floors`` its
    fp16 noise (see ``metrics``)."""
    if rule is None:
        if precision not in RULES:
            raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(RULES)}")
        rule = RULES[precision]
    if isinstance(reference, Mapping) != isinstance(candidate, Mapping):
        raise TypeError("compare: reference and candidate must both be sequences or both be mappings")
    if isinstance(reference, Mapping):
        assert isinstance(candidate, Mapping)
        missing = [k for k in reference if k not in candidate]
        pairs = [(k, reference[k], candidate[k]) for k in reference if k in candidate]
        errors = tuple(f"output {k!r} is missing" for k in missing)
    else:
        ref_list, cand_list = list(reference), list(candidate)
        errors = ()
        if len(ref_list) != len(cand_list):
            errors = (f"{len(cand_list)} outputs, the reference has {len(ref_list)}",)
        # Non-strict on purpose: a count mismatch is reported above, the common outputs are still compared.
        pairs = [(f"out{i}", r, c) for i, (r, c) in enumerate(zip(ref_list, cand_list))]
    outputs: list[OutputMetrics] = []
    errs = list(errors)
    order = list(reference)
    for k, (name, r, c) in enumerate(pairs):
        i = order.index(name) if isinstance(reference, Mapping) else k
        floor = floors[i] if floors is not None and i < len(floors) else None
        floor16 = fp16_floors[i] if fp16_floors is not None and i < len(fp16_floors) else None
        try:
            outputs.append(metrics(name, r, c, rule, floor, floor16))
        except ValueError as e:
            errs.append(str(e))
    return Comparison(precision, tuple(outputs), label, tuple(errs))


def rel_l2(reference: Any, candidate: Any) -> float:
    """Relative L2 error ||candidate - reference|| / ||reference|| in float64."""
    return metrics("x", reference, candidate, RULES["fp32"]).rel_l2
