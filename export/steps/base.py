"""What every step shares: the run's ``State``, each step's declared contract (``StepSpec``), and the log of step
records the report and the terminal show.

A step is a function of the ``State`` with a ``StepSpec``: the state fields it reads and the ones it writes. The
fields in ``GIVEN`` are set by the pipeline before the first step (the options, the target, the output paths, the
report every step fills with its own keys, the log); every other field is written by one step and read by later
ones. A step runs on a view of the state that holds it to its spec: reading a field it did not declare, or
writing one, raises ``StepContractError``; ``tests/export/test_steps.py`` checks that every step reads only what
an earlier step of its sequence wrote.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..report import Report, StepRecord

if TYPE_CHECKING:
    from blocks_export.blocks.rewrite import RewriteReport

    from ..adapters import ModelAdapter
    from ..calibration import CalibrationSet
    from ..io import OutputUnit
    from ..load import LoadedModel
    from ..onnx_export import OnnxExport
    from ..options import ExportOptions
    from ..targets import Target
    from ..trt.build import EngineResult
    from ..verify import VerifyResult

SEED = 0  # every verification input is seeded (``inputs.make_input``)
EXTERNAL_DATA_BYTES = 2_000_000_000  # protobuf cannot serialise a message of 2 GiB or more


class Progress:
    """Receives step events; the CLI renders them, the library default ignores them."""

    def start(self, name: str) -> None:  # noqa: B027 (optional hook)
        pass

    def done(self, step: StepRecord) -> None:  # noqa: B027 (optional hook)
        pass

    def message(self, text: str) -> None:  # noqa: B027 (optional hook: progress inside a long step)
        pass

    def count(self, done: int, total: int) -> None:  # noqa: B027 (optional hook: a long step's items done)
        pass


class StepLog:
    """The step records of one run, in order, each timed and announced to ``progress``."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress or Progress()
        self.steps: list[StepRecord] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        s = StepRecord(name)
        self.progress.start(name)
        t0 = time.perf_counter()
        try:
            yield s
        except BaseException:
            s.status, s.seconds = "failed", time.perf_counter() - t0
            self.steps.append(s)
            self.progress.done(s)
            raise
        s.seconds = time.perf_counter() - t0
        self.steps.append(s)
        self.progress.done(s)

    def skip(self, name: str, why: str) -> None:
        s = StepRecord(name, "skipped", 0.0, why)
        self.steps.append(s)
        self.progress.done(s)


@dataclass
class State:
    """What the steps of one run share (module docstring): ``GIVEN`` first, then each step's outputs."""

    source: Path
    options: ExportOptions
    target: Target
    lowering: str  # the DeformConv lowering
    output: Path  # the file asked for (``.onnx`` or ``.engine``)
    onnx_out: Path  # where the ONNX graph goes
    report: Report
    log: StepLog
    unit: OutputUnit | None = None  # where the write step stages the ONNX; the pipeline adds the report, commits
    loaded: LoadedModel | None = None  # load
    adapter: ModelAdapter | None = None  # prepare: the model family's conventions (``adapters``)
    original: Any = None  # prepare: what every graph is verified against (the adapter's form of the input model)
    shape: tuple[int, ...] = ()  # prepare: the export shape [N, C, H, W]
    example: Any = None  # prepare: torch.Tensor at ``shape``
    graph_precision: str = "fp32"  # prepare (fp32 | fp16), int8: what the written graph's metadata says
    calibration: CalibrationSet | None = None  # int8 calibration: calibration and held-out images
    val_data: Any = None  # val data (``val=DATA``): the validation set, read and checked before the export
    model: Any = None  # rewrite: the model to export (the rewritten copy, or ``original``)
    rewrite_report: RewriteReport | None = None  # rewrite
    exported: OnnxExport | None = None  # export
    proto: Any = None  # export, then simplify, fp16, verify, int8: the onnx.ModelProto to write
    unsimplified: Any = None  # simplify: the graph before onnxslim when it changed it (verify's fallback)
    # fp16, int8: the floating-point graph the fp16 / INT8 pass started from (verify's fp16 fallback converts it
    # again with blocks kept fp32; ``val=DATA`` scores it too); None when neither pass ran
    float_graph: Any = None
    verification: VerifyResult | None = None  # verify
    onnx_path: Path | None = None  # write (or the ONNX input): the file an engine is built from
    engine: EngineResult | None = None  # engine
    failed: bool = False  # verify, int8, check, engine parity: the run exits 1 (its files are kept)

    @property
    def precision(self) -> str:
        """The precision verification judges the graph at."""
        return "fp16" if self.options.fp16 else "fp32"


