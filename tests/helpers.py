"""Shared test helpers: ONNX export of a module and running it in onnxruntime (CPU, one thread)."""

from __future__ import annotations

import copy
import io

import numpy as np
import onnxruntime as ort
import torch

from blocks_export.blocks import onnx_translations


def ort_session(model_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def export_dynamic(module: torch.nn.Module, example: torch.Tensor, opset: int = 18, dynamo: bool = True) -> bytes:
    """Export ``module`` with dynamic batch, H and W; return the serialized ONNX model."""
    module = module.eval()
    if dynamo:
        b, h, w = torch.export.Dim("batch", min=1), torch.export.Dim("h", min=1), torch.export.Dim("w", min=1)
        prog = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                 dynamic_shapes={"x": {0: b, 2: h, 3: w}}, input_names=["x"],
                                 output_names=["y"], verbose=False,
                                 custom_translation_table=onnx_translations(opset))
        return prog.model_proto.SerializeToString()
    buf = io.BytesIO()
    torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h2", 3: "w2"}})
    return buf.getvalue()


def run_ort(model_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    sess = ort_session(model_bytes)
    return sess.run(None, {sess.get_inputs()[0].name: x.detach().numpy()})[0]


def assert_twin_matches(ref: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> None:
    """Twin converted in each precision. fp64: max abs difference <= 1e-9 * max|ref|; fp32: relative L2 <= 1e-5."""
    from blocks_export.blocks import to_export
    from blocks_export.runtime.parity import compare

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    ref64, ref32 = copy.deepcopy(ref).double().eval(), copy.deepcopy(ref).float().eval()
    with torch.no_grad():
        fp64 = compare([ref64(x)], [to_export(ref64)(x)], "fp64")
        fp32 = compare([ref32(x.float())], [to_export(ref32)(x.float())], "fp32")
    assert fp64.outputs[0].max_rel <= 1e-9, fp64.lines()
    assert fp32, fp32.lines()


class DeformBlock(torch.nn.Module):
    """torchvision's DeformConv2d [N, 8, H, W] -> [N, 8, H, W] with offsets and mask predicted from the input
    (as DCNv2 does)."""

    def __init__(self) -> None:
        import torchvision

        super().__init__()
        self.offset = torch.nn.Conv2d(8, 18, 3, padding=1)
        self.mask = torch.nn.Conv2d(8, 9, 3, padding=1)
        self.dcn = torchvision.ops.DeformConv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dcn(x, self.offset(x), torch.sigmoid(self.mask(x)))
