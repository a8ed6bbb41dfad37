"""Verification inputs and the reference outputs a graph or an engine is judged against.

A reference source turns an input shape into a ``Sample``: the seeded input (as the runtime is fed it) and the
reference outputs for it.

- ``ModelReference``: the ORIGINAL PyTorch model (before any rewrite), run in float64 where a float64 copy of it
  runs (a deep copy, ``.double()``, run with float64 as torch's default dtype so tensors built while it runs are
  float64 too), with each output's fp32 floor (PyTorch's own fp32 error against that run); else its fp32 run,
  said in ``notes``.
- ``GraphReference``: onnxruntime CPU on an ONNX file (an ``.onnx`` input's engine is compared with it); numpy
  inputs, so nothing here imports torch on that path.

Inputs are image-like, in [0, 1), deterministic per (seed, shape). ``verification_shapes`` chooses the shapes a
graph is verified at from its dynamic ranges. This module imports no other module of the package but ``errors``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..runtime.parity import rel_l2
from .errors import one_line

SEED = 0


def make_input(shape: tuple[int, ...], seed: int = SEED) -> Any:
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


@contextlib.contextmanager
def float64_default() -> Iterator[None]:
    """``torch.set_default_dtype(torch.float64)`` for the block, restored after (on error too): code that builds
    tensors in the default dtype while it runs (``torch.linspace`` position grids, ``torch.zeros`` caches) then
    builds them in float64, as a float64 run of the model needs."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _cast_plain_tensors(model: Any) -> None:
    """Cast to float64 the floating tensors a module keeps as plain attributes (not parameters or buffers, which
    ``.double()`` casts): grids and caches set in ``__init__`` or an earlier forward."""
    import torch

    for module in model.modules():
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not key.startswith("_"):
                setattr(module, key, value.double())


def _cast_copy(model: Any, cast: Callable[[Any], Any]) -> tuple[Any | None, str | None]:
    """``(cast(a deep copy of model), None)``, or ``(None, why not)`` (a TorchScript/torch.export input, a model
    that cannot be copied or cast)."""
    import torch

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None, "the input is not a PyTorch module"
    try:
        return cast(copy.deepcopy(model)), None
    except Exception as e:
        return None, one_line(e)


def float64_copy(model: Any) -> tuple[Any | None, str | None]:
    """``(a float64 deep copy of model, None)``, or ``(None, why not)``. Parameters, buffers and plain tensor
    attributes are cast; the copy is run under ``float64_default`` (``torch_outputs64``)."""
    def cast(copied: Any) -> Any:
        copied = copied.double()
        _cast_plain_tensors(copied)
        return copied

    return _cast_copy(model, cast)