GIVEN = frozenset({"source", "options", "target", "lowering", "output", "onnx_out", "report", "log", "unit",
                   "precision"})
FIELDS = frozenset(State.__dataclass_fields__) | {"precision"}


class StepContractError(AssertionError):
    """A step touched a state field its ``StepSpec`` does not declare: a bug in the step, never bad input."""


@dataclass(frozen=True)
class StepSpec:
    """A step's name (its report record's, for most) and the ``State`` fields it reads and writes."""

    name: str
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = (self.reads | self.writes) - FIELDS
        if unknown:
            raise ValueError(f"step {self.name!r} names no State field {sorted(unknown)}")
        if self.writes & GIVEN:
            raise ValueError(f"step {self.name!r} writes given field(s) {sorted(self.writes & GIVEN)}")


class _View:
    """The state as one step may see it: its declared reads, what it has written itself, and ``GIVEN``."""

    def __init__(self, state: State, spec: StepSpec) -> None:
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_written", set())

    def __getattr__(self, name: str) -> Any:
        spec: StepSpec = object.__getattribute__(self, "_spec")
        if name in GIVEN or name in spec.reads or name in object.__getattribute__(self, "_written"):
            return getattr(object.__getattribute__(self, "_state"), name)
        raise StepContractError(f"step {spec.name!r} reads `{name}`, which its StepSpec does not declare")

    def __setattr__(self, name: str, value: Any) -> None:
        spec: StepSpec = object.__getattribute__(self, "_spec")
        if name not in spec.writes:
            raise StepContractError(f"step {spec.name!r} writes `{name}`, which its StepSpec does not declare")
        object.__getattribute__(self, "_written").add(name)
        setattr(object.__getattribute__(self, "_state"), name, value)


@dataclass(frozen=True)
class Step:
    """One step of a sequence: ``run`` on the state, when ``applies`` (read from ``GIVEN`` fields only)."""

    spec: StepSpec
    run: Callable[[State], None]
    applies: Callable[[State], bool] = field(default=lambda state: True)

    def __call__(self, state: State) -> None:
        if self.applies(state):
            self.run(cast(State, _View(state, self.spec)))


def step(name: str, reads: Iterable[str] = (), writes: Iterable[str] = (),
         applies: Callable[[State], bool] | None = None) -> Callable[[Callable[[State], None]], Step]:
    """Make a function of the state a ``Step`` with its spec."""
    spec = StepSpec(name, frozenset(reads), frozenset(writes))

    def make(fn: Callable[[State], None]) -> Step:
        return Step(spec, fn, applies) if applies is not None else Step(spec, fn)

    return make


def run_steps(steps: Iterable[Step], state: State) -> None:
    for s in steps:
        s(state)


@contextlib.contextmanager
def captured_warnings(report: Report, progress: Progress) -> Iterator[None]:
    """Python warnings of the libraries the steps call (torch.onnx, onnxconverter-common's fp16 conversion, ...)
    go into ``report.library_warnings`` (each distinct one once), not onto stderr; one progress line counts them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # each warning once per place it is raised from
        try:
            yield
        finally:
            seen = dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())[:300]}" for w in caught)
            report.library_warnings += [w for w in seen if w not in report.library_warnings]
            if seen:
                progress.message(f"{len(seen)} warning(s) from libraries, recorded in the report "
                                 "(library_warnings)")


def is_large(model: Any) -> bool:
    """Protobuf cannot serialise a message of 2 GiB or more: such a graph is written with external data and not
    simplified."""
    return sum(len(t.raw_data) for t in model.graph.initializer) >= EXTERNAL_DATA_BYTES
