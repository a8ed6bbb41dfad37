"""Numeric comparison of two sets of outputs, with pass rules per precision.

A ``Comparison`` is a value: per-output metrics, and ``bool(comparison)`` is pass/fail. One line per output:
``PASSED | out0 | rel_l2=… max_abs=… max_rel=… cos=…``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Rule:
    """Pass rule for one precision: relative L2 error and, optionally, cosine similarity bounds."""

    rel_l2: float
    min_cosine: float = 0.0


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

    def line(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        return (f"{status} | {self.name} | rel_l2={self.rel_l2:.3e} max_abs={self.max_abs:.3e} "
                f"max_rel={self.max_rel:.3e} cos={self.cosine:.9f}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "shape": list(self.shape), "max_abs": self.max_abs, "max_rel": self.max_rel,
            "mean_abs": self.mean_abs, "rel_l2": self.rel_l2, "cosine": self.cosine, "finite": self.finite,
            "passed": self.passed,
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


def metrics(name: str, reference: Any, candidate: Any, rule: Rule) -> OutputMetrics:
    """Metrics of ``candidate`` against ``reference`` (both array-like of the same shape), in float64."""
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
        return OutputMetrics(name, ref.shape, 0.0, 0.0, 0.0, 0.0, 1.0, True, True)
    max_abs = float(diff.max())
    scale = float(np.abs(ref).max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    rel_l2 = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else float("inf"))
    if ref_norm > 0 and got_norm > 0:
        cosine = float(np.dot(ref.ravel(), got.ravel()) / (ref_norm * got_norm))
    else:
        cosine = 1.0 if ref_norm == got_norm else 0.0
    passed = finite and rel_l2 <= rule.rel_l2 and cosine >= rule.min_cosine
    return OutputMetrics(name, ref.shape, max_abs, max_rel, float(diff.mean()), rel_l2, cosine, finite, passed)


def compare(reference: Sequence[Any] | Mapping[str, Any], candidate: Sequence[Any] | Mapping[str, Any],
            precision: str = "fp32", label: str = "", rule: Rule | None = None) -> Comparison:
    """Compare outputs pairwise (sequences by position, mappings by name) under ``RULES[precision]``."""
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
    for name, r, c in pairs:
        try:
            outputs.append(metrics(name, r, c, rule))
        except ValueError as e:
            errs.append(str(e))
    return Comparison(precision, tuple(outputs), label, tuple(errs))


def rel_l2(reference: Any, candidate: Any) -> float:
    """Relative L2 error ||candidate - reference|| / ||reference|| in float64."""
    return metrics("x", reference, candidate, RULES["fp32"]).rel_l2
