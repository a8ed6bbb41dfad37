"""Verification: reference outputs (``inputs``) against any runner (``runners``) under the parity rules.

``verify(reference, runner, shapes)`` is the one comparison: an exported graph on onnxruntime or OpenVINO against
the ORIGINAL PyTorch model, a built engine against the same model (or, for an ``.onnx`` input, against
onnxruntime on that ONNX); the result is a ``VerifyResult`` either way. ``verify_graph`` opens the graph on a
runtime first (a graph the runtime cannot load fails every shape), ``verify_on`` runs it on several runtimes and
merges them, verifying a runtime that cannot read the graph (OpenVINO and DeformConv) on the graph's portable
twin, which the caller exports (the export step with the ``portable`` lowering).

Metrics and pass rules are those of ``runtime/parity.py`` (``compare``, ``RULES`` per precision). Against a
float64 reference each output's fp32 floor is PyTorch's own fp32 error against the float64 run; an output passes
when the error is within ``parity.FLOOR_FACTOR`` times its floor or under the rule (the precision's, or the
user's ``rtol``/``atol``), whichever is looser. Where it fails, ``diagnose`` says where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..runtime.parity import FLOOR_FACTOR, RULES, Comparison, Rule, compare
from .diagnose import Divergence, Failure, failure_of
from .errors import RuntimeMissing, one_line
from .inputs import ReferenceSource
from .runners import Runner, check_runtime_names, needs_portable_twin, open_runner, require, version

# How messages name a runtime and what it runs.
_TITLE = {"tensorrt": "TensorRT"}
_WHAT = {"tensorrt": "engine"}


@dataclass(frozen=True)
class Run:
    """One input shape on one runtime and its comparison with the reference (``errors`` when it could not run)."""

    shape: tuple[int, ...]
    comparison: Comparison
    runtime: str = "onnxruntime"

    def as_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "runtime": self.runtime, **self.comparison.as_dict()}


@dataclass(frozen=True)
class Tolerance:
    """The verdict's rules: the rule (the precision's or the user's) against a ``reference`` ("float64": a float64
    run of the model, with each output's fp32 floor and, for fp16, its fp16 floor; "fp32": the fp32 model, the rule
    alone, ``why`` says why)."""

    reference: str
    rule: Rule
    why: str | None = None
    fp16_floor: bool = False  # PyTorch's own fp16 run measured the fp16 floor

    @classmethod
    def of(cls, precision: str, rule: Rule | None, reference: str, *, why: str | None = None,
           fp16_floor: bool = False) -> Tolerance:
        return cls(reference, rule or RULES[precision], why, fp16_floor)

    @property
    def floors(self) -> list[str]:
        """The floors the verdict took: "fp32" (PyTorch's fp32 run vs float64), "fp16" (its fp16 run)."""
        if self.reference != "float64":
            return []
        return ["fp32", "fp16"] if self.fp16_floor else ["fp32"]

    def as_dict(self) -> dict[str, Any]:
        r = self.rule
        return {"reference": self.reference, "rule": r.text(), "rel_l2": None if r.elementwise else r.rel_l2,
                "rtol": r.rtol, "atol": r.atol,
                "floor_factor": FLOOR_FACTOR if self.reference == "float64" else None,
                "reference_why": self.why, "floors": self.floors}

    def text(self) -> str:
        """The rules in one line."""
        if self.reference == "float64":
            own = "fp16 (or fp32) error, the larger floor" if self.fp16_floor else "fp32 error (the fp32 floor)"
            return (f"pass: {self.rule.text()} against a float64 run of the model, or within {FLOOR_FACTOR:g}x "
                    f"PyTorch's own {own}, whichever is looser")
        return f"pass: {self.rule.text()} against the fp32 model"


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
    """A graph's or an engine's parity with a reference: one ``Run`` per shape and runtime; ``bool`` is the
    verdict. ``reference`` names what the runs were compared with (``ReferenceSource.name``)."""

    precision: str
    runs: tuple[Run, ...]
    divergence: Divergence | None = None  # set by the verify step when a graph fails (``diagnose``)
    notes: tuple[str, ...] = ()
    runtimes: tuple[RuntimeRun, ...] = ()  # one entry per runtime (``verify_on``)
    tolerance: Tolerance | None = None
    failure: Failure | None = None  # the runtime's own failure, placed in the graph (``failure_of``)
    reference: str = "pytorch"

    def __bool__(self) -> bool:
        return bool(self.runs) and all(bool(r.comparison) for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": bool(self), "precision": self.precision, "runs": [r.as_dict() for r in self.runs],
                "first_diverging_block": self.divergence.as_dict() if self.divergence is not None else None,
                "notes": list(self.notes), "runtimes": [r.as_dict() for r in self.runtimes],
                "tolerance": self.tolerance.as_dict() if self.tolerance is not None else {},
                "failure": self.failure.as_dict() if self.failure is not None else None}

    def rows(self) -> list[dict[str, Any]]:
        """The runs, each naming its reference: the report's ``engine_parity``."""
        return [{"shape": list(r.shape), "runtime": r.runtime, "reference": self.reference,
                 **r.comparison.as_dict()} for r in self.runs]

    def summary(self) -> dict[str, Any]:
        """Short form for the ONNX metadata: pass/fail and the worst relative L2 per shape."""
        return {"passed": bool(self), "precision": self.precision,
                "runs": [{"shape": list(r.shape), "runtime": r.runtime, "passed": bool(r.comparison),
                          "worst_rel_l2": r.comparison.worst_rel_l2 if r.comparison.outputs else None}
                         for r in self.runs]}



def _failed(precision: str, shape: tuple[int, ...], runtime: str, why: str) -> Run:
    return Run(tuple(shape), Comparison(precision, (), "x".join(map(str, shape)), (why,)), runtime)


def verify(reference: ReferenceSource, runner: Runner, shapes: Sequence[tuple[int, ...]], *,
           precision: str = "fp32", rule: Rule | None = None) -> VerifyResult:
    """Run ``runner`` on ``reference``'s sample at each shape and compare its outputs with the reference's.

    ``rule``: the user's own (``parity.user_rule``), else ``RULES[precision]``; against a float64 reference each
    output's fp32 floor applies too (module docstring). A shape the reference fails at, or the runner fails at,
    is a failed run saying so (the first runner failure placed in its graph: ``failure``). ``RuntimeMissing``
    (the runtime cannot run here at all) goes up as it is."""
    runtime = runner.runtime
    title, what = _TITLE.get(runtime, runtime), _WHAT.get(runtime, "ONNX")
    notes = list(reference.notes)
    runs: list[Run] = []
    failure: Failure | None = None
    basis_why: str | None = None  # why a shape fell back to the fp32 reference
    fp16_measured = False
    for shape in shapes:
        label = "x".join(map(str, shape))
        try:
            sample = reference.sample(tuple(shape))
        except Exception as e:  # the graph accepts this shape (torch.export's ranges) but the model does not
            runs.append(_failed(precision, shape, runtime, f"{reference.title} fails at this shape: {one_line(e)}"))
            continue
        ref = sample.reference
        if ref.why is not None:
            notes.append(f"{label}: parity judged against the fp32 model ({ref.why})")
            basis_why = basis_why or ref.why
        fp16_floors = ref.fp16_floors if precision == "fp16" else None
        if precision == "fp16" and ref.fp64 is not None:
            if fp16_floors is None:
                notes.append(f"{label}: no fp16 floor ({ref.why16 or 'PyTorch did not run the model in fp16'}): "
                             "the fp16 rule alone")
            else:
                fp16_measured = True
        try:
            got = runner.run(dict(zip(runner.input_names, sample.inputs, strict=False)))
        except RuntimeMissing:
            raise
        except Exception as e:
            if failure is None and runner.graph is not None:
                failure = failure_of(e, runner.graph, runtime)
            runs.append(_failed(precision, shape, runtime, f"{title} failed: {one_line(e)}"))
            continue
        outputs = ref.exact
        out_names = runner.output_names
        names = out_names if len(out_names) == len(outputs) else [f"output{i}" for i in range(len(outputs))]
        got_named = {names[i]: np.asarray(g, dtype=np.float32) for i, g in enumerate(got[:len(names)])}
        cmp = compare(dict(zip(names, outputs, strict=False)), got_named, precision=precision, label=label,
                      rule=rule, floors=ref.floors, fp16_floors=fp16_floors)
        if len(got) != len(outputs):
            cmp = Comparison(precision, cmp.outputs, label,
                             (*cmp.errors, f"{len(got)} {what} outputs, {reference.title} returns {len(outputs)}"))
        runs.append(Run(tuple(shape), cmp, runtime))
    basis = "fp32" if basis_why is not None else reference.basis
    tolerance = Tolerance.of(precision, rule, basis, why=basis_why or _basis_why(reference),
                             fp16_floor=fp16_measured)
    return VerifyResult(precision, tuple(runs), notes=tuple(dict.fromkeys(notes)), tolerance=tolerance,
                        failure=failure, reference=reference.name)


def _basis_why(reference: ReferenceSource) -> str | None:
    """Why ``reference`` is judged in fp32 (its first note), None where it runs in float64."""
    if reference.basis == "float64":
        return None
    return reference.notes[0] if reference.notes else f"{reference.title} runs in fp32"



def verify_graph(reference: ReferenceSource, runtime: str, graph: Any, shapes: Sequence[tuple[int, ...]], *,
                 precision: str = "fp32", rule: Rule | None = None) -> VerifyResult:
    """``verify`` with ``graph`` (``ModelProto``, bytes or path) opened on ``runtime``; a graph the runtime cannot
    load fails at every shape, its failure placed in the graph."""
    try:
        runner = open_runner(runtime, graph)
    except RuntimeMissing:
        raise
    except Exception as e:
        why = f"{runtime} cannot load the graph: {one_line(e)}"
        return VerifyResult(precision, tuple(_failed(precision, s, runtime, why) for s in shapes),
                            notes=reference.notes,
                            tolerance=Tolerance.of(precision, rule, reference.basis, why=_basis_why(reference)),
                            failure=failure_of(e, graph, runtime), reference=reference.name)
    return verify(reference, runner, shapes, precision=precision, rule=rule)


def verify_on(runtimes: Sequence[str], reference: ReferenceSource, graph: Any, shapes: Sequence[tuple[int, ...]], *,
              precision: str = "fp32", rule: Rule | None = None,
              portable_twin: Callable[[], Any] | None = None) -> VerifyResult:
    """``verify_graph`` on each runtime in turn; one ``VerifyResult`` holding every runtime's runs.

    A runtime that cannot read ``graph`` (``runners.needs_portable_twin``) verifies ``portable_twin()`` (the same
    model exported with the portable lowering, asked for once, only when needed) and the result says so in its
    notes and in ``runtimes``."""
    runs: list[Run] = []
    notes: list[str] = []
    entries: list[RuntimeRun] = []
    tolerance: Tolerance | None = None
    failure: Failure | None = None
    twin: Any = None
    for runtime in check_runtime_names(runtimes):
        require(runtime)
        ran, why = graph, needs_portable_twin(runtime, graph)
        if why is not None and portable_twin is not None:
            twin = twin if twin is not None else portable_twin()
            ran = twin
        elif why is not None:
            why = why.split(":")[0] + ": no portable twin was available, so it could not verify this graph"
        result = verify_graph(reference, runtime, ran, shapes, precision=precision, rule=rule)
        which = "portable twin" if ran is not graph else "exported"
        runs += result.runs
        notes += [f"{runtime}: {why}"] if why else []
        notes += [n for n in result.notes if n not in notes]
        tolerance = tolerance or result.tolerance
        if failure is None and result.failure is not None:
            failure = replace(result.failure, runtime=runtime, graph=which)
        entries.append(RuntimeRun(runtime, version(runtime), bool(result), which, why))
    return VerifyResult(precision, tuple(runs), notes=tuple(notes), runtimes=tuple(entries), tolerance=tolerance,
                        failure=failure, reference=reference.name)