def torch_outputs64(model64: Any, x: Any) -> list[np.ndarray]:
    """Outputs of the float64 copy at ``x`` (cast to float64), as float64 arrays in pytree order."""
    import torch
    import torch.utils._pytree as pytree

    with torch.no_grad(), float64_default():
        out = model64(x.double())
    return [t.detach().double().cpu().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def half_copy(model: Any) -> tuple[Any | None, str | None]:
    """``(an fp16 deep copy of model, None)`` for PyTorch's own half-precision run, or ``(None, why not)``."""
    return _cast_copy(model, lambda copied: copied.half())


def torch_outputs16(model16: Any, x: Any) -> list[np.ndarray]:
    """Outputs of the fp16 copy at ``x`` rounded to fp16, as float64 arrays in pytree order. Where a tensor the
    model builds while it runs meets the half weights in an op without a half/float promotion, the run goes on
    under CPU autocast to fp16 (convolutions and matmuls in fp16, as a mixed-precision graph runs them)."""
    import torch
    import torch.utils._pytree as pytree

    with torch.no_grad():
        try:
            out = model16(x.half())
        except RuntimeError:
            with torch.autocast("cpu", dtype=torch.float16):
                out = model16.float()(x.half().float())
            model16.half()
    return [t.detach().double().cpu().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@dataclass(frozen=True)
class Reference:
    """Reference outputs at one input: fp32, and float64 when a float64 run exists (``exact`` then holds those,
    and ``floors`` each output's fp32 error against them); ``why`` says why a float64 run is missing. ``fp16``:
    PyTorch's own fp16 run where one was asked for (fp16 graphs): ``fp16_floors`` its error against float64;
    ``why16`` why it is missing."""

    fp32: list[np.ndarray]
    fp64: list[np.ndarray] | None = None
    why: str | None = None
    fp16: list[np.ndarray] | None = None
    why16: str | None = None

    @classmethod
    def of_model(cls, model: Any, model64: Any | None, x: Any, model16: Any | None = None) -> Reference:
        """``model`` at ``x``, and its float64 copy ``model64`` (None: none) where that runs; its fp16 copy
        ``model16`` too when given (the fp16 floor)."""
        fp32 = torch_outputs(model, x)
        if model64 is None:
            return cls(fp32)
        try:
            out64 = torch_outputs64(model64, x)
        except Exception as e:
            return cls(fp32, None, f"its float64 copy fails: {one_line(e)}")
        if len(out64) != len(fp32) or any(a.shape != b.shape for a, b in zip(out64, fp32, strict=True)):
            return cls(fp32, None, "its float64 copy returns other outputs")
        if model16 is None:
            return cls(fp32, out64)
        try:
            out16: list[np.ndarray] | None = torch_outputs16(model16, x)
            why16 = None
        except Exception as e:
            out16, why16 = None, f"PyTorch's own fp16 run fails: {one_line(e)}"
        if out16 is not None and [a.shape for a in out16] != [a.shape for a in out64]:
            out16, why16 = None, "PyTorch's own fp16 run returns other outputs"
        return cls(fp32, out64, None, out16, why16)

    @property
    def exact(self) -> list[np.ndarray]:
        return self.fp64 if self.fp64 is not None else self.fp32

    @property
    def floors(self) -> list[float | None] | None:
        if self.fp64 is None:
            return None
        return [rel_l2(a, b) for a, b in zip(self.fp64, self.fp32, strict=True)]

    @property
    def fp16_floors(self) -> list[float | None] | None:
        if self.fp64 is None or self.fp16 is None:
            return None
        return [rel_l2(a, b) for a, b in zip(self.fp64, self.fp16, strict=True)]


@dataclass(frozen=True)
class Sample:
    """One verification input (the arrays a runtime is fed, in its input order) and the reference outputs."""

    shape: tuple[int, ...]
    inputs: tuple[np.ndarray, ...]
    reference: Reference


class ReferenceSource(Protocol):
    """What a graph or engine is compared with."""

    @property
    def name(self) -> str: ...  # "pytorch" | "onnxruntime": the report's ``reference``

    @property
    def title(self) -> str: ...  # in messages: "the PyTorch model"

    @property
    def basis(self) -> str: ...  # "float64" | "fp32": what the verdict's rules are judged against

    @property
    def notes(self) -> tuple[str, ...]: ...

    def sample(self, shape: tuple[int, ...]) -> Sample: ...


class ModelReference:
    """The original PyTorch model (module docstring). ``fp16_io``: the input is rounded to fp16 first, so the
    reference sees exactly the values a graph with fp16 inputs receives (fed as fp16)."""

    name = "pytorch"
    title = "the PyTorch model"

    def __init__(self, model: Any, *, float64: bool = True, fp16_io: bool = False, fp16_floor: bool = False,
                 seed: int = SEED) -> None:
        self.model, self.fp16_io, self.seed = model, fp16_io, seed
        self.model64, why = float64_copy(model) if float64 else (None, "float64 reference not asked for")
        self.model16 = half_copy(model)[0] if fp16_floor and self.model64 is not None else None
        self.basis = "float64" if self.model64 is not None else "fp32"
        self.notes: tuple[str, ...] = () if self.model64 is not None else \
            (f"parity judged against the fp32 model (no float64 copy: {why})",)
        self._samples: dict[tuple[int, ...], Sample] = {}  # each shape runs once, whatever the runtimes

    def sample(self, shape: tuple[int, ...]) -> Sample:
        shape = tuple(shape)
        if shape not in self._samples:
            x = make_input(shape, self.seed)
            if self.fp16_io:
                x = x.half().float()
            feed = x.numpy().astype(np.float16 if self.fp16_io else np.float32)
            self._samples[shape] = Sample(shape, (feed,), Reference.of_model(self.model, self.model64, x,
                                                                                     self.model16))
        return self._samples[shape]


class GraphReference:
    """onnxruntime CPU on the ONNX file ``path`` (plugin nodes included). ``inputs``: (name, numpy dtype, shape)
    of every graph input in order; a sample's shape replaces the first one's, the others keep theirs."""

    name = "onnxruntime"
    title = "onnxruntime on the ONNX"
    basis = "fp32"
    notes: tuple[str, ...] = ()

    def __init__(self, path: Path, inputs: Sequence[tuple[str, str, Sequence[int]]], *, seed: int = SEED) -> None:
        self.path, self.inputs, self.seed = Path(path), list(inputs), seed

    def sample(self, shape: tuple[int, ...]) -> Sample:
        from blocks_export.plugins.ort_cpu import cpu_session

        rng = np.random.default_rng(self.seed)
        arrays = tuple(rng.random(tuple(shape) if i == 0 else tuple(s)).astype(dtype)
                       for i, (_, dtype, s) in enumerate(self.inputs))
        feeds = {name: a for (name, _, _), a in zip(self.inputs, arrays, strict=True)}
        outputs = [np.asarray(o) for o in cpu_session(str(self.path)).run(None, feeds)]
        return Sample(tuple(shape), arrays, Reference(outputs))


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
