"""Run a built engine and compare its outputs with a reference: the engine is checked against its sidecar
first (``sidecar.verify_engine``), before TensorRT deserializes anything.

Needs TensorRT 8.5+ (named IO tensors, ``execute_async_v3``) and device memory for the IO tensors
(``device_memory``: torch CUDA tensors). On this project's CPU-only machines it runs through the test double
(``tests/export/trt_double.py``), whose engine is an onnxruntime stand-in over host memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ...runtime.parity import Comparison, compare
from ..errors import one_line
from . import api
from .api import EngineBuildError, TensorRTUnavailable
from .sidecar import verify_engine

if TYPE_CHECKING:
    import torch


class DeviceMemory(Protocol):
    """Where an engine's IO tensors live: addresses for TensorRT, arrays back for the caller."""

    stream: int  # the CUDA stream handle ``execute_async_v3`` runs on

    def upload(self, name: str, array: np.ndarray) -> int: ...

    def empty(self, name: str, shape: Sequence[int], dtype: np.dtype[Any]) -> int: ...

    def download(self, name: str) -> np.ndarray: ...

    def synchronize(self) -> None: ...


class TorchCuda:
    """``DeviceMemory`` as torch CUDA tensors on GPU 0 and one torch CUDA stream."""

    def __init__(self) -> None:
        import torch

        self._stream = torch.cuda.Stream()
        self.stream = int(self._stream.cuda_stream)
        self.buffers: dict[str, torch.Tensor] = {}

    def upload(self, name: str, array: np.ndarray) -> int:
        import torch

        self.buffers[name] = torch.from_numpy(np.ascontiguousarray(array)).cuda()
        return int(self.buffers[name].data_ptr())

    def empty(self, name: str, shape: Sequence[int], dtype: np.dtype[Any]) -> int:
        import torch

        torch_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        self.buffers[name] = torch.empty(list(shape), dtype=torch_dtype, device="cuda")
        return int(self.buffers[name].data_ptr())

    def download(self, name: str) -> np.ndarray:
        return np.asarray(self.buffers[name].cpu().numpy())

    def synchronize(self) -> None:
        self._stream.synchronize()


def device_memory() -> DeviceMemory:
    """GPU memory for the IO tensors (torch CUDA); ``TensorRTUnavailable`` where torch has no CUDA."""
    try:
        import torch

        usable = bool(torch.cuda.is_available())
    except ImportError:
        usable = False
    if not usable:
        raise TensorRTUnavailable("torch with CUDA is not available here (its tensors hold the engine's inputs "
                                  "and outputs)")
    return TorchCuda()


def run_engine(engine_path: Path, feeds: Mapping[str, np.ndarray], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Run a serialized engine once (TensorRT runtime, ``device_memory`` for the IO tensors)."""
    api.load_tensorrt(None)
    import tensorrt as trt

    verify_engine(engine_path, tensorrt_version=str(trt.__version__),
                  compute_capability=api.cuda_device(None).compute_capability, verify=verify)
    memory = device_memory()
    errors: list[str] = []
    logger = api.logger(errors, [])
    api.init_plugins(logger, errors)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EngineBuildError(f"could not deserialize {engine_path}: " + "; ".join(errors))
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    for name in names:
        if name not in outputs:
            array = np.ascontiguousarray(feeds[name])
            context.set_input_shape(name, tuple(array.shape))
            context.set_tensor_address(name, memory.upload(name, array))
    for name in outputs:
        shape = context.get_tensor_shape(name)
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        context.set_tensor_address(name, memory.empty(name, [shape[i] for i in range(len(shape))], dtype))
    if not context.execute_async_v3(memory.stream):
        raise EngineBuildError(f"TensorRT could not run {engine_path}: " + "; ".join(errors))
    memory.synchronize()
    return {n: memory.download(n) for n in outputs}


def engine_parity(engine_path: Path, feeds: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                  precision: str, *, verify: bool = True) -> Comparison:
    """Engine outputs against ``reference`` outputs (by name) under ``parity.RULES[precision]``; the engine is
    verified against its sidecar first (``verify_engine``)."""
    return compare(dict(reference), run_engine(engine_path, feeds, verify=verify), precision=precision,
                   label="tensorrt")


@dataclass(frozen=True)
class ParityCase:
    """One engine input: its shape, the feeds, and the reference outputs (in the engine's output order)."""

    shape: tuple[int, ...]
    feeds: dict[str, np.ndarray]
    reference: list[np.ndarray]


@dataclass(frozen=True)
class EngineParity:
    """The engine against a reference (``pytorch``: the original model; ``onnxruntime``: the ONNX it was
    built from) at one input shape."""

    shape: tuple[int, ...]
    reference: str
    comparison: Comparison

    def __bool__(self) -> bool:
        return bool(self.comparison)

    def as_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "runtime": "tensorrt", "reference": self.reference,
                **self.comparison.as_dict()}


def parity_cases(engine_path: Path, output_names: Sequence[str], cases: Sequence[ParityCase], precision: str,
                 reference: str) -> list[EngineParity]:
    """Run the engine on each case and compare; a run that fails is a failed row (the error in it). Raises
    ``TensorRTUnavailable`` when this machine cannot run the engine at all."""
    rows = []
    for case in cases:
        label = "x".join(map(str, case.shape))
        try:
            got = run_engine(engine_path, case.feeds)
        except TensorRTUnavailable:
            raise
        except Exception as e:  # refused, not deserialized, not run: a failure of this engine, said in its row
            rows.append(EngineParity(case.shape, reference, Comparison(precision, (), label,
                                                                       (f"TensorRT failed: {one_line(e)}",))))
            continue
        names = list(output_names)
        want = dict(zip(names, case.reference, strict=False))
        cmp = compare(want, {n: np.asarray(got[n], dtype=np.float32) for n in names if n in got},
                      precision=precision, label=label)
        if len(case.reference) != len(names):
            cmp = Comparison(precision, cmp.outputs, label, (*cmp.errors, f"{len(names)} engine outputs, the "
                                                             f"reference has {len(case.reference)}"))
        rows.append(EngineParity(case.shape, reference, cmp))
    return rows
