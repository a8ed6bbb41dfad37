"""Run a built engine: the engine is checked against its sidecar first (``sidecar.verify_engine``), before
TensorRT deserializes anything. ``runners.EngineRunner`` runs it for the verification layer (engine parity is
``verify.verify`` with that runner).

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


@dataclass
class BoundEngine:
    """A deserialized engine with its execution context, its IO tensors bound in device memory."""

    engine: Any
    context: Any
    outputs: list[str]  # output tensor names, in the engine's order
    errors: list[str]  # what TensorRT's logger said (for the message when a run fails)


def bind_engine(engine_path: Path, feeds: Mapping[str, np.ndarray], memory: DeviceMemory) -> BoundEngine:
    """Deserialize ``engine_path`` (plugins registered) and bind ``feeds`` and empty output buffers in ``memory``;
    TensorRT is loaded by the caller. ``EngineBuildError`` when it cannot be deserialized."""
    import tensorrt as trt

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
    return BoundEngine(engine, context, outputs, errors)


def run_engine(engine_path: Path, feeds: Mapping[str, np.ndarray], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Run a serialized engine once (TensorRT runtime, ``device_memory`` for the IO tensors)."""
    api.load_tensorrt(None)
    import tensorrt as trt

    verify_engine(engine_path, tensorrt_version=str(trt.__version__),
                  compute_capability=api.cuda_device(None).compute_capability, verify=verify)
    memory = device_memory()
    bound = bind_engine(engine_path, feeds, memory)
    if not bound.context.execute_async_v3(memory.stream):
        raise EngineBuildError(f"TensorRT could not run {engine_path}: " + "; ".join(bound.errors))
    memory.synchronize()
    return {n: memory.download(n) for n in bound.outputs}
