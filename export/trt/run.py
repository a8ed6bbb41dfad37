"""Run a built engine once and compare its outputs: the engine is checked against its sidecar first
(``sidecar.verify_engine``), before TensorRT deserializes anything.

Needs TensorRT 8.5+ (named IO tensors, ``execute_async_v3``) and torch with CUDA (its tensors are the device
buffers); on this project's CPU-only machines it runs through the test double only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import api
from .api import EngineBuildError
from .sidecar import verify_engine

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ...runtime.parity import Comparison


def run_engine(engine_path: Path, feeds: Mapping[str, np.ndarray], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Run a serialized engine once on GPU 0 (TensorRT runtime, torch CUDA tensors as buffers)."""
    import numpy as np
    import torch

    api.load_tensorrt(None)
    import tensorrt as trt

    verify_engine(engine_path, tensorrt_version=str(trt.__version__),
                  compute_capability=api.cuda_device(None).compute_capability, verify=verify)
    errors: list[str] = []
    logger = api.logger(errors, [])
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EngineBuildError(f"could not deserialize {engine_path}: " + "; ".join(errors))
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    buffers: dict[str, torch.Tensor] = {}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            buffers[name] = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            context.set_input_shape(name, tuple(buffers[name].shape))
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            shape = context.get_tensor_shape(name)
            buffers[name] = torch.empty([shape[i] for i in range(len(shape))], dtype=dtype, device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    if not context.execute_async_v3(stream.cuda_stream):
        raise EngineBuildError(f"TensorRT could not run {engine_path}: " + "; ".join(errors))
    stream.synchronize()
    return {n: buffers[n].cpu().numpy() for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}


def engine_parity(engine_path: Path, feeds: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                  precision: str, *, verify: bool = True) -> Comparison:
    """Engine outputs against ``reference`` outputs (by name) under ``parity.RULES[precision]``; the engine is
    verified against its sidecar first (``verify_engine``)."""
    from ...runtime.parity import compare

    return compare(dict(reference), run_engine(engine_path, feeds, verify=verify), precision=precision,
                   label="tensorrt")
